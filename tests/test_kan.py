"""KA layers: B-spline basis, SaKAN forms, Grad-Free Spline gradients, KAonv equality, ALL U-KAN, fuzzy input."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medagent.errors import ConfigError
from medagent.tools.nets.allukan import ALLUKAN
from medagent.tools.nets.fuzzy import FuzzyInput
from medagent.tools.nets.kan import (
    SAKAN_FORMS, KAonv2d, SaKANLinear, SplineActivation, StackedKANLinear, bspline_basis, make_knots,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_bspline_partition_of_unity_and_support():
    knots = make_knots(5, 3, (-1.0, 1.0))
    inside = torch.linspace(-1.0, 0.999, 50)
    basis = bspline_basis(inside, knots, 3)
    assert basis.shape == (50, 8)
    torch.testing.assert_close(basis.sum(-1), torch.ones(50))
    assert (basis >= 0).all()
    outside = bspline_basis(torch.tensor([-3.0, 3.0]), knots, 3)
    assert outside.abs().max() == 0


@pytest.mark.parametrize("form", SAKAN_FORMS)
@pytest.mark.parametrize("grad_free", [True, False])
def test_kaonv_equals_unfolded_ka_layer(form, grad_free):
    torch.manual_seed(0)
    layer = KAonv2d(3, 4, 3, form=form, grad_free=grad_free)
    x = torch.randn(2, 3, 6, 7)
    torch.testing.assert_close(layer(x), layer.forward_unfold(x), atol=1e-5, rtol=1e-5)


def test_kaonv_fast_path_is_not_trivially_unfold():
    # the SaKAN forward must not call the unfold path (otherwise the equality test above proves nothing)
    layer = KAonv2d(2, 3, 3)
    layer.forward_unfold = None  # type: ignore[assignment]
    assert layer(torch.randn(1, 2, 5, 5)).shape == (1, 3, 5, 5)


def _clone_pair(form):
    torch.manual_seed(1)
    free = SaKANLinear(6, 5, form=form, grad_free=True)
    full = copy.deepcopy(free)
    for module in full.modules():
        if hasattr(module, "grad_free"):
            module.grad_free = False
    return free, full


@pytest.mark.parametrize("form", SAKAN_FORMS)
def test_grad_free_spline_coefficient_grads_exact(form):
    free, full = _clone_pair(form)
    x = torch.rand(16, 6) * 1.6 - 0.8
    g = torch.randn(16, 5)
    outs = []
    for layer in (free, full):
        xi = x.clone().requires_grad_(True)
        y = layer(xi)
        (y * g).sum().backward()
        outs.append((y.detach(), xi.grad))
    torch.testing.assert_close(outs[0][0], outs[1][0])  # same forward
    if form == "shared":
        pairs = [(free.act.coef, full.act.coef), (free.weight, full.weight)]
    elif form == "per_output":
        pairs = [(free.coef, full.coef), (free.weight, full.weight)]
    else:  # the outer activation sees the same upstream gradient; the inner one does not (path through dPhi/dz dropped)
        pairs = [(free.outer.coef, full.outer.coef)]
    for a, b in pairs:
        assert a.grad is not None
        torch.testing.assert_close(a.grad, b.grad, atol=1e-5, rtol=1e-5)
    # the input still receives a gradient, and it differs from the full one (the dB/dx path is dropped)
    assert outs[0][1] is not None and outs[0][1].abs().sum() > 0
    assert not torch.allclose(outs[0][1], outs[1][1])


def test_grad_free_input_gradient_is_the_base_branch_only():
    torch.manual_seed(2)
    layer = SaKANLinear(4, 3, form="shared", grad_free=True)
    x = (torch.rand(8, 4) - 0.5).requires_grad_(True)
    g = torch.randn(8, 3)
    (layer(x) * g).sum().backward()
    xr = x.detach().clone().requires_grad_(True)
    base_only = F.linear(layer.act.base_scale.detach() * F.silu(xr), layer.weight.detach())
    (base_only * g).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


def test_grad_free_activation_saves_no_basis_tensor():
    act = SplineActivation(grad_free=True)
    x = torch.randn(64, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        act(x).sum().backward()
    # only x-sized (64,) tensors (x itself, silu's input/output) and the small constant table are kept
    assert all(s in ((), (64,)) or (len(s) > 1 and s[0] != 64) for s in shapes), shapes
    assert sum(1 for s in shapes if s == (64,)) <= 3
    assert act.coef.grad is not None


def test_parameter_counts_shared_vs_stacked():
    sakan = SaKANLinear(36, 16, form="shared")
    stacked = StackedKANLinear(36, 16)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(stacked) == (5 + 3 + 2) * 36 * 16
    assert n(sakan) == 36 * 16 + 16 + (5 + 3) + 1
    assert n(stacked) > 9 * n(sakan)


def test_stacked_reference_grads_reach_input_through_spline():
    layer = StackedKANLinear(3, 2)
    x = (torch.rand(4, 3) - 0.5).requires_grad_(True)
    layer(x).sum().backward()
    assert layer.spline_weight.grad is not None and layer.spline_scaler.grad is not None and x.grad is not None


@pytest.mark.parametrize("layer", ["sakan", "stacked"])
def test_allukan_shapes_and_only_ka_layers(layer):
    net = ALLUKAN(1, 3, width=2, depth=2, layer=layer)
    y = net(torch.rand(2, 1, 13, 18))
    assert y.shape == (2, 3, 13, 18)
    assert not any(isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)) for m in net.modules())
    y.sum().backward()
    assert all(p.grad is not None for p in net.parameters())


def test_bad_form_raises():
    with pytest.raises(ConfigError, match="form"):
        SaKANLinear(2, 2, form="nope")


def test_fuzzy_sugeno_formulas():
    fuzzy = FuzzyInput("sugeno", lam=1.2)
    mu = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    out = fuzzy(mu)[0, :, 0]
    torch.testing.assert_close(out[0], mu[0, 0, 0])
    torch.testing.assert_close(out[1], torch.tensor([1.0, 0.5 / 1.6, 0.0]))
    torch.testing.assert_close(out[2], torch.tensor([0.0, 1.2 * 0.25 / 1.6, 0.0]))
    assert abs(float(fuzzy.lam) - 1.2) < 1e-6


def test_fuzzy_yager_nonnegative_hesitation_and_limits():
    mu = torch.rand(2, 2, 5, 5)
    out = FuzzyInput("yager", yager_a=0.5)(mu)
    assert out.shape == (2, 6, 5, 5)
    assert (out[:, 2::3] >= 0).all()
    torch.testing.assert_close(out[:, 0::3] + out[:, 1::3] + out[:, 2::3], torch.ones_like(mu))
    with pytest.raises(ConfigError, match="Yager"):
        FuzzyInput("yager", yager_a=2.0)
    with pytest.raises(ConfigError, match="lambda"):
        FuzzyInput("sugeno", lam=-1.5)


def test_fuzzy_learnable_lambda_stays_above_minus_one():
    fuzzy = FuzzyInput(learnable_lambda=True)
    fuzzy(torch.rand(1, 1, 4, 4)).sum().backward()
    assert fuzzy.raw_lambda.grad is not None
    with torch.no_grad():
        fuzzy.raw_lambda -= 1000.0
    assert float(fuzzy.lam.detach()) > -1.0


@pytest.mark.parametrize("order", [1, 2, 3])
def test_uniform_spline_equals_cox_de_boor_matrix(order):
    from medagent.tools.nets.kan import uniform_spline

    torch.manual_seed(3)
    coef = torch.randn(5 + order, requires_grad=True)
    x = torch.linspace(-4.0, 4.0, 301)
    knots = make_knots(5, order, (-2.0, 2.0))
    ref = bspline_basis(x, knots, order) @ coef
    fast = uniform_spline(x, coef, 5, order, -2.0, 0.8)
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
