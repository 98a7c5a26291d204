"""Data layer: `Case`, datasets, readers/writers, folder layouts, builtin datasets, intensity, shifts."""

from medagent.data.case import MODALITIES, Case
from medagent.data.dataset import CaseList, Dataset, DatasetInfo, Skipped
from medagent.data.builtin import list_builtin, load_builtin

__all__ = ["Case", "CaseList", "Dataset", "DatasetInfo", "MODALITIES", "Skipped", "list_builtin", "load_builtin"]
