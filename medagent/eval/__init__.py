"""Evaluation: run folders, results files, per-case tables, reports."""
