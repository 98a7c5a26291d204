"""Readers and writers: any supported file -> `Case`, masks back onto the input grid, overlay PNGs.

- `load_image(path, modality=None, class_names=None)`: NIfTI, NRRD, MHA/MHD, DICOM file or series folder,
  PNG/JPEG/BMP, TIFF, NPY/NPZ.
- `load_label(path, like)`: a label map checked against `like`'s grid and classes.
- `save_mask(mask, like, path)`: NIfTI/NRRD/MHA on the input grid, PNG/TIFF for 2D, NPY.
- `save_overlay_png(case, mask, path)`: the mask over the image.
"""

from medagent.data.io.formats import SUPPORTED, detect_format, stem
from medagent.data.io.overlay import save_overlay_png
from medagent.data.io.readers import load_image, load_label
from medagent.data.io.writers import MASK_FORMATS, save_mask

__all__ = ["MASK_FORMATS", "SUPPORTED", "detect_format", "load_image", "load_label", "save_mask", "save_overlay_png", "stem"]
