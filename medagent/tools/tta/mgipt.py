"""`mgipt`: Multi-scale Global and Instance Prompt Tuning (arXiv 2602.05937; METHODS.md section 3).

The source network stays frozen; only Fourier low-frequency amplitude prompts (`FourierPrompt`) learn,
each with the batch-norm statistics alignment loss to the SOURCE statistics (L1 of per-image mean / std,
averaged over BN layers; no warm-up mix).

Per image:
1. Multi-scale Global Prompts: three persistent prompts (sides int(alpha * image size) for alphas 0.01,
   0.014, 0.006 = 5, 7, 3 at 512 px) take one Adam step each (a fresh Adam each time, as the release
   does; the three share one batched forward pass, which with per-sample statistics is the same
   computation). Each has an EMA teacher: teacher = 0.1 * teacher + 0.9 * student.
2. Adaptive-scale Instance Prompt, reset per image: side 1 -> 3 -> 5, `instance_steps` (7) Adam steps per
   size; growing copies the trained inner block into the larger prompt and freezes it (only the border
   trains). After each size a consistency score (Dice loss between the binarised predictions on the
   prompted image and on the prompted ColorJitter(0.2, 0.2) image) is computed; when it worsens the
   previous size is kept and growth stops.
3. Inference normalisation: every BN layer normalises with mean = 0.8 * source + 0.2 * image (same for the
   variance).
4. Ensemble: the instance prediction and the three teacher-global predictions, per pixel, weighted by
   c_j * conf_j with c = (2, 0.5, 0.5, 0.5) and conf = max class probability, NORMALISED to sum to 1
   (`normalize_ensemble`). The release divides by sum(conf) only, so its weights sum to
   (2 conf_inst + 0.5 sum conf_g) / sum(conf) (between 0.5 and 2), which rescales the logits; with a
   single output channel the softmax max is always 1, so its weights are the constants 0.5 and 0.125.
   `normalize_ensemble=False` reproduces the release.

Release details kept as options: during prompt training the release normalises BN with the image's own
statistics on the first image and, from then on, with the 0.8 / 0.2 inference mix (its `inference` flag
is never switched back); `train_norm="release"` (default) does that, "instance" always uses the image's
statistics, "mix" always the mix. Prompt sides scale with the image: the reference side is
`image_size` or min(H, W) of the first image of the stream; global sides that coincide on small images
are pushed apart by 2 (`distinct_global_sides`) so the three scales stay different; instance sides
1, 3, 5 are the release's at 512 px and grow by 2 * int(size / 512) per step above that.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from medagent.tools.tta.base import AdaptiveTool, build_adaptive, color_jitter
from medagent.tools.tta.batchnorm import bn_alignment_loss, set_bn
from medagent.tools.tta.fourier import FourierPrompt, prompt_side


@dataclass
class MGIPTConfig:
    """MGIPT settings; defaults from the authors' release (OPTIC script: Adam lr 0.05, iters 3).

    Attributes:
        lr: Adam learning rate of every prompt.
        betas: Adam betas.
        global_alphas: side / image size of the three global prompts.
        global_steps: Adam steps per global prompt per image.
        distinct_global_sides: push coinciding global sides apart (small images).
        teacher_keep: teacher = teacher_keep * teacher + (1 - teacher_keep) * student (0.1 in the release).
        instance_sides: instance prompt sides at 512 px (grows through them; the release's iters=3).
        instance_steps: Adam steps per instance size (7).
        reference_size: image side at which `instance_sides` apply unscaled.
        jitter_brightness, jitter_contrast: ColorJitter of the consistency score.
        source_weight: source share of the inference normalisation statistics (0.8).
        train_norm: "release", "instance" or "mix" (see module docstring).
        ensemble_weights: (instance, each global) weights before confidence weighting.
        normalize_ensemble: make the per-pixel weights sum to 1 (ours) or not (release).
        image_size: reference side for prompt sizes; None: min(H, W) of the first image.
        activation: "softmax" or "sigmoid".
        seed: seeds the ColorJitter draws.
    """

    lr: float = 0.05
    betas: tuple[float, float] = (0.9, 0.99)
    global_alphas: tuple[float, ...] = (0.01, 0.014, 0.006)
    global_steps: int = 1
    distinct_global_sides: bool = True
    teacher_keep: float = 0.1
    instance_sides: tuple[int, ...] = (1, 3, 5)
    instance_steps: int = 7
    reference_size: int = 512
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.2
    source_weight: float = 0.8
    train_norm: str = "release"
    ensemble_weights: tuple[float, float] = (2.0, 0.5)
    normalize_ensemble: bool = True
    image_size: int | None = None
    activation: str = "softmax"
    seed: int = 0

    @classmethod
    def reduced(cls, **overrides: Any) -> "MGIPTConfig":
        """The reduced-step configuration of the bench: one step per instance size, sizes 1 and 3."""
        return replace(cls(instance_steps=1, instance_sides=(1, 3)), **overrides)


def global_sides(alphas: tuple[float, ...], size: int, distinct: bool) -> list[int]:
    """Sides of the global prompts for an image of side `size`."""
    sides, used = [], set()
    for a in alphas:
        s = prompt_side(a, size)
        while distinct and s in used:
            s += 2
        used.add(s)
        sides.append(s)
    return sides


def instance_sides(base: tuple[int, ...], size: int, reference: int) -> list[int]:
    """Instance prompt sides scaled to the image: 1 + (b - 1) * max(1, size // reference)."""
    f = max(1, int(size) // int(reference))
    return [1 + (int(b) - 1) * f for b in base]


def consistency_dice_loss(a: torch.Tensor, b: torch.Tensor, activation: str, smooth: float = 1e-5) -> float:
    """Dice loss between the binarised predictions of two logits (1, K, H, W) over the foreground channels."""
    if activation == "sigmoid":
        pa, pb = (torch.sigmoid(a) > 0.5).float(), (torch.sigmoid(b) > 0.5).float()
    else:
        k = a.shape[1]
        pa = F.one_hot(a.argmax(1), k).permute(0, 3, 1, 2)[:, 1:].float()
        pb = F.one_hot(b.argmax(1), k).permute(0, 3, 1, 2)[:, 1:].float()
    inter = (pa * pb).sum()
    return float(1 - (2 * inter + smooth) / (pa.sum() + pb.sum() + smooth))


class MGIPTTool(AdaptiveTool):
    name = "mgipt"

    def _setup(self) -> None:
        self.net = self.source.adapted_copy()
        set_bn(self.net, mode="instance", loss_ref=None, lam=self.config.source_weight)
        self.globals: list[FourierPrompt] = []
        self.teachers: list[FourierPrompt] = []
        self.last_instance_side = 0
        self.last_scores: list[float] = []

    def _ensure_globals(self, channels: int, size: int) -> None:
        if not self.globals:
            for s in global_sides(tuple(self.config.global_alphas), size, self.config.distinct_global_sides):
                self.globals.append(FourierPrompt(channels, s).to(self.device))
                self.teachers.append(FourierPrompt(channels, s).to(self.device))
            for t in self.teachers:
                t.prompt.requires_grad_(False)

    def _train_mode(self) -> str:
        mode = self.config.train_norm
        if mode == "release":
            return "instance" if self.images_seen <= 1 else "mix"
        return mode

    def _adam(self, prompt: FourierPrompt) -> torch.optim.Optimizer:
        return torch.optim.Adam([prompt.prompt], lr=self.config.lr, betas=tuple(self.config.betas))

    def _train_instance(self, prompt: FourierPrompt, x: torch.Tensor) -> None:
        opt = self._adam(prompt)
        for _ in range(self.config.instance_steps):
            px, _ = prompt(x)
            self.net(px)
            loss = bn_alignment_loss(self.net)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    def _consistency(self, prompt: FourierPrompt, x: torch.Tensor, x_aug: torch.Tensor) -> float:
        set_bn(self.net, loss_ref=None)
        with torch.no_grad():
            px, _ = prompt(torch.cat([x, x_aug]))
            logits = self.net(px)
        set_bn(self.net, loss_ref="source")
        return consistency_dice_loss(logits[:1], logits[1:], self.activation)

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        size = self.image_size(x)
        self._ensure_globals(x.shape[1], size)
        set_bn(self.net, mode=self._train_mode(), loss_ref="source", lam=cfg.source_weight)
        # 1. global prompts: one step each (fresh Adam), one batched forward (per-sample statistics)
        for _ in range(cfg.global_steps):
            opts = [self._adam(g) for g in self.globals]
            self.net(torch.cat([g(x)[0] for g in self.globals]))
            loss = bn_alignment_loss(self.net)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
        with torch.no_grad():
            for t, g in zip(self.teachers, self.globals):
                t.prompt.mul_(cfg.teacher_keep).add_(g.prompt.detach(), alpha=1 - cfg.teacher_keep)
        # 2. adaptive-scale instance prompt
        x_aug = color_jitter(x, cfg.jitter_brightness, cfg.jitter_contrast, self.generator)
        sides = instance_sides(tuple(cfg.instance_sides), size, cfg.reference_size)
        prompt = FourierPrompt(x.shape[1], sides[0]).to(self.device)
        self._train_instance(prompt, x)
        scores = [self._consistency(prompt, x, x_aug)]
        for side in sides[1:]:
            bigger = prompt.grown(side)
            self._train_instance(bigger, x)
            scores.append(self._consistency(bigger, x, x_aug))
            if scores[-1] > scores[-2]:
                break
            prompt = bigger
        self.last_instance_side, self.last_scores = prompt.side, scores
        # 3. inference normalisation + 4. confidence-weighted ensemble
        set_bn(self.net, mode="mix", loss_ref=None, lam=cfg.source_weight)
        with torch.no_grad():
            batch = torch.cat([prompt(x)[0]] + [t(x)[0] for t in self.teachers])
            logits = self.net(batch)
            conf = self._probs(logits).max(1, keepdim=True)[0]  # (4, 1, H, W)
            c = torch.tensor([cfg.ensemble_weights[0]] + [cfg.ensemble_weights[1]] * len(self.teachers)).to(conf).view(-1, 1, 1, 1)
            if cfg.normalize_ensemble:
                weights = c * conf / (c * conf).sum(0, keepdim=True)
            else:
                weights = c * conf / conf.sum(0, keepdim=True)
            self.last_weights = weights.detach()
            return (weights * logits).sum(0, keepdim=True)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        from medagent.tools.tta.base import probabilities

        return probabilities(logits, self.activation)

    def prompt_parameters(self) -> dict[str, torch.Tensor]:
        """Every persistent prompt (students and teachers), by name."""
        out = {f"global.{i}": g.prompt for i, g in enumerate(self.globals)}
        out.update({f"teacher.{i}": t.prompt for i, t in enumerate(self.teachers)})
        return out

    def _state_meta(self) -> dict[str, Any]:
        return {"global_sides": [g.side for g in self.globals],
                "channels": int(self.globals[0].prompt.shape[1]) if self.globals else None}

    def _load_state_meta(self, meta: dict[str, Any]) -> None:
        if meta.get("global_sides"):
            self._ensure_globals(int(meta["channels"]), int(self._image_size))

    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.prompt_parameters())

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        for name, p in self.prompt_parameters().items():
            with torch.no_grad():
                p.copy_(tensors[name])


def build(checkpoint: str | None = None, dataset: str | None = None, device: str = "cpu",
          config: MGIPTConfig | dict[str, Any] | None = None, **overrides: Any) -> MGIPTTool:
    """Registry builder (see `medagent.tools.tta.base.load_source` for the source model)."""
    return build_adaptive(MGIPTTool, MGIPTConfig, checkpoint, dataset, device, config, overrides)
