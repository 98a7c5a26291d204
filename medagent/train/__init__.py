"""Trainers: tools, SFT, GRPO, semi-supervised, federated."""
