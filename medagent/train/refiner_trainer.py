"""Train the discrete-diffusion contour refiner (or its one-shot baseline) on builtin data.

    from medagent.train.refiner_trainer import RefinerTrainerConfig, train_refiner
    checkpoint = train_refiner(RefinerTrainerConfig(output_dir="runs/refine", stop_step=1770))
    tool = RefineTool.from_pretrained(checkpoint)

Read top to bottom: collect <= `max_images` training images (builtin train splits + procedural blobs)
-> per step, draw a batch: a class mask (GT), a coarse mask (a GT perturbation, a shipped tool's output
or, sometimes, the GT itself), the band around the coarse contour, a crop centred on the band, a
diffusion time gamma and the state x_t ~ q(x_t | GT, coarse) -> BCE + soft Dice on the band -> AdamW.
Checkpoints every `save_every` steps; rerunning with the same `output_dir` resumes.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medagent.errors import ConfigError, MedagentError
from medagent.tools.refiner.diffusion import q_sample
from medagent.tools.refiner.network import RefinerNet, RefinerNetConfig, count_parameters
from medagent.tools.refiner.perturb import PERTURBATIONS, perturb_mask
from medagent.tools.refiner.representation import contour_band
from medagent.tools.refiner.synthetic import synthetic_case
from medagent.tools.refiner.tool import RefinerConfig, RefineTool, crop_pad, prepare_image, standardise

DEFAULT_DATASETS = ("mni-tissue", "phantom", "nuclei", "mni-lesion", "ct-phantom")


@dataclass
class RefinerTrainerConfig:
    """Everything `train_refiner` needs; the defaults train the shipped refine-tiny on a CPU in ~10 min.

    Attributes:
        output_dir: run folder; holds config.json, versions.json, metrics.jsonl, checkpoint/ (resume
            state) and model/ (the final checkpoint `train_refiner` returns).
        variant: "diffusion" (the refiner) or "oneshot" (the one-shot UNet baseline, same data and loss).
        datasets: builtin dataset names whose "train" split is used; missing ones are skipped with a warning.
        max_images: cap on the number of training images, procedural ones included (<= 500).
        synthetic_images: procedural blob images in the mix (see refiner/synthetic.py).
        min_class_area: a class mask smaller than this (px) is not used as a target.
        tool_sources: shipped tools whose automatic outputs serve as coarse masks when they load.
        p_tool: probability of using a tool output (when one exists for the image) instead of a perturbation.
        p_identity: probability that the coarse mask is the GT itself (teaches "leave good masks alone").
        p_gamma_zero: probability of gamma = 0 (the state is the coarse mask: the first reverse step).
        perturbations: names from refiner.perturb.PERTURBATIONS.
        perturb_strength_min / perturb_strength: each sample draws its perturbation strength uniformly from
            [`perturb_strength_min`, `perturb_strength`] so mild and gross errors are both seen.
        band_radius: band half-width in px (copied into the checkpoint's RefinerConfig).
        reverse_steps: default reverse (sampling) steps of the trained refiner, copied into its
            `RefinerConfig.steps`; training is continuous in gamma, so any step count runs. Not optimisation
            steps (those are `max_steps`).
        crop_size: side of the square training crop (multiple of 8), centred on a band pixel.
        batch_size: crops per step.
        lr, weight_decay: AdamW learning rate (cosine decay over `max_steps`) and weight decay.
        dice_weight: weight of the soft Dice term next to BCE.
        max_steps: optimisation steps (the cosine schedule spans them).
        max_minutes: stop earlier after this much training time (None = no time cap, the default: a time cap
            depends on the machine's speed, so shipped recipes use `stop_step`).
        stop_step: stop earlier at this step (None = at `max_steps`), e.g. to match another run's step count
            while keeping the schedule of `max_steps`.
        widths, attention_blocks, heads: network shape (RefinerNetConfig).
        save_every: steps between resumable checkpoints.
        seed: seeds data selection, perturbations and initialisation.
        num_threads: torch CPU threads.
        progress: show a progress bar.
    """

    output_dir: str = "medagent-runs/train-refine"
    variant: str = "diffusion"
    datasets: tuple[str, ...] = DEFAULT_DATASETS
    max_images: int = 500
    synthetic_images: int = 60
    min_class_area: int = 30
    tool_sources: tuple[str, ...] = ("unet",)
    p_tool: float = 0.3
    p_identity: float = 0.12
    p_gamma_zero: float = 0.3
    perturbations: tuple[str, ...] = PERTURBATIONS
    perturb_strength: float = 1.0
    perturb_strength_min: float = 0.3
    band_radius: float = 8.0
    reverse_steps: int = 4
    crop_size: int = 80
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dice_weight: float = 0.5
    max_steps: int = 2400
    max_minutes: float | None = None
    stop_step: int | None = None
    widths: tuple[int, int, int, int] = (16, 24, 40, 64)
    attention_blocks: int = 2
    heads: int = 4
    save_every: int = 100
    seed: int = 0
    num_threads: int = 1
    progress: bool = True

    def validate(self) -> None:
        if self.variant not in ("diffusion", "oneshot"):
            raise ConfigError(f"variant must be 'diffusion' or 'oneshot', got {self.variant!r}")
        if not 1 <= self.max_images <= 500:
            raise ConfigError(f"max_images must be in 1..500 (the method's low-data budget), got {self.max_images}")
        if self.crop_size % 8 or self.crop_size < 16:
            raise ConfigError(f"crop_size must be a multiple of 8 and >= 16, got {self.crop_size}")
        bad = set(self.perturbations) - set(PERTURBATIONS)
        if bad:
            raise ConfigError(f"unknown perturbations {sorted(bad)}; choose from {PERTURBATIONS}")


@dataclass
class _Record:
    """One training image: grey (H, W) in [0, 1], its class masks, and tool outputs per class."""

    id: str
    grey: np.ndarray
    targets: list[np.ndarray]
    tool_masks: list[list[np.ndarray]] = field(default_factory=list)


def _collect_records(cfg: RefinerTrainerConfig, rng: np.random.Generator) -> tuple[list[_Record], dict]:
    """Load <= max_images training images: builtin train splits first (spread evenly), then blobs."""
    from medagent.data.builtin import load_builtin

    n_builtin = cfg.max_images - min(cfg.synthetic_images, cfg.max_images)
    datasets, notes = [], {}
    for name in cfg.datasets:
        try:
            datasets.append((name, load_builtin(name, seed=cfg.seed).cases("train")))
        except (MedagentError, KeyError, OSError) as exc:
            notes[name] = f"skipped: {exc}"
            warnings.warn(f"refiner training: builtin dataset {name!r} skipped ({exc})", stacklevel=2)
    records: list[_Record] = []
    for (name, cases), quota in zip(datasets, _share(n_builtin, [len(c) for _, c in datasets])):
        picks = np.linspace(0, len(cases) - 1, num=quota).round().astype(int) if quota else []
        used = 0
        tools = _load_tools(cfg.tool_sources, name, notes)
        for index in sorted(set(int(i) for i in picks)):
            case = cases[index]
            if case.ndim != 2 or case.label is None:
                continue
            classes = [c for c in case.foreground_classes() if np.count_nonzero(case.label == c) >= cfg.min_class_area]
            if not classes:
                continue
            targets = [(case.label == c).astype(np.uint8) for c in classes]
            tool_masks = []
            for tool in tools:
                try:
                    pred = tool.predict(case).mask
                    tool_masks.append([(pred == c).astype(np.uint8) for c in classes])
                except Exception as exc:  # a tool failing on one image must not stop training
                    notes[f"{tool.name}:{case.id}"] = f"tool failed: {exc}"
            records.append(_Record(case.id, prepare_image(case.image, case.modality), targets,
                                   [list(t) for t in zip(*tool_masks)] if tool_masks else []))
            used += 1
        notes[name] = f"{used} images"
    n_synth = cfg.max_images - len(records)
    n_synth = min(n_synth, cfg.synthetic_images) if datasets else n_synth
    for i in range(n_synth):
        size = int(rng.choice([64, 96, 128]))
        case = synthetic_case((size, size), seed=10_000 * (cfg.seed + 1) + i)
        records.append(_Record(case.id, prepare_image(case.image, case.modality), [case.label.astype(np.uint8)]))
    notes["synthetic-blobs"] = f"{n_synth} images"
    return records, notes


def _share(total: int, sizes: list[int]) -> list[int]:
    """Split `total` images over datasets as evenly as their sizes allow (water-filling)."""
    quotas, left = [0] * len(sizes), total
    open_ = [i for i, n in enumerate(sizes) if n > 0]
    while left > 0 and open_:
        each = max(left // len(open_), 1)
        for i in list(open_):
            take = min(each, sizes[i] - quotas[i], left)
            quotas[i] += take
            left -= take
            if quotas[i] >= sizes[i]:
                open_.remove(i)
            if left == 0:
                break
    return quotas


def _load_tools(names: tuple[str, ...], dataset: str, notes: dict) -> list:
    """Shipped automatic tools for `dataset` (their outputs become coarse masks); missing ones are noted."""
    from medagent.tools import load_tool

    tools = []
    for name in names:
        try:
            tools.append(load_tool(name, dataset=dataset))
            notes[f"tool:{name}:{dataset}"] = "used"
        except Exception as exc:  # not registered, no weights for this dataset, missing dependency
            notes[f"tool:{name}:{dataset}"] = f"unavailable: {exc}"
    return tools


def _sample(record: _Record, cfg: RefinerTrainerConfig, rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    """One training crop: image, GT, coarse and band, (S, S) each; None if the coarse mask has no band."""
    k = int(rng.integers(len(record.targets)))
    gt = record.targets[k]
    draw = rng.random()
    if record.tool_masks and draw < cfg.p_tool and record.tool_masks[k] and record.tool_masks[k][0].any():
        coarse = record.tool_masks[k][int(rng.integers(len(record.tool_masks[k])))]
    elif rng.random() < cfg.p_identity:
        coarse = gt
    else:
        strength = rng.uniform(min(cfg.perturb_strength_min, cfg.perturb_strength), cfg.perturb_strength)
        coarse = perturb_mask(gt, rng, cfg.perturbations, strength=strength)
    band = contour_band(coarse, cfg.band_radius)
    if not band.any():
        return None
    image = standardise(record.grey, band)
    ys, xs = np.nonzero(band)
    i = int(rng.integers(ys.size))
    s = cfg.crop_size
    y0 = int(ys[i]) - s // 2 + int(rng.integers(-s // 4, s // 4 + 1))
    x0 = int(xs[i]) - s // 2 + int(rng.integers(-s // 4, s // 4 + 1))
    out = {
        "image": crop_pad(image, y0, x0, s, s, mode="edge"),
        "gt": crop_pad(gt, y0, x0, s, s),
        "coarse": crop_pad(coarse, y0, x0, s, s),
        "band": crop_pad(band.astype(np.uint8), y0, x0, s, s),
    }
    if rng.random() < 0.5:  # flips and transposes: boundaries have no preferred orientation
        out = {key: v[:, ::-1] for key, v in out.items()}
    if rng.random() < 0.5:
        out = {key: v.T for key, v in out.items()}
    return out


def _batch(records: list[_Record], cfg: RefinerTrainerConfig, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    samples: list[dict] = []
    while len(samples) < cfg.batch_size:
        sample = _sample(records[int(rng.integers(len(records)))], cfg, rng)
        if sample is not None:
            samples.append(sample)
    return {key: torch.from_numpy(np.stack([np.ascontiguousarray(s[key], dtype=np.float32) for s in samples]))[:, None]
            for key in samples[0]}


def refiner_loss(net: RefinerNet, batch: dict[str, torch.Tensor], cfg: RefinerTrainerConfig,
                 generator: torch.Generator) -> torch.Tensor:
    """BCE + `dice_weight` * soft Dice of the x0 prediction, both over band pixels only."""
    image, gt, coarse, band = batch["image"], batch["gt"], batch["coarse"], batch["band"] > 0.5
    if net.config.diffusion:
        b = gt.shape[0]
        gamma = torch.rand(b, generator=generator)
        gamma = torch.where(torch.rand(b, generator=generator) < cfg.p_gamma_zero, torch.zeros(b), gamma)
        state = q_sample(gt, coarse, gamma, band, generator)
        logits = net(net.make_input(image, coarse, state, gamma))
    else:
        logits = net(net.make_input(image, coarse))
    weight = band.float()
    bce = (F.binary_cross_entropy_with_logits(logits, gt, reduction="none") * weight).sum() / weight.sum().clamp_min(1.0)
    prob = torch.sigmoid(logits) * weight
    inter = (prob * gt).sum(dim=(1, 2, 3))
    denom = prob.sum(dim=(1, 2, 3)) + (gt * weight).sum(dim=(1, 2, 3))
    dice = 1.0 - ((2 * inter + 1.0) / (denom + 1.0)).mean()
    return bce + cfg.dice_weight * dice


def _versions(seed: int) -> dict:
    """Package versions, git SHA and seed for versions.json (`medagent.provenance`)."""
    from medagent.provenance import collect_versions

    return collect_versions(seed)


def train_refiner(config: RefinerTrainerConfig | None = None) -> Path:
    """Train (or resume) and return the folder of the final checkpoint (`<output_dir>/model`)."""
    cfg = config or RefinerTrainerConfig()
    cfg.validate()
    out = Path(cfg.output_dir)
    ckpt_dir, final_dir = out / "checkpoint", out / "model"
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)

    net_cfg = RefinerNetConfig(widths=tuple(cfg.widths), attention_blocks=cfg.attention_blocks, heads=cfg.heads,
                               diffusion=cfg.variant == "diffusion")
    net = RefinerNet(net_cfg)
    optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    step, elapsed = 0, 0.0
    state_path = ckpt_dir / "trainer_state.json"
    if state_path.exists():  # resume: weights, optimiser, step count and time already spent
        state = json.loads(state_path.read_text())
        net = RefineTool.from_pretrained(ckpt_dir).net.train()
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", weights_only=True))
        step, elapsed = int(state["step"]), float(state["elapsed_s"])

    records, notes = _collect_records(cfg, np.random.default_rng(cfg.seed))
    (out / "config.json").write_text(json.dumps({"command": "train tool refine", **asdict(cfg)}, indent=2, default=list) + "\n")
    (out / "versions.json").write_text(json.dumps(_versions(cfg.seed), indent=2) + "\n")
    (out / "data.json").write_text(json.dumps({"n_images": len(records), "sources": notes}, indent=2) + "\n")
    refiner_cfg = RefinerConfig(steps=cfg.reverse_steps, band_radius=cfg.band_radius)
    extra = {"training": {"variant": cfg.variant, "n_images": len(records), "sources": notes,
                          "parameters": count_parameters(net), "seed": cfg.seed}}

    def lr_at(i: int) -> float:
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(i / max(cfg.max_steps, 1), 1.0)))

    def save(directory: Path, final: bool = False) -> None:
        tool = RefineTool(net, refiner_cfg)
        tool.save_pretrained(directory, extra={**extra, "training": {**extra["training"], "steps_trained": step,
                                                                     "train_seconds": round(elapsed, 1)}})
        net.train()
        if not final:
            torch.save(optimizer.state_dict(), directory / "optimizer.pt")
            (directory / "trainer_state.json").write_text(json.dumps({"step": step, "elapsed_s": elapsed}) + "\n")

    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_steps, initial=step, desc=f"train refine ({cfg.variant})", unit="step")
    net.train()
    log = open(out / "metrics.jsonl", "a")
    start = time.perf_counter() - elapsed
    try:
        while step < cfg.max_steps:
            if cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes:
                break
            if cfg.stop_step is not None and step >= cfg.stop_step:
                break
            # Per-step RNGs keyed on (seed, step): a resumed run draws the same batches it would have.
            step_rng = np.random.default_rng([cfg.seed, step])
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            batch = _batch(records, cfg, step_rng)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            loss = refiner_loss(net, batch, cfg, generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            optimizer.step()
            step += 1
            elapsed = time.perf_counter() - start
            if step % 10 == 0 or step == cfg.max_steps:
                log.write(json.dumps({"step": step, "loss": round(float(loss.detach()), 5), "lr": lr_at(step), "elapsed_s": round(elapsed, 1)}) + "\n")
                log.flush()
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
            if step % cfg.save_every == 0:
                save(ckpt_dir)
    finally:
        log.close()
        if bar is not None:
            bar.close()
    save(ckpt_dir)
    save(final_dir, final=True)
    return final_dir


def export_weights(checkpoint: str | Path, destination: str | Path, model_name: str = "model") -> Path:
    """Copy a trained checkpoint into a weights folder under `model_name` (e.g. "oneshot" next to "model")."""
    tool = RefineTool.from_pretrained(checkpoint)
    return tool.save_pretrained(destination, model_name=model_name, extra=tool.provenance)
