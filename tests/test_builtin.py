"""Builtin datasets and the derivation cache: shapes, classes, splits, determinism, caching, geometry."""

from __future__ import annotations

import numpy as np
import pytest

from medagent.data import cache as cache_mod
from medagent.data.builtin import BUILTIN_DATASETS, list_builtin, load_builtin, load_mni_volume
from medagent.errors import DataError

NAMES = ["mni-tissue", "mni-lesion", "nuclei", "ct-phantom", "phantom"]
ORIGINS = {"expert", "template-derived", "synthetic", "threshold-derived", "procedural"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A private cache dir for this module (derivations happen once per module)."""
    path = tmp_path_factory.mktemp("medagent-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache_mod.ENV_VAR, str(path))
        yield path


@pytest.fixture(scope="module")
def datasets(cache):
    return {name: load_builtin(name) for name in NAMES}


def test_registry_lists_every_dataset():
    assert [s.name for s in list_builtin()] == list(BUILTIN_DATASETS)
    assert set(NAMES) <= set(BUILTIN_DATASETS)
    for spec in list_builtin():
        assert spec.label_origin in ORIGINS
        assert spec.license and spec.source and spec.summary
        assert spec.class_names[0] == "background"
    assert "template-derived" in BUILTIN_DATASETS["mni-tissue"].summary


def test_unknown_name_lists_known_names():
    with pytest.raises(DataError) as err:
        load_builtin("no-such-dataset")
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_dataset_contract(datasets, name):
    ds = datasets[name]
    spec = BUILTIN_DATASETS[name]
    assert ds.info.label_origin == spec.label_origin and ds.info.modality == spec.modality
    assert set(ds.splits) == {"train", "val", "test"} and all(n > 0 for n in ds.counts().values())
    # no subject in two splits
    subjects = {s: set(ds.cases(s).subjects) for s in ds.splits}
    assert not subjects["train"] & subjects["val"]
    assert not subjects["train"] & subjects["test"]
    assert not subjects["val"] & subjects["test"]
    test = ds.cases("test")
    assert len(subjects["test"]) >= 2
    with_target = 0
    for case in test:
        assert case.ndim == 2 and case.image.dtype == np.float32 and case.label.dtype == np.uint8
        assert max(case.shape) <= 256 and np.isfinite(case.image).all()
        assert case.modality == spec.modality and case.class_names == spec.class_names
        assert set(np.unique(case.label)) <= set(spec.class_names)
        assert len(case.spacing) == 2 and all(s > 0 for s in case.spacing)
        assert case.subject in subjects["test"]
        prov = case.provenance
        assert prov["dataset"] == name and prov["label_origin"] == spec.label_origin and prov["source"]
        if case.instances is not None:
            assert np.array_equal(case.instances > 0, case.label > 0)
        with_target += bool(case.foreground_classes())
    assert with_target >= 30
    ids = ds.cases("all").ids
    assert len(ids) == len(set(ids))


def test_instances_and_classes(datasets):
    nuc = datasets["nuclei"].cases("test")
    assert sum(int(c.instances.max()) for c in nuc) >= 30
    les = datasets["mni-lesion"].cases("test")
    n_lesions = [int(c.instances.max()) for c in les]
    assert min(n_lesions) >= 1 and max(n_lesions) <= 3
    signs = {l["sign"] for c in les for l in c.provenance["lesions"]}
    assert signs == {"hyper", "hypo"}
    tissue = datasets["mni-tissue"].cases("test")
    assert set().union(*(c.foreground_classes() for c in tissue)) == {1, 2, 3}
    assert {c.provenance["slice_axis"] for c in tissue} == {"axial", "coronal", "sagittal"}


def test_ct_phantom_hounsfield_units(datasets):
    cases = list(datasets["ct-phantom"].cases("test"))
    img = np.concatenate([c.image[0].ravel() for c in cases])
    lab = np.concatenate([c.label.ravel() for c in cases])
    mean = {k: float(img[lab == k].mean()) for k in range(8) if (lab == k).any()}
    assert mean[0] < -900 and mean[5] < -700  # air, lung
    assert mean[2] < -50  # fat
    assert 0 < mean[1] < 100 and 0 < mean[3] < 100  # soft tissue, muscle
    assert mean[4] > 300 and mean[6] > 50  # bone, contrast vessels
    assert 7 in mean  # nodules present in the test patients
    assert all(c.affine is not None for c in cases)


def test_cache_second_load_does_not_rederive(datasets, cache):
    before = dict(cache_mod.DERIVE_COUNTS)
    ds = load_builtin("mni-tissue")
    assert dict(cache_mod.DERIVE_COUNTS) == before
    assert np.array_equal(ds.cases("test")[0].image, datasets["mni-tissue"].cases("test")[0].image)
    entry = cache / "datasets" / f"mni-tissue-v{BUILTIN_DATASETS['mni-tissue'].version}" / "default"
    assert (entry / "arrays.npz").exists() and (entry / "meta.json").exists()
    assert not list((cache / "datasets").glob("*/.tmp-*"))


def test_interrupted_derivation_leaves_no_entry(cache):
    def boom():
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache_mod.load_or_derive("unit-boom", 1, boom)
    assert not cache_mod.entry_dir("unit-boom", 1).exists()
    calls = []

    def derive():
        calls.append(1)
        return {"a": np.arange(3)}, {"x": 1}

    arrays, meta = cache_mod.load_or_derive("unit-ok", 1, derive)
    arrays2, meta2 = cache_mod.load_or_derive("unit-ok", 1, derive)
    assert len(calls) == 1 and meta2 == {"x": 1} and np.array_equal(arrays2["a"], np.arange(3))
    cache_mod.load_or_derive("unit-ok", 2, derive)  # a new version derives again
    assert len(calls) == 2
    assert not list(cache.rglob(".tmp-*"))


def test_seeded_datasets_are_deterministic(cache, tmp_path, monkeypatch):
    a = load_builtin("phantom", seed=0).cases("test")[3]
    b = load_builtin("phantom", seed=1).cases("test")[3]
    monkeypatch.setenv(cache_mod.ENV_VAR, str(tmp_path))  # fresh cache: derived again from scratch
    a2 = load_builtin("phantom", seed=0).cases("test")[3]
    assert np.array_equal(a.image, a2.image) and np.array_equal(a.label, a2.label)
    assert not np.array_equal(a.image, b.image)
    from medagent.data.builtin.ct_phantom import _patient

    im1, lb1, _ = _patient(0, 3)
    im2, lb2, _ = _patient(0, 3)
    im3, _, _ = _patient(1, 3)
    assert np.array_equal(im1, im2) and np.array_equal(lb1, lb2) and not np.array_equal(im1, im3)


def test_mni_volume_geometry(cache):
    import nibabel as nib

    from medagent.data.builtin.mni import mni_paths

    vol = load_mni_volume()
    assert vol.ndim == 3 and vol.spacing == (1.0, 1.0, 1.0) and vol.modality == "MR"
    assert set(np.unique(vol.label)) == {0, 1, 2, 3}
    assert np.array_equal(vol.label > 0, vol.image[0] > 0)
    nii = nib.load(mni_paths()["t1"])
    t1 = np.asarray(nii.dataobj)
    inv = np.linalg.inv(nii.affine)
    rng = np.random.default_rng(0)
    # every voxel's world position (via the case affine) lands on the same value in the source NIfTI
    for _ in range(50):
        idx = np.array([rng.integers(n) for n in vol.shape] + [1])
        ijk = np.round(inv @ (vol.affine @ idx))[:3].astype(int)
        assert vol.image[0][tuple(idx[:3])] == t1[tuple(ijk)]
    # a dataset slice keeps its place in the world
    case = load_builtin("mni-tissue").cases("test")[7]
    for _ in range(20):
        r, c = rng.integers(case.shape[0]), rng.integers(case.shape[1])
        ijk = np.round(inv @ (case.affine @ np.array([0, r, c, 1])))[:3].astype(int)
        assert case.image[0, r, c] == t1[tuple(ijk)]
