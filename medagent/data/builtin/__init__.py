"""Builtin datasets derived from files that installed packages ship (nothing is downloaded).

`load_builtin(name, seed=0)` derives a dataset on first use, caches it under
`medagent.data.cache.cache_dir()` and serves it as a `Dataset` with "train"/"val"/"test" splits; no
subject (slab, region, volume, patient) is in two splits. `list_builtin()` lists what exists.
"""

from __future__ import annotations

from medagent.data.builtin.base import BuiltinSpec, build_dataset
from medagent.data.builtin import mni, phantom
from medagent.data.builtin.mni import load_mni_volume
from medagent.data.cache import load_or_derive
from medagent.data.dataset import Dataset
from medagent.errors import DataError

BUILTIN_DATASETS: dict[str, BuiltinSpec] = {}


def _register(spec: BuiltinSpec) -> None:
    BUILTIN_DATASETS[spec.name] = spec


_register(BuiltinSpec(
    name="mni-tissue",
    summary="MNI ICBM152 2009 T1 template slices (3 orientations) with template-derived labels: "
    "CSF, grey and white matter as the argmax of the template's tissue probabilities.",
    modality="MR",
    label_origin="template-derived",
    license=mni.LICENSE,
    source=mni.SOURCE,
    class_names=dict(mni.TISSUE_CLASSES),
    version=1,
    seeded=False,
    builder=mni.build_mni_tissue,
))
_register(BuiltinSpec(
    name="phantom",
    summary="Shepp-Logan phantom (scikit-image) with exact grey-level labels on seeded rotated, scaled, "
    "blurred and noisy variants; for smoke tests.",
    modality="unknown",
    label_origin="procedural",
    license="BSD-3-Clause (scikit-image)",
    source="scikit-image: skimage.data.shepp_logan_phantom()",
    class_names=dict(phantom.PHANTOM_CLASSES),
    version=1,
    seeded=True,
    builder=phantom.build_phantom,
))


def list_builtin() -> list[BuiltinSpec]:
    """Specs of every builtin dataset, in registration order."""
    return list(BUILTIN_DATASETS.values())


def load_builtin(name: str, *, seed: int = 0) -> Dataset:
    """Load (deriving and caching on first use) the builtin dataset `name`.

    Args:
        name: one of `BUILTIN_DATASETS`.
        seed: seed of procedural/synthetic datasets; ignored (cached once) by deterministic ones.
    Raises:
        DataError: unknown name (the message lists the known names).
    """
    spec = BUILTIN_DATASETS.get(name)
    if spec is None:
        raise DataError(f"unknown builtin dataset {name!r}; known: {', '.join(BUILTIN_DATASETS)}")
    seed = int(seed)
    key = f"seed{seed}" if spec.seeded else "default"
    arrays, meta = load_or_derive(spec.name, spec.version, lambda: spec.builder(seed), key=key)
    return build_dataset(spec, arrays, meta)


__all__ = ["BUILTIN_DATASETS", "BuiltinSpec", "list_builtin", "load_builtin", "load_mni_volume"]
