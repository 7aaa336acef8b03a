"""wrf4cir: weight-regularized fine-tuning of CLIP models for composed image retrieval.

The library's surface: ``fit(config, callbacks) -> History`` and the ``Config`` dataclasses.
It never imports the orchestration layer (Ray, Optuna, pandas).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("wrf4cir-study")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

from wrf4cir.config import Config, ConfigError, load_config  # noqa: E402
from wrf4cir.trainer import EpochReport, History, NonFiniteLossError, fit  # noqa: E402

__all__ = [
    "Config",
    "ConfigError",
    "EpochReport",
    "History",
    "NonFiniteLossError",
    "__version__",
    "fit",
    "load_config",
]
