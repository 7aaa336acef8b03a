"""One model factory over ``open_clip.create_model_and_transforms``.

The project's tiny architectures are open_clip model configs (``configs/*.json``), so a
CPU-sized model and ``ViT-L-14`` travel the same code path; ``pretrained`` is whatever
open_clip accepts (a tag such as ``openai``, or a checkpoint file), plus ``synthetic``:
the offline default, pre-trained here and loaded as a checkpoint file.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor, nn

from wrf4cir.config import ModelConfig
from wrf4cir.models.fusion import Combiner, SumFusion

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
PROJECT_ARCHITECTURES = tuple(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
SYNTHETIC_TAG = "synthetic"


class ModelError(ValueError):
    """A model that cannot be built as configured (unknown name, missing weights, ...)."""


_registered = False


def register_architectures() -> None:
    """Add the project's architectures to open_clip's registry (idempotent)."""
    global _registered
    if not _registered:
        open_clip.add_model_config(CONFIG_DIR)
        _registered = True


def list_architectures() -> list[str]:
    """Every architecture name ``model.name`` accepts (open_clip's and the project's)."""
    register_architectures()
    return open_clip.list_models()


def check_architecture(name: str) -> None:
    """Raise :class:`ModelError` if ``name`` is not an architecture open_clip can build."""
    if name.startswith(("hf-hub:", "local-dir:")):
        return
    names = list_architectures()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.6)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ModelError(f"model.name: unknown open_clip architecture {name!r}{hint}")


class CIRModel(nn.Module):
    """A CLIP backbone plus a fusion head: ``(reference image, text) -> query``.

    Every feature it returns is L2-normalised. ``logit_scale`` is the (exponentiated)
    multiplier of cosine similarities used by the loss.
    """

    def __init__(self, clip: nn.Module, fusion: nn.Module, *, freeze_image: bool = False,
                 freeze_text: bool = False, logit_scale: str = "learnable",
                 logit_scale_init: float | None = None) -> None:
        super().__init__()
        self.clip = clip
        self.fusion = fusion
        self.freeze_image = freeze_image
        self.freeze_text = freeze_text
        if logit_scale_init is not None:
            with torch.no_grad():
                clip.logit_scale.fill_(math.log(logit_scale_init))
        clip.logit_scale.requires_grad_(logit_scale == "learnable")
        for name, p in clip.named_parameters():
            part = module_of(f"clip.{name}")
            if (part == "image" and freeze_image) or (part == "text" and freeze_text):
                p.requires_grad_(False)

    def logit_scale(self) -> Tensor:
        # CLIP clamps the learned temperature at 100 for stability
        return self.clip.logit_scale.exp().clamp(max=100.0)

    def encode_image(self, images: Tensor) -> Tensor:
        # a frozen tower needs no graph: saves the memory and time of its backward
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_image):
            return self.clip.encode_image(images, normalize=True)

    def encode_text(self, tokens: Tensor) -> Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_text):
            return self.clip.encode_text(tokens, normalize=True)

    def compose(self, image_features: Tensor, text_features: Tensor) -> Tensor:
        """The query from (normalised) reference-image and text features."""
        return self.fusion(image_features, text_features)

    def forward(self, reference: Tensor, tokens: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Query and target features for a batch of triplets."""
        query = self.compose(self.encode_image(reference), self.encode_text(tokens))
        return query, self.encode_image(target)


def module_of(param_name: str) -> str:
    """Which part a ``CIRModel`` parameter belongs to: image, text, fusion or scale."""
    if param_name.startswith("clip.visual."):
        return "image"
    if param_name.startswith("fusion."):
        return "fusion"
    if param_name in ("clip.logit_scale", "clip.logit_bias"):
        return "scale"
    return "text"


def _probe_dim(clip: nn.Module) -> int:
    with torch.no_grad():
        size = clip.visual.image_size
        size = size if isinstance(size, tuple | list) else (size, size)
        return int(clip.encode_image(torch.zeros(1, 3, *size)).shape[-1])


def resolve_pretrained(cfg: ModelConfig) -> str | None:
    """What open_clip gets as ``pretrained``: a tag, a file path, or None.

    ``synthetic`` runs (or reuses from the cache) the offline pre-training and returns the
    checkpoint's path. A value that looks like a path must exist.
    """
    value = cfg.pretrained
    if value is None:
        return None
    if value == SYNTHETIC_TAG:
        from wrf4cir.pretrain import ensure_pretrained  # late: pretrain builds models too

        return str(ensure_pretrained(cfg.name))
    looks_like_path = os.sep in value or Path(value).suffix in (".pt", ".pth", ".bin",
                                                                ".safetensors")
    if looks_like_path:
        path = Path(value).expanduser()
        if not path.is_file():
            raise ModelError(f"model.pretrained: checkpoint file {value} does not exist")
        return str(path.resolve())
    return value


def create_backbone(name: str, pretrained: str | None = None, device: str | torch.device = "cpu",
                    cache_dir: str | None = None) -> tuple[nn.Module, Callable[..., Tensor], Any]:
    """``(open_clip model, eval image transform, tokenizer)`` through open_clip's factory."""
    register_architectures()
    check_architecture(name)
    try:
        clip, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, device=device, cache_dir=cache_dir)
    except Exception as exc:  # noqa: BLE001 - a bad checkpoint fails in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"model.pretrained: cannot load {pretrained!r} for {name}: "
                         f"{first[:300]}") from None
    tokenizer = open_clip.get_tokenizer(name)
    return clip, preprocess, tokenizer


def build_model(cfg: ModelConfig, device: str | torch.device = "cpu"
                ) -> tuple[CIRModel, Callable[..., Tensor], Any]:
    """Build the CIR model a config describes: ``(model, image transform, tokenizer)``.

    The image transform is open_clip's deterministic evaluation transform; it is used for
    training too (no augmentation: edits such as "move to the top left" must not be
    undone by a random crop).
    """
    check_architecture(cfg.name)
    clip, preprocess, tokenizer = create_backbone(cfg.name, resolve_pretrained(cfg), device)
    if cfg.fusion == "sum":
        fusion: nn.Module = SumFusion()
    else:
        dim = _probe_dim(clip)
        fusion = Combiner(dim, cfg.combiner_proj_dim or 4 * dim,
                          cfg.combiner_hidden_dim or 8 * dim, cfg.combiner_dropout)
    model = CIRModel(clip, fusion, freeze_image=cfg.freeze_image, freeze_text=cfg.freeze_text,
                     logit_scale=cfg.logit_scale, logit_scale_init=cfg.logit_scale_init)
    return model.to(device), preprocess, tokenizer
