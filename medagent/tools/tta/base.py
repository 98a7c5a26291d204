"""Shared pieces of the continual test-time adaptation (CTTA) tools.

- `SourceModel`: the frozen source segmenter (a `unet` checkpoint with batch norm) and its input scaling.
- `TTABatchNorm` + `convert_bn`: a copy of the source network whose BatchNorm2d layers can normalise with
  the source statistics, the image's own statistics, a mix of both, or VPTTA's warm-up mix, and that
  record the statistics-alignment loss of the last forward pass (the "BN-statistics hooks").
- `FourierPrompt`: a learnable multiplier of the low-frequency centre of the image's (fftshifted) Fourier
  amplitude; phase unchanged. All ones leaves the image unchanged.
- `MemoryBank`: VPTTA's FIFO of (low-frequency amplitude key, prompt value) pairs with top-k cosine
  neighbours weighted by softmax(cos / temperature).
- `AdaptiveTool`: the `Tool` base of `noadapt`, `tent`, `cotta`, `vptta`, `mgipt`: online, batch 1, no
  labels; `predict(case)` adapts on the image then predicts; NaN images are skipped with a warning; the
  state survives across calls and can be saved (`state_dict` / `save_state`) and resumed.

Shapes: images enter the networks as float32 (1, C, H, W) in [0, 1] (the segmenter's intensity scaling);
logits are (1, K, H, W).
"""

from __future__ import annotations

import copy
import json
import warnings
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medagent.data.case import Case
from medagent.errors import CheckpointError, ConfigError, ToolError, ToolUnavailable
from medagent.tools.base import Prediction, Tool, ToolKind

STATE_TENSORS = "state.safetensors"
STATE_META = "state.json"


# ----------------------------------------------------------------------------------------------
# the frozen source model
# ----------------------------------------------------------------------------------------------
class SourceModel:
    """A frozen source segmenter: network, config (classes, modality) and input scaling.

    Args:
        tool: a `medagent.tools.segmenters.SegmenterTool` (its network is never changed here; the
            adaptive tools work on copies).
    """

    def __init__(self, tool: Any) -> None:
        self.tool = tool
        self.config = tool.config
        self.net: nn.Module = tool.net
        self.net.eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        self.device = tool.device

    @property
    def num_classes(self) -> int:
        return int(self.config.num_classes)

    @property
    def class_names(self) -> dict[int, str]:
        return dict(self.config.class_names)

    def scale(self, case: Case) -> torch.Tensor:
        """The model input of a finite 2D case: (1, C, H, W) float32 in [0, 1]."""
        from medagent.tools.segmenters import model_input

        x = model_input(case.image, case.modality, self.config, case.id)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None].to(self.device)

    def bn_layers(self) -> list[nn.BatchNorm2d]:
        return [m for m in self.net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def require_bn(self, method: str) -> None:
        """ToolError when the source network has no BatchNorm2d layers (the method needs them)."""
        layers = self.bn_layers()
        if not layers:
            raise ToolError(
                f"tool {method!r} adapts batch-norm statistics, but the source model {self.config.model!r} "
                f"({type(self.net).__name__}) has no BatchNorm layers; use a 'unet' source (BN) or the 'noadapt' tool"
            )
        other = [type(m).__name__ for m in layers if not isinstance(m, nn.BatchNorm2d)]
        if other:
            raise ToolError(f"tool {method!r} supports BatchNorm2d only; the source model has {sorted(set(other))}")

    def adapted_copy(self) -> nn.Module:
        """A deep copy of the network with every BatchNorm2d replaced by a `TTABatchNorm` (params frozen)."""
        net = convert_bn(copy.deepcopy(self.net))
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        return net


def load_source(dataset: str | None = None, checkpoint: str | Path | None = None, device: str = "cpu") -> SourceModel:
    """The source model: a checkpoint folder, or the shipped `ctta-source-<dataset>` (default mni-tissue).

    A checkpoint folder holds a segmenter checkpoint (`model.safetensors` + `config.json`, any of the
    `unet` / `ifunet` / `allukan` models: the BN-free ones only work with `noadapt`).
    """
    from medagent.tools.segmenters import TOOL_CLASSES

    if checkpoint is None:
        from medagent.train.ctta_source import source_weights_name
        from medagent.weights import WEIGHTS_DIR, read_manifest

        name = source_weights_name(dataset or "mni-tissue")
        folder = WEIGHTS_DIR / name
        if name not in read_manifest() or not folder.is_dir():
            shipped = sorted(n for n in read_manifest() if n.startswith("ctta-source-"))
            raise ToolUnavailable(
                f"no shipped CTTA source model for dataset {dataset!r} (shipped: {shipped or 'none'}); train one with "
                "medagent.train.ctta_source.train_ctta_source or pass checkpoint=DIR"
            )
        checkpoint = folder
    path = Path(checkpoint)
    cfg_path = (path.parent if path.is_file() else path) / "config.json"
    try:
        model = json.loads(cfg_path.read_text()).get("model", "unet")
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_path}: cannot read the source checkpoint's config.json: {exc}") from exc
    if model not in TOOL_CLASSES:
        raise CheckpointError(f"{cfg_path}: config field 'model' is {model!r}; a source model is one of {sorted(TOOL_CLASSES)}")
    return SourceModel(TOOL_CLASSES[model].from_pretrained(path, device=device))


# ----------------------------------------------------------------------------------------------
# batch norm with switchable statistics
# ----------------------------------------------------------------------------------------------
class TTABatchNorm(nn.Module):
    """A BatchNorm2d whose normalisation statistics are chosen by `mode`; (N, C, H, W) -> same.

    Modes (per sample n, channel c; "instance" statistics are the mean / variance over H, W):
        "source":   the source running mean / variance (plain eval-mode batch norm).
        "instance": the sample's own statistics (= train-mode batch norm with batch size 1).
        "mix":      mean = lam * source + (1 - lam) * instance, same for the variance (MGIPT inference, lam 0.8).
        "warmup":   mean = m * batch + (1 - m) * source with the batch statistics detached (VPTTA warm-up);
                    m is set from outside (`moment`).
    When `loss_ref` is "source" or "norm", the forward pass stores `align_loss`: the L1 distance between
    the reference mean / std (source statistics, or the statistics used to normalise) and the sample's
    own mean / std (unbiased std, like the releases), averaged over channels and samples.
    The affine weight and bias are parameters (Tent and CoTTA train them); the source statistics are buffers.
    """

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        if bn.running_mean is None or bn.running_var is None:
            raise ToolError("a BatchNorm layer without running statistics (track_running_stats=False) cannot be adapted")
        c = bn.num_features
        self.num_features = c
        self.eps = float(bn.eps)
        self.weight = nn.Parameter(bn.weight.detach().clone() if bn.affine else torch.ones(c, device=bn.running_mean.device))
        self.bias = nn.Parameter(bn.bias.detach().clone() if bn.affine else torch.zeros(c, device=bn.running_mean.device))
        self.register_buffer("src_mean", bn.running_mean.detach().clone())
        self.register_buffer("src_var", bn.running_var.detach().clone())
        self.mode = "source"
        self.lam = 0.8
        self.moment = 1.0
        self.loss_ref: str | None = None
        self.align_loss: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        src_mu = self.src_mean.view(1, c, 1, 1)
        src_var = self.src_var.view(1, c, 1, 1)
        need_stats = self.mode != "source" or self.loss_ref is not None
        if need_stats:  # one pass for both (the loss needs gradients through them)
            cur_var, cur_mu = torch.var_mean(x, (2, 3), unbiased=False, keepdim=True)
        if self.mode == "source":
            mu, var = src_mu, src_var
        elif self.mode == "instance":
            mu, var = cur_mu, cur_var
        elif self.mode == "mix":
            mu = self.lam * src_mu + (1.0 - self.lam) * cur_mu
            var = self.lam * src_var + (1.0 - self.lam) * cur_var
        elif self.mode == "warmup":
            b_var, b_mu = torch.var_mean(x.detach(), (0, 2, 3), keepdim=True)
            mu = self.moment * b_mu + (1.0 - self.moment) * src_mu
            var = self.moment * b_var + (1.0 - self.moment) * src_var
        else:
            raise ConfigError(f"TTABatchNorm.mode must be source, instance, mix or warmup, got {self.mode!r}")
        if self.loss_ref is not None:
            n = x.shape[2] * x.shape[3]
            cur_std = (cur_var * (n / max(n - 1, 1)) + 1e-12).sqrt()  # unbiased std, as the releases use
            if self.loss_ref == "source":
                ref_mu, ref_var = src_mu, src_var
            else:  # the statistics used to normalise (VPTTA's warm-up reference)
                ref_mu, ref_var = mu.detach(), var.detach()
            self.align_loss = (ref_mu - cur_mu).abs().mean() + (ref_var.clamp_min(0).sqrt() - cur_std).abs().mean()
        else:
            self.align_loss = None
        out = (x - mu) / torch.sqrt(var + self.eps)
        return out * self.weight.view(1, c, 1, 1) + self.bias.view(1, c, 1, 1)


def convert_bn(net: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of `net` (in place) by a `TTABatchNorm` carrying its statistics and affine."""
    for name, child in list(net.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(net, name, TTABatchNorm(child))
        else:
            convert_bn(child)
    return net


def tta_bn_layers(net: nn.Module) -> list[TTABatchNorm]:
    return [m for m in net.modules() if isinstance(m, TTABatchNorm)]


def set_bn(net: nn.Module, mode: str | None = None, loss_ref: str | None | bool = False, **attrs: float) -> None:
    """Set the mode (and `loss_ref`, `lam`, `moment` when given) of every `TTABatchNorm` in `net`.

    `loss_ref=False` leaves it unchanged; None turns the alignment loss off.
    """
    for m in tta_bn_layers(net):
        if mode is not None:
            m.mode = mode
        if loss_ref is not False:
            m.loss_ref = loss_ref
        for k, v in attrs.items():
            setattr(m, k, v)


def bn_alignment_loss(net: nn.Module) -> torch.Tensor:
    """Mean of the `align_loss` of every `TTABatchNorm` after a forward pass with `loss_ref` set."""
    losses = [m.align_loss for m in tta_bn_layers(net) if m.align_loss is not None]
    if not losses:
        raise ToolError("no batch-norm alignment loss was recorded (set loss_ref before the forward pass)")
    return torch.stack(losses).mean()


# ----------------------------------------------------------------------------------------------
# Fourier low-frequency amplitude prompt
# ----------------------------------------------------------------------------------------------
def centre_slices(h: int, w: int, side: int) -> tuple[slice, slice]:
    """Rows / columns of the side x side block centred on the DC term of an fftshifted (h, w) spectrum."""
    side = max(1, min(side, h, w))
    y0, x0 = h // 2 - side // 2, w // 2 - side // 2
    return slice(y0, y0 + side), slice(x0, x0 + side)


def low_frequency_amplitude(x: torch.Tensor, side: int) -> torch.Tensor:
    """The side x side centre of the fftshifted amplitude of x (N, C, H, W) -> (N, C, side, side)."""
    amp = torch.fft.fftshift(torch.abs(torch.fft.fft2(x, dim=(-2, -1))), dim=(-2, -1))
    ys, xs = centre_slices(x.shape[-2], x.shape[-1], side)
    return amp[..., ys, xs]


def prompt_side(alpha: float, size: int) -> int:
    """Prompt side for an image of side `size`: int(alpha * size), at least 1 (VPTTA / MGIPT rule)."""
    return max(1, int(alpha * size))


class FourierPrompt(nn.Module):
    """Learnable multiplier of the low-frequency amplitude: (N, C, H, W) -> (prompted (N, C, H, W), key).

    The prompt (1, C, side, side), initialised to ones, multiplies the side x side centre of the
    fftshifted amplitude spectrum (centred on the DC term); the phase is kept; the inverse FFT's real
    part is the prompted image. `key` is the unprompted low-frequency amplitude (N, C, side, side).
    Entries where `trainable` is 0 are frozen: they take part in the forward pass but get no gradient
    (MGIPT's growing instance prompt freezes its inner part).
    """

    def __init__(self, channels: int, side: int) -> None:
        super().__init__()
        self.side = int(side)
        self.prompt = nn.Parameter(torch.ones(1, channels, self.side, self.side))
        self.register_buffer("trainable", torch.ones(1, channels, self.side, self.side))

    def reset(self) -> None:
        with torch.no_grad():
            self.prompt.fill_(1.0)
        self.trainable.fill_(1.0)

    def set(self, values: torch.Tensor) -> None:
        with torch.no_grad():
            self.prompt.copy_(values.reshape(self.prompt.shape))

    def grown(self, side: int) -> "FourierPrompt":
        """A larger prompt (ones) whose inner block holds this prompt's values, frozen (only the border trains)."""
        if side < self.side or (side - self.side) % 2:
            raise ConfigError(f"a prompt grows by an even amount: {self.side} -> {side}")
        new = FourierPrompt(self.prompt.shape[1], side).to(self.prompt.device)
        pad = (side - self.side) // 2
        with torch.no_grad():
            new.prompt[..., pad : pad + self.side, pad : pad + self.side] = self.prompt.detach()
            new.trainable[..., pad : pad + self.side, pad : pad + self.side] = 0.0
        return new

    def effective(self) -> torch.Tensor:
        """The prompt with gradients only through the trainable entries."""
        return self.prompt * self.trainable + self.prompt.detach() * (1.0 - self.trainable)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h, w = x.shape[-2:]
        spec = torch.fft.fft2(x, dim=(-2, -1))
        amp = torch.fft.fftshift(torch.abs(spec), dim=(-2, -1))
        phase = torch.angle(spec)
        ys, xs = centre_slices(h, w, self.side)
        side_y, side_x = ys.stop - ys.start, xs.stop - xs.start
        p = self.effective()[..., :side_y, :side_x]
        full = F.pad(p, (xs.start, w - xs.stop, ys.start, h - ys.stop), value=1.0)
        new_amp = torch.fft.ifftshift(amp * full, dim=(-2, -1))
        out = torch.fft.ifft2(torch.polar(new_amp, phase), dim=(-2, -1)).real
        return out, amp[..., ys, xs].detach()


# ----------------------------------------------------------------------------------------------
# memory bank (VPTTA)
# ----------------------------------------------------------------------------------------------
class MemoryBank:
    """FIFO of (key, value) pairs; `neighbours(key, k)` = softmax(cos / temperature)-weighted top-k values.

    Args:
        capacity: most pairs kept; the oldest is dropped first.
        temperature: softmax temperature of the cosine similarities.
    """

    def __init__(self, capacity: int = 40, temperature: float = 0.2) -> None:
        if capacity < 1:
            raise ConfigError(f"memory bank capacity must be >= 1, got {capacity}")
        self.capacity = int(capacity)
        self.temperature = float(temperature)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.keys)

    def reset(self) -> None:
        self.keys, self.values = [], []

    def push(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.keys.append(key.detach().flatten().float().cpu().clone())
        self.values.append(value.detach().float().cpu().clone())
        while len(self.keys) > self.capacity:
            self.keys.pop(0)
            self.values.pop(0)

    def similarities(self, key: torch.Tensor) -> torch.Tensor:
        """Cosine similarity of `key` to every stored key, (len,)."""
        bank = torch.stack(self.keys)
        return F.cosine_similarity(bank, key.detach().flatten().float().cpu()[None], dim=1, eps=1e-12)

    def neighbours(self, key: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weighted value, indices of the k nearest keys (most similar first), their weights)."""
        if not self.keys:
            raise ToolError("the memory bank is empty")
        sims = self.similarities(key)
        k = min(int(k), len(self.keys))
        top, idx = torch.topk(sims, k)
        weights = torch.softmax(top / self.temperature, dim=0)
        values = torch.stack([self.values[int(i)] for i in idx])
        blended = (weights.view(-1, *[1] * (values.dim() - 1)) * values).sum(0)
        return blended, idx, weights

    def state(self) -> dict[str, torch.Tensor]:
        if not self.keys:
            return {}
        return {"memory.keys": torch.stack(self.keys), "memory.values": torch.stack(self.values)}

    def load(self, tensors: dict[str, torch.Tensor]) -> None:
        self.reset()
        if "memory.keys" in tensors:
            self.keys = [k.clone() for k in tensors["memory.keys"]]
            self.values = [v.clone() for v in tensors["memory.values"]]


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def entropy(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """Mean per-pixel entropy of (N, K, H, W) logits: softmax over K, or binary entropy per channel (sigmoid)."""
    if activation == "softmax":
        logp = F.log_softmax(logits, dim=1)
        return -(logp.exp() * logp).sum(1).mean()
    if activation == "sigmoid":
        p = torch.sigmoid(logits)
        return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits)).mean()
    raise ConfigError(f"activation must be 'softmax' or 'sigmoid', got {activation!r}")


def probabilities(logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """(N, K, H, W) logits -> class probabilities; a single sigmoid channel becomes [1 - p, p]."""
    if activation == "sigmoid":
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1) if p.shape[1] == 1 else p
    return torch.softmax(logits, dim=1)


def color_jitter(x: torch.Tensor, brightness: float, contrast: float, generator: torch.Generator) -> torch.Tensor:
    """torchvision-style ColorJitter(brightness, contrast) on a [0, 1] tensor (N, C, H, W), per sample.

    Brightness multiplies by b ~ U(1 - brightness, 1 + brightness); contrast blends with the sample's mean
    grey by c ~ U(1 - contrast, 1 + contrast); clipped to [0, 1]. (Fixed order; torchvision shuffles it.)
    """
    n = x.shape[0]
    b = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(x) * brightness
    c = 1 + (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1).to(x) * contrast
    y = (x * b).clamp(0, 1)
    mean = y.mean((1, 2, 3), keepdim=True)
    return (c * y + (1 - c) * mean).clamp(0, 1)


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """Flatten an optimizer's per-parameter state into named tensors (for safetensors)."""
    out = {}
    for pid, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            out[f"{prefix}.{pid}.{key}"] = (value if torch.is_tensor(value) else torch.tensor(value)).detach().cpu().clone()
    return out


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str) -> None:
    """Inverse of `optimizer_tensors` (hyper-parameters stay those of `optimizer`)."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            pid, key = name[len(prefix) + 1 :].split(".", 1)
            state.setdefault(int(pid), {})[key] = value.clone()
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def config_from(cls: type, config: Any = None, **overrides: Any) -> Any:
    """A method config dataclass from an instance, a dict, or None, plus keyword overrides.

    Raises ConfigError naming unknown fields.
    """
    if config is None:
        data: dict[str, Any] = {}
    elif isinstance(config, cls):
        data = asdict(config)
    elif isinstance(config, dict):
        data = dict(config)
    else:
        raise ConfigError(f"config must be a {cls.__name__}, a dict or None, got {type(config).__name__}")
    data.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for f in fields(cls):  # JSON round trips turn tuples into lists
        if f.name in data and isinstance(data[f.name], list):
            data[f.name] = tuple(data[f.name])
    return cls(**data)


# ----------------------------------------------------------------------------------------------
# the adaptive tool base
# ----------------------------------------------------------------------------------------------
class AdaptiveTool(Tool):
    """Base of the CTTA tools: `predict(case)` adapts on the image, then predicts it (online, batch 1).

    Subclasses implement `_setup()` (fresh adapted state from the source), `_adapt_predict(x) -> logits`,
    `_state_tensors()` / `_load_state_tensors(tensors)` and may extend `_state_meta()`.

    Attributes:
        source: the frozen `SourceModel` (never modified).
        config: the method's config dataclass.
        images_seen: images adapted on since the last reset (NaN images excluded).
        skipped: images skipped since the last reset (non-finite values).
    """

    name: ClassVar[str] = "adaptive"
    kind: ClassVar[ToolKind] = ToolKind.ADAPTIVE
    needs_bn: ClassVar[bool] = True
    #: Adapts across calls: the env resets it at every episode and forks restore it (`medagent.envs.episode`).
    stateful: ClassVar[bool] = True

    def __init__(self, source: SourceModel, config: Any) -> None:
        if self.needs_bn:
            source.require_bn(self.name)
        self.source = source
        self.config = config
        self.device = source.device
        self.reset()

    # -- lifecycle ---------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget everything adapted so far: back to the source model's state."""
        self.images_seen = 0
        self.skipped = 0
        self._image_size: int | None = None
        seed = int(getattr(self.config, "seed", 0))
        self.generator = torch.Generator().manual_seed(seed)
        self._setup()

    def _setup(self) -> None:
        raise NotImplementedError

    def _adapt_predict(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    # -- prediction --------------------------------------------------------------------------
    @property
    def activation(self) -> str:
        return str(getattr(self.config, "activation", "softmax"))

    def predict_2d(self, case: Case, **inputs: Any) -> Prediction:
        """Adapt on `case` (no label used), then segment it. Non-finite images are skipped with a warning."""
        if not np.isfinite(case.image).all():
            bad = int(np.count_nonzero(~np.isfinite(case.image)))
            warnings.warn(f"tool {self.name!r}: case {case.id!r} has {bad} NaN/Inf values; skipped (state unchanged)",
                          RuntimeWarning, stacklevel=2)
            self.skipped += 1
            empty = np.zeros(case.shape, dtype=np.uint8)
            return Prediction(mask=empty, score=None, extras={"skipped": "non-finite image", "method": self.name})
        x = self.source.scale(case)
        self.images_seen += 1
        logits = self._adapt_predict(x).detach()
        probs = probabilities(logits.float(), self.activation)[0].cpu().numpy().astype(np.float32)
        mask = probs.argmax(0).astype(np.uint8)
        return Prediction(mask=mask, probabilities=probs, score=float(probs.max(0).mean()),
                          extras={"method": self.name, "class_names": self.source.class_names,
                                  "images_seen": self.images_seen})

    # -- state --------------------------------------------------------------------------------
    def _state_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        pass

    def _state_meta(self) -> dict[str, Any]:
        return {}

    def _load_state_meta(self, meta: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        """{"tensors": {name: Tensor}, "meta": JSON-able dict}: everything needed to resume the stream."""
        meta = {"method": self.name, "config": asdict(self.config), "images_seen": self.images_seen,
                "skipped": self.skipped, "image_size": self._image_size, "generator": self.generator.get_state().tolist(), **self._state_meta()}
        return {"tensors": {k: v.detach().cpu().clone() for k, v in self._state_tensors().items()}, "meta": meta}  # clone: a snapshot, not a view of live weights

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from `state_dict()` output (the config must match this tool's)."""
        meta = state["meta"]
        if meta.get("method") != self.name:
            raise CheckpointError(f"state was saved by tool {meta.get('method')!r}, not {self.name!r}")
        saved = json.loads(json.dumps(meta.get("config", {})))
        mine = json.loads(json.dumps(asdict(self.config)))
        if saved != mine:
            diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
            raise CheckpointError(f"state of {self.name!r} was saved with another config (fields {diff} differ)")
        self.reset()
        self._image_size = meta.get("image_size")
        self._load_state_meta(meta)
        self._load_state_tensors({k: v.to(self.device) for k, v in state["tensors"].items()})
        self.images_seen = int(meta.get("images_seen", 0))
        self.skipped = int(meta.get("skipped", 0))
        self.generator.set_state(torch.tensor(meta["generator"], dtype=torch.uint8))

    def save_state(self, directory: str | Path) -> Path:
        """Write the stream state to `directory` (state.safetensors + state.json)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.state_dict()
        save_file(state["tensors"], str(directory / STATE_TENSORS))
        (directory / STATE_META).write_text(json.dumps(state["meta"], indent=1) + "\n")
        return directory

    def load_state(self, directory: str | Path) -> None:
        """Resume from a folder written by `save_state`."""
        from medagent.tools.segmenters import load_safetensors

        directory = Path(directory)
        meta_path = directory / STATE_META
        if not meta_path.exists():
            raise CheckpointError(f"{meta_path}: missing (a stream state folder holds {STATE_TENSORS} and {STATE_META})")
        meta = json.loads(meta_path.read_text())
        tensors = load_safetensors(directory / STATE_TENSORS)
        self.load_state_dict({"tensors": tensors, "meta": meta})

    # -- helpers -------------------------------------------------------------------------------
    def image_size(self, x: torch.Tensor) -> int:
        """Reference side of prompt sizes: config.image_size, else min(H, W) of the first image (kept)."""
        if self._image_size is None:
            fixed = getattr(self.config, "image_size", None)
            self._image_size = int(fixed) if fixed else int(min(x.shape[-2:]))
        return self._image_size

    def source_parameters(self) -> dict[str, torch.Tensor]:
        """A copy of the source network's parameters and buffers (tests check they never change)."""
        return {k: v.detach().clone() for k, v in self.source.net.state_dict().items()}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(images_seen={self.images_seen}, config={self.config})"


def build_adaptive(cls: type[AdaptiveTool], config_cls: type, checkpoint: str | None, dataset: str | None,
                   device: str, config: Any, overrides: dict[str, Any]) -> AdaptiveTool:
    """Shared registry builder: source from `checkpoint` or the shipped `ctta-source-<dataset>`.

    `config` (a dataclass or dict) is validated strictly (unknown fields are a ConfigError); loose
    keyword `overrides` that are not config fields are context for other tools and are dropped, as the
    registry does for every tool (`ToolSpec.build`).
    """
    known = {f.name for f in fields(config_cls)}
    cfg = config_from(config_cls, config, **{k: v for k, v in overrides.items() if k in known})
    return cls(load_source(dataset, checkpoint, device=device), cfg)
