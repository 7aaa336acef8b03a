"""CIR datasets: the contract (:mod:`.base`) and the registered loaders."""

from wrf4cir.data import cirr as _cirr  # noqa: F401  (registers cirr)
from wrf4cir.data import fashioniq as _fashioniq  # noqa: F401  (registers fashioniq)
from wrf4cir.data import synthetic as _synthetic  # noqa: F401  (registers synthetic-*)
from wrf4cir.data.base import (
    CIRDataset,
    DataError,
    DatasetView,
    PartsView,
    Query,
    build_dataset,
    list_datasets,
    register_dataset,
    subsample_queries,
)

__all__ = [
    "CIRDataset",
    "DataError",
    "DatasetView",
    "PartsView",
    "Query",
    "build_dataset",
    "list_datasets",
    "register_dataset",
    "subsample_queries",
]
