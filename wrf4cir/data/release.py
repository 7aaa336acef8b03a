"""Helpers shared by the loaders of released benchmarks (FashionIQ, CIRR).

Each raises :class:`~wrf4cir.data.base.DataError` with a message naming the file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from wrf4cir.data.base import DataError, Query, subsample_queries


def read_json(path: Path, what: str) -> Any:
    """The JSON value in ``path``; :class:`DataError` naming it if missing or not JSON."""
    if not path.is_file():
        raise DataError(f"missing {what} {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {what} {path}: {exc}") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{what} {path} is not valid JSON: {exc}") from exc


def check_root(root: str | Path | None, dataset: str) -> Path:
    if root is None:
        raise DataError(f"{dataset} needs data.root: the folder holding the release")
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise DataError(f"{dataset} root {path} does not exist or is not a directory")
    return path


def no_extra_options(dataset: str, **options: Any) -> None:
    """The trainer passes some keywords to every loader; reject values that mean nothing here."""
    for key, value in options.items():
        if value is not None:
            raise DataError(f"{dataset} takes no {key!r} option (got {value!r}); it is an "
                            f"option of other datasets")


def _verify_one(path: Path) -> None:
    try:
        with Image.open(path) as img:
            img.verify()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ...
        raise DataError(f"image {path} is unreadable: {type(exc).__name__}: {exc}") from exc


def verify_images(paths: Sequence[Path]) -> None:
    """Open every image with Pillow and ``verify()`` it; :class:`DataError` naming the first
    unreadable one in ``paths`` order (threads: a release has tens of thousands)."""
    if not paths:
        return
    workers = min(8, os.cpu_count() or 1, len(paths))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(_verify_one, paths):  # re-raises the first failure in order
            pass


def load_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except Exception as exc:
        raise DataError(f"cannot read image {path}: {type(exc).__name__}: {exc}") from exc


def kept_indices(queries: list[Query], max_triplets: int | None, seed: int) -> list[int]:
    """Indices of the queries :func:`subsample_queries` keeps (by identity, in order)."""
    kept = subsample_queries(queries, max_triplets, seed)
    position = {id(q): i for i, q in enumerate(queries)}
    return [position[id(q)] for q in kept]
