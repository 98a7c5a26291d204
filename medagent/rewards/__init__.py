"""Reward terms (outcome, process) and their composition into the episode score. Arrives with issue 7."""
