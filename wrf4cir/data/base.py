"""The dataset contract every CIR loader implements, and the registry that builds them.

A CIR dataset split is three things:

- ``queries``: a sequence of :class:`Query` records (reference image + modification text
  -> target image);
- ``gallery``: the candidate image names, in a fixed order (column ``j`` of a score matrix
  is ``gallery[j]``);
- ``image(name)``: the PIL image behind a name.

``protocol`` names the evaluation protocol (:mod:`wrf4cir.evaluation` owns the rules), so
a view of a dataset (the train probe) is evaluated exactly as the dataset itself.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from PIL import Image


class DataError(ValueError):
    """Bad dataset input (missing root, malformed annotation, missing image, ...).

    Raised before any training starts; the message names the file and what is wrong.
    """


@dataclass(frozen=True)
class Query:
    """One CIR query: ``reference`` image + ``text`` should retrieve ``target``."""

    reference: str
    target: str | None  # None on test splits, whose targets are hidden
    text: str  # the modification text as used at this split
    pair_id: int | None = None  # CIRR's pairid; None elsewhere
    members: tuple[str, ...] | None = None  # CIRR's img_set.members; None elsewhere


@runtime_checkable
class CIRDataset(Protocol):
    """What the trainer and :func:`wrf4cir.evaluation.evaluate` rely on."""

    name: str
    split: str
    protocol: str

    @property
    def queries(self) -> Sequence[Query]: ...

    @property
    def gallery(self) -> Sequence[str]: ...

    def image(self, name: str) -> Image.Image: ...


class DatasetView:
    """A subset of another dataset's queries ranked against a chosen gallery.

    Used for the train probe: same images, same protocol, fewer queries and a gallery
    sized like the validation one.
    """

    def __init__(self, parent: CIRDataset, queries: Sequence[Query], gallery: Sequence[str],
                 split: str | None = None) -> None:
        self.parent = parent
        self.name = parent.name
        self.split = split or f"{parent.split}-view"
        self.protocol = parent.protocol
        self.queries: list[Query] = list(queries)
        self.gallery: list[str] = list(gallery)

    def image(self, name: str) -> Image.Image:
        return self.parent.image(name)

    def __len__(self) -> int:
        return len(self.queries)


class PartsView:
    """Several datasets scored separately but trained and encoded together.

    FashionIQ trained jointly on its categories is one: each category keeps its own
    gallery. ``queries`` are the parts' queries concatenated in ``parts`` order,
    ``gallery`` the union of their galleries (first occurrence order).
    """

    def __init__(self, parts: dict[str, CIRDataset], split: str) -> None:
        first = next(iter(parts.values()))
        self.parts = parts
        self.name, self.protocol, self.split = first.name, first.protocol, split
        self.queries: list[Query] = [q for p in parts.values() for q in p.queries]
        self.gallery: list[str] = list(dict.fromkeys(g for p in parts.values()
                                                     for g in p.gallery))

    def image(self, name: str) -> Image.Image:
        return next(iter(self.parts.values())).image(name)


def subsample_queries(queries: Sequence[Query], max_triplets: int | None, seed: int) -> list[Query]:
    """The seeded "few triplets" subsample: ``max_triplets`` queries, in their original order.

    ``None`` (or a value >= the number of queries) keeps every query. The same seed always
    selects the same triplets, and a smaller budget is not a subset of a larger one's
    guarantee: only the seed fixes the sample.
    """
    if max_triplets is None or max_triplets >= len(queries):
        return list(queries)
    if max_triplets < 1:
        raise DataError(f"max_triplets must be >= 1, got {max_triplets}")
    keep = sorted(random.Random(seed).sample(range(len(queries)), max_triplets))
    return [queries[i] for i in keep]


# name -> builder(root, split, **options) -> CIRDataset
_REGISTRY: dict[str, Callable[..., CIRDataset]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., CIRDataset]], Callable[..., CIRDataset]]:
    """Register a dataset builder under ``name`` (decorator)."""

    def deco(fn: Callable[..., CIRDataset]) -> Callable[..., CIRDataset]:
        if name in _REGISTRY:
            raise ValueError(f"dataset {name!r} is registered twice")
        _REGISTRY[name] = fn
        return fn

    return deco


def list_datasets() -> list[str]:
    """Names accepted by :func:`build_dataset` (and by ``data.name`` in a config)."""
    return sorted(_REGISTRY)


def build_dataset(name: str, root: str | Path | None, split: str, **options: Any) -> CIRDataset:
    """Build split ``split`` of dataset ``name`` stored under ``root``.

    Options common to all loaders: ``max_triplets`` and ``seed`` (seeded subsample of the
    training triplets), ``validate_images`` (check every referenced image exists, default
    on). Loaders add their own (e.g. FashionIQ's ``category``). Raises :class:`DataError`
    for anything wrong with the input.
    """
    if name not in _REGISTRY:
        raise DataError(f"unknown dataset {name!r}; known: {', '.join(list_datasets())}")
    return _REGISTRY[name](root, split, **options)
