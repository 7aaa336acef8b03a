"""Models: one factory over open_clip, the project's tiny architectures, fusion heads."""

from wrf4cir.models.factory import (
    PROJECT_ARCHITECTURES,
    CIRModel,
    ModelError,
    build_model,
    check_architecture,
    create_backbone,
    list_architectures,
    module_of,
    register_architectures,
)
from wrf4cir.models.fusion import Combiner, SumFusion

__all__ = [
    "PROJECT_ARCHITECTURES",
    "CIRModel",
    "Combiner",
    "ModelError",
    "SumFusion",
    "build_model",
    "check_architecture",
    "create_backbone",
    "list_architectures",
    "module_of",
    "register_architectures",
]
