"""Kolmogorov-Arnold (KA) layers: B-spline bases, SaKAN, Grad-Free Spline, a stacked-KAN reference, KAonv.

Written from the descriptions in METHODS.md section 6 (ALL U-KAN, arXiv 2602.03156, no public code) and
from the formulation of efficient-kan (read, not copied). The paper's exact SaKAN formula is
**unverified**; the three candidate forms are offered as options (`SAKAN_FORMS`):

- "shared" (default, chosen by measurement, see docs/segmenters.md): one learnable activation for the
  whole layer, then a linear map:  y = W phi(x) + b,  phi(x) = s * silu(x) + sum_g c_g B_g(x).
- "per_output": one activation per output unit:  y_j = sum_i W_ji phi_j(x_i) + b_j,
  phi_j(x) = s_j * silu(x) + sum_g c_jg B_g(x).
- "sprecher" (closest to Sprecher's theorem): y_j = Phi(sum_i W_ji psi(x_i + eta * j) + c * j), with one
  inner activation psi and one outer activation Phi (Phi(z) = s * z + spline(z)), learnable eta and c.

The reference `StackedKANLinear` is a "directly stacked KAN" layer with one spline per edge, in
efficient-kan's formulation: y = W_base silu(x) + sum_{i,g} (W_spline[j, i, g] * scaler[j, i]) B_g(x_i),
grid 5, order 3, grid range [-1, 1], (G + k + 2) * in * out parameters.

Grad-Free Spline (`grad_free=True`): the basis B(x) carries no gradient. dL/dc = B(x)^T dL/dy is exact,
gradients reach x only through the base (silu / linear) branch. For activations evaluated elementwise
("shared", "sprecher") a custom autograd function saves only x and recomputes the basis in backward, so no
basis tensor is kept for backward at all; "per_output" keeps the detached (..., G + k) basis because
its matrix product needs it. Elementwise activations evaluate only the order + 1 non-zero B-splines of
each input on the uniform grid (`uniform_spline`), never the (..., G + k) basis matrix.

Splines live on the knot vector extended by `order` knots on each side of grid_range (as efficient-kan);
beyond it the spline is zero and only the base branch acts.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn

from medagent.errors import ConfigError

SAKAN_FORMS = ("shared", "per_output", "sprecher")
DEFAULT_FORM = "shared"


# ----------------------------------------------------------------------------------------------
# B-spline basis
# ----------------------------------------------------------------------------------------------
def make_knots(grid_size: int, order: int, grid_range: tuple[float, float]) -> torch.Tensor:
    """Uniform knot vector of length grid_size + 2 * order + 1, extended by `order` knots on each side."""
    lo, hi = float(grid_range[0]), float(grid_range[1])
    if not hi > lo or grid_size < 1 or order < 0:
        raise ConfigError(f"bad spline grid: grid_size={grid_size}, order={order}, range={grid_range}")
    h = (hi - lo) / grid_size
    return torch.arange(-order, grid_size + order + 1, dtype=torch.float32) * h + lo


def bspline_basis(x: torch.Tensor, knots: torch.Tensor, order: int) -> torch.Tensor:
    """B-spline basis values by the Cox-de Boor recursion.

    Args:
        x: any shape (...).
        knots: (T,) increasing knots; T = grid_size + 2 * order + 1.
        order: spline order k (3 = cubic).
    Returns:
        (..., T - 1 - order) = (..., grid_size + order) basis values; all zero outside [knots[0], knots[-1]).
    """
    t = knots.to(x.dtype)
    xe = x.unsqueeze(-1)
    basis = ((xe >= t[:-1]) & (xe < t[1:])).to(x.dtype)
    for p in range(1, order + 1):
        left = (xe - t[: -(p + 1)]) / (t[p:-1] - t[: -(p + 1)])
        right = (t[p + 1 :] - xe) / (t[p + 1 :] - t[1:-p])
        basis = left * basis[..., :-1] + right * basis[..., 1:]
    return basis


def local_basis(f: torch.Tensor, order: int) -> list[torch.Tensor]:
    """The order + 1 non-zero uniform B-spline values at fractional position f in [0, 1) of an interval.

    Uniform-knot form of Cox-de Boor on only the non-zero terms:
    N_p[m] = (f + p - m) / p * N_{p-1}[m - 1] + (m + 1 - f) / p * N_{p-1}[m], N_0 = [1].
    """
    values = [torch.ones_like(f)]
    for p in range(1, order + 1):
        new = []
        for m in range(p + 1):
            term = torch.zeros_like(f)
            if m - 1 >= 0:
                term = term + (f + (p - m)) / p * values[m - 1]
            if m < p:
                term = term + ((m + 1) - f) / p * values[m]
            new.append(term)
        values = new
    return values


@functools.lru_cache(maxsize=None)
def _poly_table(grid_size: int, order: int) -> torch.Tensor:
    """Constant map from spline coefficients to per-interval polynomial coefficients.

    Returns A of shape (I + 2, order + 1, G + k) with I = G + 2k intervals of the extended knot vector:
    on interval i (row i + 1) spline(x) = sum_p (A[i + 1, p] @ coef) * f**p, f the position inside the
    interval. Rows 0 and I + 1 are zero (outside the knot vector the spline is 0).
    """
    k = order
    n_coef, n_int = grid_size + k, grid_size + 2 * k
    # local basis polynomials N_k[m](f) = sum_p poly[m, p] f^p, from exact values at k + 1 points
    pts = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64) if k else torch.zeros(1, dtype=torch.float64)
    vander = torch.stack([pts**p for p in range(k + 1)], dim=1)
    values = torch.stack(local_basis(pts, k), dim=0)  # (k + 1 basis, k + 1 points)
    poly = torch.linalg.solve(vander, values.T).T  # (basis m, power p)
    table = torch.zeros(n_int + 2, k + 1, n_coef, dtype=torch.float64)
    for i in range(n_int):
        for m in range(k + 1):
            c = i + m - k  # coefficient index of the m-th non-zero basis on interval i
            if 0 <= c < n_coef:
                table[i + 1, :, c] += poly[m]
    return table.float()


def _interval(x: torch.Tensor, n_int: int, order: int, lo: float, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row of `_poly_table` (0 / I + 1 outside the knots) and position f in [0, 1) inside the interval."""
    u = (x - lo) / h + order
    i = torch.floor(u)
    return (i + 1).clamp_(0, n_int + 1).long(), u - i


def uniform_spline(x: torch.Tensor, coef: torch.Tensor, grid_size: int, order: int, lo: float, h: float,
                   table: torch.Tensor | None = None) -> torch.Tensor:
    """sum_g coef[g] B_g(x) elementwise, equal to `bspline_basis(x, make_knots(...)) @ coef`, evaluated as a
    piecewise polynomial (one table lookup per power, Horner) without any (..., G + k) basis tensor.
    Differentiable in x and coef."""
    table = _poly_table(grid_size, order).to(coef) if table is None else table
    poly = torch.einsum("rpc,c->pr", table, coef)  # (order + 1, I + 2)
    row, f = _interval(x, table.shape[0] - 2, order, lo, h)
    out = torch.take(poly[order], row)  # take: a flat gather, much faster than advanced indexing on CPU
    for p in range(order - 1, -1, -1):
        out = out * f + torch.take(poly[p], row)
    return out


class _GradFreeSpline(torch.autograd.Function):
    """`uniform_spline` with no gradient through the basis: saves x only, recomputes the basis in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coef: torch.Tensor, table: torch.Tensor, order: int, lo: float, h: float) -> torch.Tensor:  # type: ignore[override]
        with torch.no_grad():
            out = uniform_spline(x, coef, 0, order, lo, h, table=table)
        ctx.save_for_backward(x, table)
        ctx.spec = (order, lo, h)
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, table = ctx.saved_tensors
        grad_coef = None
        if ctx.needs_input_grad[1]:
            order, lo, h = ctx.spec
            rows = table.shape[0]
            row, f = _interval(x, rows - 2, order, lo, h)
            row, f, g = row.reshape(-1), f.reshape(-1), grad_out.reshape(-1)
            grad_poly = []
            weight = g
            for p in range(order + 1):  # dL/dpoly[p, r] = sum over inputs in interval r of f**p * g
                grad_poly.append(torch.bincount(row, weights=weight, minlength=rows))
                if p < order:
                    weight = weight * f
            grad_coef = torch.einsum("pr,rpc->c", torch.stack(grad_poly).to(table), table)
        return None, grad_coef, None, None, None, None


class SplineActivation(nn.Module):
    """One learnable activation phi(x) = s * base(x) + sum_g c_g B_g(x), applied elementwise.

    Args:
        grid_size, order, grid_range: the B-spline grid (G intervals on grid_range, order k).
        base: "silu" or "identity" (identity for Sprecher's outer function).
        grad_free: compute the basis without gradient (see module docstring).
        init_scale: std of the initial spline coefficients (the activation starts near s * base(x)).
    """

    def __init__(self, grid_size: int = 5, order: int = 3, grid_range: tuple[float, float] = (-2.0, 2.0),
                 base: str = "silu", grad_free: bool = True, init_scale: float = 0.1) -> None:
        super().__init__()
        if base not in ("silu", "identity"):
            raise ConfigError(f"activation base must be 'silu' or 'identity', got {base!r}")
        make_knots(grid_size, order, grid_range)  # validates the grid
        self.grid_size, self.order = grid_size, order
        self.lo, self.h = float(grid_range[0]), (float(grid_range[1]) - float(grid_range[0])) / grid_size
        self.base = base
        self.grad_free = grad_free
        self.coef = nn.Parameter(torch.randn(grid_size + order) * init_scale)
        self.base_scale = nn.Parameter(torch.ones(()))
        self.register_buffer("table", _poly_table(grid_size, order).clone(), persistent=False)

    def spline(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_free:
            return _GradFreeSpline.apply(x, self.coef, self.table.to(x.dtype), self.order, self.lo, self.h)
        return uniform_spline(x, self.coef, self.grid_size, self.order, self.lo, self.h, table=self.table.to(x.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.silu(x) if self.base == "silu" else x
        return self.base_scale * base + self.spline(x)


def _check_form(form: str) -> None:
    if form not in SAKAN_FORMS:
        raise ConfigError(f"SaKAN form must be one of {SAKAN_FORMS}, got {form!r}")


# ----------------------------------------------------------------------------------------------
# SaKAN linear layer
# ----------------------------------------------------------------------------------------------
class SaKANLinear(nn.Module):
    """Share-activation KAN layer: (..., in_features) -> (..., out_features). See the module docstring.

    Parameters: in * out weights + out biases + a few spline coefficients (G + k per shared activation,
    out * (G + k + 1) for "per_output"), against (G + k + 2) * in * out for `StackedKANLinear`.
    """

    def __init__(self, in_features: int, out_features: int, form: str = DEFAULT_FORM, grid_size: int = 5,
                 order: int = 3, grid_range: tuple[float, float] = (-2.0, 2.0), grad_free: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        _check_form(form)
        self.in_features, self.out_features, self.form = in_features, out_features, form
        self.grad_free = grad_free
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias and form != "sprecher" else None
        spec = dict(grid_size=grid_size, order=order, grid_range=grid_range, grad_free=grad_free)
        if form == "shared":
            self.act = SplineActivation(**spec)
        elif form == "per_output":
            self.order = order
            self.register_buffer("knots", make_knots(grid_size, order, grid_range), persistent=False)
            self.coef = nn.Parameter(torch.randn(out_features, grid_size + order) * 0.1)
            self.base_scale = nn.Parameter(torch.ones(out_features))
        else:  # sprecher
            self.inner = SplineActivation(**spec)
            self.outer = SplineActivation(**spec, base="identity")
            self.eta = nn.Parameter(torch.tensor(0.5 / max(out_features, 1)))
            self.shift = nn.Parameter(torch.zeros(()))  # the "c" of c * j
            self.register_buffer("j_index", torch.arange(out_features, dtype=torch.float32), persistent=False)

    def basis(self, x: torch.Tensor) -> torch.Tensor:
        """B(x) for the per_output form, detached when grad_free."""
        if self.grad_free:
            with torch.no_grad():
                return bspline_basis(x, self.knots, self.order)
        return bspline_basis(x, self.knots, self.order)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "shared":
            return F.linear(self.act(x), self.weight, self.bias)
        if self.form == "per_output":
            base = F.linear(F.silu(x), self.weight) * self.base_scale
            spline = torch.einsum("...ig,ji,jg->...j", self.basis(x), self.weight, self.coef)
            out = base + spline
            return out + self.bias if self.bias is not None else out
        # sprecher: psi(x_i + eta * j) for every (i, j) pair
        shifted = x.unsqueeze(-1) + self.eta * self.j_index  # (..., in, out)
        z = torch.einsum("...ij,ji->...j", self.inner(shifted), self.weight) + self.shift * self.j_index
        return self.outer(z)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, form={self.form!r}, grad_free={self.grad_free}"


# ----------------------------------------------------------------------------------------------
# Directly stacked KAN reference (efficient-kan formulation)
# ----------------------------------------------------------------------------------------------
class StackedKANLinear(nn.Module):
    """Per-edge-spline KAN layer, efficient-kan's formulation and defaults: (..., in) -> (..., out).

    y = W_base silu(x) + (B(x) flattened over (in, G + k)) @ (W_spline * scaler) flattened, with
    grid_size 5, order 3, grid range [-1, 1]; the basis carries gradient (no Grad-Free Spline).
    """

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0)) -> None:
        super().__init__()
        self.in_features, self.out_features, self.order = in_features, out_features, order
        self.register_buffer("knots", make_knots(grid_size, order, grid_range), persistent=False)
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        self.spline_weight = nn.Parameter(torch.randn(out_features, in_features, grid_size + order) * (0.1 / grid_size))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        base = F.linear(F.silu(flat), self.base_weight)
        basis = bspline_basis(flat, self.knots, self.order).reshape(flat.shape[0], -1)
        weight = (self.spline_weight * self.spline_scaler.unsqueeze(-1)).reshape(self.out_features, -1)
        return (base + F.linear(basis, weight)).reshape(*lead, self.out_features)


# ----------------------------------------------------------------------------------------------
# KAonv: a KA layer over k x k x C patches
# ----------------------------------------------------------------------------------------------
class KAonv2d(nn.Module):
    """KA convolution: (N, C, H, W) -> (N, out, H, W) (stride 1, "same" zero padding).

    Definition: unfold k x k x C patches (zero padding) and apply one KA layer (`SaKANLinear` with
    in_features = C * k * k, or `StackedKANLinear` with `layer="stacked"`) to every patch; `forward_unfold`
    computes exactly that. `forward` computes the same numbers without materialising patches for the
    SaKAN forms: the activations are elementwise, so they are applied once per input pixel (after zero
    padding, so padded positions see phi(0) as the unfolded version does) and the linear part is a
    convolution; "per_output" convolves each basis map, "sprecher" uses a grouped convolution over the
    out shifted copies. tests/test_kan.py checks forward == forward_unfold.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, layer: str = "sakan",
                 form: str = DEFAULT_FORM, grad_free: bool = True, grid_size: int = 5, order: int = 3,
                 grid_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        if layer not in ("sakan", "stacked"):
            raise ConfigError(f"KAonv layer must be 'sakan' or 'stacked', got {layer!r}")
        if kernel_size % 2 != 1:
            raise ConfigError(f"KAonv kernel_size must be odd, got {kernel_size}")
        self.in_channels, self.out_channels, self.k, self.layer = in_channels, out_channels, kernel_size, layer
        fan_in = in_channels * kernel_size * kernel_size
        if layer == "stacked":
            self.ka = StackedKANLinear(fan_in, out_channels, grid_size, order, grid_range or (-1.0, 1.0))
        else:
            self.ka = SaKANLinear(fan_in, out_channels, form, grid_size, order, grid_range or (-2.0, 2.0), grad_free)

    def forward_unfold(self, x: torch.Tensor) -> torch.Tensor:
        """Reference: KA layer applied to every unfolded patch."""
        n, _, h, w = x.shape
        patches = F.unfold(x, self.k, padding=self.k // 2)  # (N, C*k*k, H*W)
        out = self.ka(patches.transpose(1, 2))  # (N, H*W, out)
        return out.transpose(1, 2).reshape(n, self.out_channels, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layer == "stacked":
            return self.forward_unfold(x)
        ka: SaKANLinear = self.ka  # type: ignore[assignment]
        pad = self.k // 2
        xp = F.pad(x, (pad, pad, pad, pad)) if pad else x
        weight = ka.weight.reshape(self.out_channels, self.in_channels, self.k, self.k)
        if ka.form == "shared":
            return F.conv2d(ka.act(xp), weight, ka.bias)
        if ka.form == "per_output":
            n = x.shape[0]
            base = F.conv2d(F.silu(xp), weight) * ka.base_scale.view(1, -1, 1, 1)
            basis = ka.basis(xp)  # (N, C, H', W', G)
            g = basis.shape[-1]
            maps = F.conv2d(basis.permute(0, 4, 1, 2, 3).reshape(n * g, self.in_channels, *xp.shape[-2:]), weight)
            maps = maps.reshape(n, g, self.out_channels, *maps.shape[-2:])
            spline = torch.einsum("ngjhw,jg->njhw", maps, ka.coef)
            out = base + spline
            return out + ka.bias.view(1, -1, 1, 1) if ka.bias is not None else out
        # sprecher: out shifted copies of the input, one group per output channel
        n = x.shape[0]
        shifted = xp.unsqueeze(1) + (ka.eta * ka.j_index).view(1, -1, 1, 1, 1)  # (N, out, C, H', W')
        inner = ka.inner(shifted).reshape(n, self.out_channels * self.in_channels, *xp.shape[-2:])
        z = F.conv2d(inner, weight, groups=self.out_channels) + (ka.shift * ka.j_index).view(1, -1, 1, 1)
        return ka.outer(z)
