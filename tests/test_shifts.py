"""Domain shifts: labels untouched, seeded determinism, monotone severity, finite outputs, streams."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.data import cache as cache_mod
from medagent.data.builtin import load_builtin
from medagent.data.case import Case
from medagent.data.shifts import (
    CENTRES,
    _cached_shift,
    apply_shift,
    build_stream,
    centres_for,
    family_of,
    shifted_dataset,
)
from medagent.errors import ConfigError


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """One test case per shift family (MR, CT, generic) plus the datasets they came from."""
    path = tmp_path_factory.mktemp("medagent-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache_mod.ENV_VAR, str(path))
        mri = load_builtin("mni-lesion")
        ct = load_builtin("ct-phantom")
        nuc = load_builtin("nuclei")
        yield {
            "MR": mri.cases("test")[4],
            "CT": ct.cases("test")[5],
            "generic": nuc.cases("test")[9],
            "datasets": {"MR": mri, "CT": ct, "generic": nuc},
            "cache": path,
        }


RANDOM_KINDS = {"noise", "hu_noise", "bias", "motion", "ghosting", "spike", "illumination", "anisotropy"}
FAMILY_CENTRES = [(fam, c) for fam in ("MR", "CT", "generic") for c in CENTRES[fam] if c != "A"]


def test_centres_per_modality():
    assert centres_for("MR") == ["A", "B", "C", "D", "E"]
    assert centres_for("CT") == ["A", "B", "C", "D", "E"]
    assert family_of("microscopy") == family_of("unknown") == "generic"


@pytest.mark.parametrize("family,centre", FAMILY_CENTRES)
def test_shift_contract(cases, family, centre):
    case: Case = cases[family]
    label, inst = case.label.copy(), None if case.instances is None else case.instances.copy()
    diffs = []
    for sev in (1, 2, 3, 4, 5):
        out = apply_shift(case, centre, sev, seed=0)
        assert out.image.shape == case.image.shape and out.image.dtype == np.float32
        assert np.isfinite(out.image).all()
        assert out.label is case.label and np.array_equal(out.label, label)  # labels never change
        if inst is not None:
            assert np.array_equal(out.instances, inst)
        assert out.spacing == case.spacing and out.subject == case.subject and out.id == case.id
        assert out.provenance["shift"]["centre"] == centre
        diffs.append(float(np.abs(out.image - case.image).mean()))
    assert all(b > a for a, b in zip(diffs, diffs[1:])), diffs  # severity is monotone
    # seeded: same seed, same image; another seed, another image (every centre draws something)
    again = apply_shift(case, centre, 4, seed=0)
    assert np.array_equal(again.image, apply_shift(case, centre, 4, seed=0).image)
    if any(op.kind in RANDOM_KINDS for op in CENTRES[family][centre].ops):  # blur/gamma/HU-affine draw nothing
        assert not np.array_equal(again.image, apply_shift(case, centre, 4, seed=1).image)
    assert np.array_equal(case.image, cases["datasets"][family].cases("test")[case_index(cases, family)].image)


def case_index(cases, family):
    return {"MR": 4, "CT": 5, "generic": 9}[family]


def test_units_kept(cases):
    ct = apply_shift(cases["CT"], "E", 5)
    assert ct.image.min() >= -1024 and ct.image.max() <= 3071
    assert ct.image[0][cases["CT"].label == 5].mean() < -500  # lung is still air-like in HU
    mr = apply_shift(cases["MR"], "B", 5)
    assert 0.3 * cases["MR"].image.max() < np.percentile(mr.image, 99.5) < 2.5 * cases["MR"].image.max()
    clean = apply_shift(cases["MR"], "A", 5)
    assert np.array_equal(clean.image, cases["MR"].image)


def test_bad_arguments(cases):
    with pytest.raises(ConfigError):
        apply_shift(cases["CT"], "Z")
    with pytest.raises(ConfigError):
        apply_shift(cases["CT"], "B", severity=6)


def test_3d_shift_on_a_small_volume(cases):
    vol = Case(
        image=np.random.default_rng(0).uniform(0, 200, (1, 12, 24, 20)).astype(np.float32),
        label=(np.arange(12 * 24 * 20).reshape(12, 24, 20) % 3).astype(np.uint8),
        spacing=(3.0, 1.0, 1.0), modality="MR", id="vol",
    )
    for centre in ("B", "D", "E"):
        out = apply_shift(vol, centre, 3)
        assert out.image.shape == vol.image.shape and np.isfinite(out.image).all()
        assert np.array_equal(out.label, vol.label)
    ct = vol.replace(modality="CT", image=vol.image - 500)
    assert np.isfinite(apply_shift(ct, "D", 5).image).all()


def test_shifted_dataset_memoises_and_disk_cache(cases):
    ds = cases["datasets"]["generic"]
    sh = shifted_dataset(ds, "C", 3, seed=2)
    assert sh.counts() == ds.counts() and sh.cases("test").subjects == ds.cases("test").subjects
    a = sh.cases("test")[0]
    assert sh.cases("test")[0] is a  # shifted once, then served from memory
    assert np.array_equal(a.label, ds.cases("test")[0].label)
    assert np.array_equal(a.image, apply_shift(ds.cases("test")[0], "C", 3, seed=2).image)
    folder = cases["cache"] / "shifts"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache_mod.ENV_VAR, str(cases["cache"]))
        first = _cached_shift(ds.cases("test")[1], "B", 3, 0)
        files = sorted(folder.rglob("*.npy"))
        second = _cached_shift(ds.cases("test")[1], "B", 3, 0)
        assert sorted(folder.rglob("*.npy")) == files and len(files) == 1
        assert second.provenance["shift"].get("cached") and np.array_equal(first.image, second.image)


def test_stream_order_and_rounds(cases):
    ds = cases["datasets"]["generic"]
    n = len(ds.cases("test"))
    stream = build_stream(ds, centres=("B", "D"), rounds=2, seed=0)
    assert len(stream) == 2 * 2 * n
    assert [s.position for s in stream] == list(range(len(stream)))
    assert [s.centre for s in stream[: 2 * n]] == ["B"] * n + ["D"] * n
    assert [s.round for s in stream] == [0] * 2 * n + [1] * 2 * n
    assert [s.index for s in stream[:n]] == list(range(n))
    for i in (0, n + 3):  # rounds repeat the identical stream
        a, b = stream[i], stream[i + 2 * n]
        assert (a.centre, a.index) == (b.centre, b.index)
        assert np.array_equal(a.case.image, b.case.image)
    assert stream[0].case.provenance["shift"]["centre"] == "B"
    with pytest.raises(ConfigError):
        build_stream(ds, rounds=0)
