"""Gymnasium environment (InteractiveSegEnv), its action parser and renderer. Arrives with issue 7."""
