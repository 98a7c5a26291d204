"""Forward and reverse discrete diffusion on binary band states (SegRefiner-style, x0-parameterised).

State x_t in {0, 1} per band pixel, t = 0..T. The forward process mixes the ground truth and the coarse
mask: every band pixel independently takes the GT value with probability `gamma_t`, else the coarse
value, with `gamma_t = 1 - t / T`. So x_0 = GT and x_T = coarse *exactly* (gamma_T = 0): sampling starts
from the coarse mask itself, with no noise to inject.

Reverse step t -> t-1: the network predicts p = P(x_0 = 1 | image, coarse, x_t, gamma_t). Each pixel
adopts the prediction with probability  q = c (gamma_{t-1} - gamma_t) / (1 - c gamma_t), where
c = 2 |p - 0.5| is the network's confidence: confident pixels move first, doubtful ones wait for a
better-informed step. This is the posterior of the forward process when the prediction is trusted
with weight c. The refined mask is the last step's prediction (p > 0.5) on the band, where its
confidence reaches `final_confidence`.

Because the network is told `gamma_t` as a continuous number, one trained network runs any number of
steps; the "full-step" baseline is the same network with 4x as many.
"""

from __future__ import annotations

from typing import Callable

import torch


def gamma_schedule(steps: int) -> torch.Tensor:
    """gamma_t for t = 0..T: the probability a pixel of x_t carries the GT value. (T + 1,) float32, 1 -> 0."""
    if steps < 1:
        raise ValueError(f"diffusion steps must be >= 1, got {steps}")
    return torch.linspace(1.0, 0.0, steps + 1)


def q_sample(gt: torch.Tensor, coarse: torch.Tensor, gamma: torch.Tensor | float, band: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw x_t from the forward process.

    Args:
        gt, coarse: (B, 1, H, W) float tensors in {0, 1}.
        gamma: probability of taking the GT value, a float or a (B,) tensor in [0, 1].
        band: optional (B, 1, H, W) bool; outside it the state is always the coarse value.
        generator: torch RNG for reproducible draws.
    Returns:
        (B, 1, H, W) float tensor in {0, 1}; equals `coarse` exactly when gamma == 0 and `gt` on the
        band when gamma == 1.
    """
    gamma_t = torch.as_tensor(gamma, dtype=gt.dtype, device=gt.device)
    if gamma_t.ndim == 1:
        gamma_t = gamma_t.view(-1, 1, 1, 1)
    u = torch.rand(gt.shape, generator=generator, device=gt.device, dtype=gt.dtype)
    take_gt = u < gamma_t
    if band is not None:
        take_gt = take_gt & band
    return torch.where(take_gt, gt, coarse)


def transition_probability(prob: torch.Tensor, gamma_now: float, gamma_next: float) -> torch.Tensor:
    """q = c (gamma_next - gamma_now) / (1 - c gamma_now), c = 2|p - 0.5|; the chance a pixel adopts the prediction."""
    confidence = (2.0 * (prob - 0.5)).abs()
    q = confidence * (gamma_next - gamma_now) / (1.0 - confidence * gamma_now).clamp_min(1e-6)
    return q.clamp(0.0, 1.0)


Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""(state (B,1,H,W), gamma (B,), coarse (B,1,H,W)) -> x0 logits (B,1,H,W); the image is bound in."""


@torch.no_grad()
def reverse_sample(denoise: Denoiser, coarse: torch.Tensor, band: torch.Tensor, steps: int,
                   generator: torch.Generator | None = None, final_confidence: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Run T reverse steps from x_T = coarse.

    Args:
        denoise: the network with the image bound in (see `Denoiser`).
        coarse: (B, 1, H, W) float in {0, 1}.
        band: (B, 1, H, W) bool; pixels outside keep the coarse value.
        steps: T, the number of network evaluations.
        generator: RNG of the per-pixel transitions (a fixed seed makes refinement deterministic).
        final_confidence: at the last step a pixel adopts the prediction only where c >= this
            (0 = always); doubtful pixels keep their current state.
    Returns:
        (refined, prob): the final mask (B, 1, H, W) float in {0, 1} and the last step's x0
        probability (B, 1, H, W).
    """
    gammas = gamma_schedule(steps).tolist()
    state = coarse.clone()
    prob = coarse.clone()
    batch = coarse.shape[0]
    for t in range(steps, 0, -1):
        gamma_now, gamma_next = gammas[t], gammas[t - 1]
        logits = denoise(state, torch.full((batch,), gamma_now, device=coarse.device), coarse)
        prob = torch.sigmoid(logits)
        pred = (prob > 0.5).to(state.dtype)
        if t > 1:
            q = transition_probability(prob, gamma_now, gamma_next)
            u = torch.rand(state.shape, generator=generator, device=state.device, dtype=state.dtype)
            state = torch.where((u < q) & band, pred, state)
        else:
            confident = (2.0 * (prob - 0.5)).abs() >= final_confidence
            state = torch.where(band & confident, pred, state)
    return state, prob
