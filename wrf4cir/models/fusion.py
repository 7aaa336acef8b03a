"""Query fusion heads: how a reference image feature and a text feature become one query."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SumFusion(nn.Module):
    """``normalize(img + txt)``: CLIP4Cir's stage-1 query (no parameters)."""

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        return F.normalize(image + text, dim=-1)


class Combiner(nn.Module):
    """CLIP4Cir's Combiner (stage 2), as METHOD.md describes it.

    Both features are projected to width ``p`` (ReLU, dropout), concatenated, passed
    through a hidden layer of width ``h``, and mapped back to the feature width ``d``; a
    learned sigmoid weight ``lambda`` (from the same concatenation) mixes in the raw
    features: ``normalize(Linear(h, d)(hidden) + lambda * txt + (1 - lambda) * img)``.
    """

    def __init__(self, dim: int, proj_dim: int, hidden_dim: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.text_proj = nn.Linear(dim, proj_dim)
        self.image_proj = nn.Linear(dim, proj_dim)
        self.combine = nn.Linear(2 * proj_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, dim)
        self.mix = nn.Sequential(
            nn.Linear(2 * proj_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, 1),
            nn.Sigmoid(),
        )
        self.dropout_text = nn.Dropout(dropout)
        self.dropout_image = nn.Dropout(dropout)
        self.dropout_hidden = nn.Dropout(dropout)

    def forward(self, image: Tensor, text: Tensor) -> Tensor:
        t = self.dropout_text(F.relu(self.text_proj(text)))
        i = self.dropout_image(F.relu(self.image_proj(image)))
        joint = torch.cat([t, i], dim=-1)
        hidden = self.dropout_hidden(F.relu(self.combine(joint)))
        lam = self.mix(joint)
        return F.normalize(self.output(hidden) + lam * text + (1 - lam) * image, dim=-1)
