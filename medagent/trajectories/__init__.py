"""Generating, storing and exporting trajectories. Arrives with issue 7."""
