"""Losses. Each returns a dict of named terms; ``"loss"`` is the one to backpropagate.

The names become metric names (``train/loss``, ``train/contrastive``) reported to Ray and
stored as parquet columns, so they are part of the interface.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def cir_contrastive_loss(query: Tensor, target: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
    """Cross-entropy of query-to-target cosine similarities over the in-batch targets.

    Args:
        query: ``(B, D)`` L2-normalised composed query features.
        target: ``(B, D)`` L2-normalised target image features; row ``i`` is query ``i``'s
            answer and every other row is a negative.
        logit_scale: the (already exponentiated) temperature multiplier, a scalar tensor.

    Returns ``{"loss", "contrastive"}`` (the same value: the only term so far).
    """
    logits = logit_scale * query @ target.T
    labels = torch.arange(query.shape[0], device=query.device)
    ce = F.cross_entropy(logits, labels)
    return {"loss": ce, "contrastive": ce}


def clip_loss(image: Tensor, text: Tensor, logit_scale: Tensor) -> dict[str, Tensor]:
    """The symmetric CLIP loss (image->text and text->image), for pre-training.

    Both inputs are ``(B, D)`` L2-normalised; pairs share a row index.
    """
    logits = logit_scale * image @ text.T
    labels = torch.arange(image.shape[0], device=image.device)
    i2t = F.cross_entropy(logits, labels)
    t2i = F.cross_entropy(logits.T, labels)
    loss = (i2t + t2i) / 2
    return {"loss": loss, "image_to_text": i2t, "text_to_image": t2i}
