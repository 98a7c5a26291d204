"""CPS: Conditional Point Sparsification few-shot segmentation (owned by the CPS work, task H10).

Work in progress: matched dense points from reference masks, density chosen on the references,
SAM prompted with the sparsified points; dense-points and single-point baselines.
"""
