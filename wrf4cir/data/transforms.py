"""Image preprocessing options beside open_clip's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image
from torch import Tensor


class TargetPad:
    """Pad an image to a square (centred, black) when its aspect ratio exceeds ``ratio``.

    CLIP4Cir's "target pad": a centre crop of a long, narrow garment photo would cut the
    garment, so such images are padded instead; near-square images pass unchanged, and
    the model's own resize and crop follow.
    """

    def __init__(self, ratio: float = 1.25) -> None:
        self.ratio = ratio

    def __call__(self, image: Image.Image) -> Image.Image:
        w, h = image.size
        if max(w, h) / min(w, h) <= self.ratio:
            return image
        side = max(w, h)
        canvas = Image.new(image.mode, (side, side))
        canvas.paste(image, ((side - w) // 2, (side - h) // 2))
        return canvas


def image_transform(base: Callable[[Any], Tensor], preprocess: str = "clip",
                    ratio: float = 1.25) -> Callable[[Any], Tensor]:
    """``base`` (open_clip's evaluation transform), preceded by target padding if asked."""
    if preprocess == "clip":
        return base
    if preprocess == "target_pad":
        pad = TargetPad(ratio)
        return _Composed(pad, base)
    raise ValueError(f"data.preprocess: unknown option {preprocess!r}")


class _Composed:
    # a class, not a lambda, so DataLoader workers can pickle it
    def __init__(self, first: Callable[[Any], Any], then: Callable[[Any], Tensor]) -> None:
        self.first, self.then = first, then

    def __call__(self, image: Any) -> Tensor:
        return self.then(self.first(image))
