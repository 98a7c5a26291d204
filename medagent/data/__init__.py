"""Data layer: `Case`, datasets, readers/writers, folder layouts, builtin datasets, intensity, shifts."""

from medagent.data.case import MODALITIES, Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo, Skipped
from medagent.data.io import load_image, load_label, save_mask, save_overlay_png
from medagent.data.layouts import load_folder, validate_dataset
from medagent.data.export import export_nnunet
from medagent.data.builtin import list_builtin, load_builtin

__all__ = ["Case", "CaseList", "Dataset", "DatasetInfo", "MODALITIES", "Skipped", "load_image", "load_label", "save_mask", "save_overlay_png", "load_folder", "validate_dataset", "export_nnunet", "list_builtin", "load_builtin"]
