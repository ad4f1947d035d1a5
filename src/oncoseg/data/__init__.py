"""Evaluation and training datasets: registry, readers for their download layouts, fixed splits.

``open_dataset("busi").cases(split="test")`` → `Case` objects whose ``load()`` gives image and masks. The
data root is the ``root`` argument, else ``$ONCOSEG_DATA``, else ``shared/data`` beside the repository.
"""

from oncoseg.data.adapters import (
    ENV_VAR,
    Case,
    Dataset,
    LabelSpec,
    data_root,
    datasets_table,
    format_datasets_table,
    get_split,
    open_dataset,
)
from oncoseg.data.registry import REGISTRY, DatasetInfo, get_info, paper_benchmarks
from oncoseg.data.splits import SPLITS, make_split

__all__ = [
    "ENV_VAR",
    "REGISTRY",
    "SPLITS",
    "Case",
    "Dataset",
    "DatasetInfo",
    "LabelSpec",
    "data_root",
    "datasets_table",
    "format_datasets_table",
    "get_info",
    "get_split",
    "make_split",
    "open_dataset",
    "paper_benchmarks",
]
