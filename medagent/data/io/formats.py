"""Which reader handles a path: by extension first, then by the file's first bytes."""

from __future__ import annotations

from pathlib import Path

from medagent.errors import DataError

#: reader name -> extensions it claims (lower case, longest first where they overlap).
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii"),
    "itk": (".nrrd", ".nhdr", ".mha", ".mhd"),
    "dicom": (".dcm", ".dicom", ".ima"),
    "pil": (".png", ".jpg", ".jpeg", ".bmp"),
    "tiff": (".tif", ".tiff"),
    "numpy": (".npy", ".npz"),
}

SUPPORTED = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), DICOM (file or series folder), PNG/JPEG/BMP, TIFF, NumPy (.npy, .npz)"

_MAGIC = (
    (b"\x89PNG", "pil"),
    (b"\xff\xd8\xff", "pil"),
    (b"II*\x00", "tiff"),
    (b"MM\x00*", "tiff"),
    (b"II+\x00", "tiff"),
    (b"\x93NUMPY", "numpy"),
    (b"PK\x03\x04", "numpy"),
    (b"NRRD", "itk"),
)


def stem(path: str | Path) -> str:
    """File name without its image extension(s): 'a.nii.gz' -> 'a', 'b.png' -> 'b', folder -> its name."""
    name = Path(path).name
    if Path(path).is_dir():  # a DICOM series folder named '1.2.840.1' keeps its dots
        return name
    low = name.lower()
    for exts in EXTENSIONS.values():
        for ext in exts:
            if low.endswith(ext):
                return name[: -len(ext)]
    return Path(name).stem if "." in name else name


def is_image_file(path: Path) -> bool:
    """True for files whose extension a reader claims (hidden files excluded)."""
    if not path.is_file() or path.name.startswith("."):
        return False
    low = path.name.lower()
    return any(low.endswith(ext) for exts in EXTENSIONS.values() for ext in exts)


def detect_format(path: str | Path) -> str:
    """Reader name for `path` ("nifti", "itk", "dicom", "dicom-series", "pil", "tiff", "numpy").

    Raises:
        DataError: the path does not exist or no reader recognises it.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: file not found")
    if p.is_dir():
        return "dicom-series"
    low = p.name.lower()
    for reader, exts in EXTENSIONS.items():
        if any(low.endswith(ext) for ext in exts):
            return reader
    try:
        with open(p, "rb") as fh:
            head = fh.read(132)
    except OSError as exc:
        raise DataError(f"{p}: cannot open file: {exc}") from exc
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    for magic, reader in _MAGIC:
        if head.startswith(magic):
            return reader
    if len(head) >= 4 and int.from_bytes(head[:4], "little") in (348, 540):
        return "nifti"
    if low.endswith(".gz"):
        return "nifti"
    raise DataError(f"{p}: unsupported file format; medagent reads {SUPPORTED}")
