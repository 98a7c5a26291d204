"""The discrete-diffusion contour refiner: representation, diffusion, network, tool, trainer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from skimage.draw import disk

from medagent.data import Case
from medagent.errors import CheckpointError, ConfigError, DataError, MedagentError
from medagent.metrics import dice
from medagent.tools import ToolKind, get_spec, load_tool
from medagent.tools.refiner.diffusion import gamma_schedule, q_sample, reverse_sample, transition_probability
from medagent.tools.refiner.network import RefinerNet, RefinerNetConfig
from medagent.tools.refiner.perturb import PERTURBATIONS, perturb_mask
from medagent.tools.refiner.representation import clean_mask, contour_band, contour_map, mask_polygons
from medagent.tools.refiner.synthetic import synthetic_case
from medagent.tools.refiner.tool import RefineTool, check_mask

TINY_NET = RefinerNetConfig(widths=(4, 8, 8, 8), attention_blocks=1, heads=2)


def _disk_mask(shape, center, radius) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    rr, cc = disk(center, radius, shape=shape)
    mask[rr, cc] = 1
    return mask


def _disk_case(radius: float, size: int = 64, seed: int = 0) -> Case:
    """A bright disk of `radius` px on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    mask = _disk_mask((size, size), (size / 2, size / 2), radius)
    image = (0.2 + 0.6 * mask + rng.normal(0, 0.03, mask.shape)).astype(np.float32)
    return Case(image=image[None], label=mask, modality="MR", id=f"disk{radius}")


@pytest.fixture(scope="module")
def refiner() -> RefineTool:
    torch.set_num_threads(1)
    return load_tool("refine")


# -- forward / reverse process ------------------------------------------------------------------------
def test_forward_process_last_step_is_exactly_the_coarse_mask():
    rng = np.random.default_rng(0)
    gt = torch.from_numpy(_disk_mask((48, 48), (24, 24), 12)).float()[None, None]
    coarse = torch.from_numpy(perturb_mask(gt[0, 0].numpy().astype(np.uint8), rng)).float()[None, None]
    assert not torch.equal(gt, coarse)
    gammas = gamma_schedule(4)
    assert gammas[0] == 1.0 and gammas[-1] == 0.0 and torch.all(gammas[1:] < gammas[:-1])
    band = torch.from_numpy(contour_band(coarse[0, 0].numpy(), 8.0))[None, None]
    gen = torch.Generator().manual_seed(0)
    x_last = q_sample(gt, coarse, gammas[-1], band, gen)
    assert torch.equal(x_last, coarse)                              # x_T = coarse, exactly
    x_first = q_sample(gt, coarse, gammas[0], band, gen)
    assert torch.equal(x_first[band], gt[band])                      # x_0 = GT on the band
    assert torch.equal(x_first[~band], coarse[~band])
    # In between, the share of differing pixels that already took the GT value tracks gamma.
    differ = band & (gt != coarse)
    x_mid = q_sample(gt.expand(64, -1, -1, -1), coarse.expand(64, -1, -1, -1), 0.25, band.expand(64, -1, -1, -1), gen)
    share = (x_mid == gt)[differ.expand(64, -1, -1, -1)].float().mean().item()
    assert 0.2 < share < 0.3


def test_reverse_process_with_an_oracle_reaches_the_ground_truth():
    gt = torch.from_numpy(_disk_mask((40, 40), (20, 20), 10)).float()[None, None]
    coarse = torch.from_numpy(_disk_mask((40, 40), (20, 22), 11)).float()[None, None]
    band = torch.from_numpy(contour_band(coarse[0, 0].numpy(), 6.0))[None, None]
    oracle = lambda state, gamma, c: 20.0 * (2 * gt - 1)  # noqa: E731
    refined, prob = reverse_sample(oracle, coarse, band, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(refined[band], gt[band]) and torch.equal(refined[~band], coarse[~band])
    unsure = transition_probability(torch.full((3,), 0.5), 0.5, 0.75)
    assert torch.all(unsure == 0)                                    # no confidence, no move


def test_network_shapes_and_one_shot_variant():
    x = torch.zeros(2, 4, 32, 48)
    net = RefinerNet(TINY_NET)
    assert net(x).shape == (2, 1, 32, 48)
    oneshot = RefinerNet(RefinerNetConfig(widths=(4, 8, 8, 8), attention_blocks=1, heads=2, diffusion=False))
    assert oneshot(torch.zeros(1, 2, 16, 16)).shape == (1, 1, 16, 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 4, 20, 20))


# -- representation and perturbations --------------------------------------------------------------------
def test_band_contour_and_polygons_of_a_ring():
    ring = _disk_mask((50, 50), (25, 25), 15) - _disk_mask((50, 50), (25, 25), 7)
    band = contour_band(ring, 2.0)
    assert band[25, 25 + 15] and band[25, 25 + 7] and not band[25, 25]
    cmap = contour_map(ring)
    assert set(np.unique(cmap)) == {0, 1} and not cmap[ring == 0].any()
    polys = mask_polygons(ring)
    assert len(polys) == 2                                           # outer boundary + the hole
    assert np.allclose(polys[0][0], polys[0][-1])
    assert clean_mask(ring, max_hole_area=16).sum() == ring.sum()    # a real hole is kept
    speckled = ring.copy()
    speckled[25, 20] = 0
    speckled[2, 2] = 1
    cleaned = clean_mask(speckled, min_area=4, max_hole_area=16)
    assert cleaned[2, 2] == 0                                        # a speck is dropped


@pytest.mark.parametrize("kind", PERTURBATIONS)
def test_each_perturbation_makes_a_different_but_related_mask(kind):
    gt = synthetic_case((64, 64), seed=3, n_blobs=1).label
    coarse = perturb_mask(gt, np.random.default_rng(1), kinds=(kind,), max_ops=1)
    assert coarse.dtype == np.uint8 and coarse.any()
    assert dice(coarse, gt) > 0.5


# -- the tool -------------------------------------------------------------------------------------------
def test_registered_as_a_refiner():
    spec = get_spec("refine")
    assert spec.kind == ToolKind.REFINER and spec.weights == "refine-tiny"


def test_output_depends_on_the_image(refiner):
    coarse = _disk_mask((64, 64), (32, 32), 16)
    small, large = _disk_case(14), _disk_case(18)                   # the coarse disk is 2 px off either way
    out_small = refiner.predict(small, mask=coarse).mask
    out_large = refiner.predict(large, mask=coarse).mask
    assert np.count_nonzero(out_small != out_large) > 20
    # ... and each moves toward its own image's boundary.
    assert dice(out_small, small.label) > dice(coarse, small.label)
    assert dice(out_large, large.label) > dice(coarse, large.label)


def test_perfect_coarse_mask_stays_nearly_unchanged(refiner):
    case = synthetic_case((96, 96), seed=7)
    pred = refiner.predict(case, mask=case.label)
    assert dice(pred.mask, case.label) > 0.97
    assert pred.extras["changed_pixels"] < 0.05 * case.label.sum()


def test_output_contours_are_closed_and_dense(refiner):
    case = synthetic_case((96, 96), seed=11, n_blobs=2)
    coarse = perturb_mask(case.label, np.random.default_rng(0))
    pred = refiner.predict(case, mask=coarse)
    extras = pred.extras
    assert extras["steps"] == refiner.config.steps
    assert extras["contour_map"].shape == case.shape and extras["contour_map"].dtype == np.uint8
    assert np.array_equal(extras["contour_map"], contour_map(pred.mask))
    assert len(extras["polygons"]) >= 1
    for poly in extras["polygons"]:
        assert poly.ndim == 2 and poly.shape[1] == 2 and len(poly) >= 4
        assert np.allclose(poly[0], poly[-1])                             # closed
        assert np.max(np.linalg.norm(np.diff(poly, axis=0), axis=1)) <= 1.0 + 1e-6   # dense
    # Every contour pixel has at least two contour neighbours: no open ends.
    from scipy import ndimage

    cmap = extras["contour_map"].astype(int)
    neighbours = ndimage.convolve(cmap, np.ones((3, 3), int), mode="constant") - cmap
    assert np.all(neighbours[cmap == 1] >= 2)


def test_bad_inputs_give_clear_errors(refiner):
    case = _disk_case(12)
    good = case.label
    with pytest.raises(DataError, match="empty"):
        refiner.predict(case, mask=np.zeros_like(good))
    with pytest.raises(DataError, match="shape"):
        refiner.predict(case, mask=good[:-1])
    with pytest.raises(DataError, match="binary"):
        refiner.predict(case, mask=good * 2 + (good == 0) * 1)
    with pytest.raises(DataError, match="coarse mask"):
        refiner.predict(case)
    volume = Case(image=np.zeros((1, 3, 16, 16), np.float32), spacing=(1, 1, 1))
    with pytest.raises(MedagentError):
        refiner.predict(volume, mask=np.ones((3, 16, 16), np.uint8))
    assert check_mask(good.astype(bool), good.shape).dtype == np.uint8


def test_save_and_load_round_trip(tmp_path):
    tool = RefineTool(RefinerNet(TINY_NET))
    tool.save_pretrained(tmp_path / "ck")
    loaded = load_tool("refine", checkpoint=str(tmp_path / "ck"), steps=2)
    assert loaded.config.steps == 2
    case = _disk_case(12)
    coarse = _disk_mask(case.shape, (32, 32), 14)
    assert np.array_equal(tool.predict_2d(case, mask=coarse, steps=2).mask, loaded.predict(case, mask=coarse).mask)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"tool": "unet"}))
    (tmp_path / "bad" / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match="not a refine config"):
        load_tool("refine", checkpoint=str(tmp_path / "bad"))


# -- the trainer ----------------------------------------------------------------------------------------
def test_trainer_runs_resumes_and_checks_its_config(tmp_path):
    from medagent.train.refiner_trainer import RefinerTrainerConfig, train_refiner

    cfg = RefinerTrainerConfig(output_dir=str(tmp_path / "run"), datasets=(), max_images=6, synthetic_images=6,
                               crop_size=32, batch_size=2, max_steps=3, widths=(4, 8, 8, 8), attention_blocks=1,
                               heads=2, save_every=2, progress=False, max_minutes=None)
    final = train_refiner(cfg)
    tool = RefineTool.from_pretrained(final)
    assert tool.provenance["training"]["steps_trained"] == 3
    cfg.max_steps = 5
    final = train_refiner(cfg)                                       # resumes at step 3
    assert RefineTool.from_pretrained(final).provenance["training"]["steps_trained"] == 5
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 5
    with pytest.raises(ConfigError, match="max_images"):
        train_refiner(RefinerTrainerConfig(output_dir=str(tmp_path / "x"), max_images=501))
