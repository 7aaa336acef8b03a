"""Retrieval evaluation: the protocols, the train probe and the generalization gap.

Every rule about how recall is computed lives here: which K, whether a query's own
reference image is removed from its ranking, the headline number, how the train probe is
drawn, and the gap. The trainer and the study layer only call these functions.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from wrf4cir.data.base import CIRDataset, DataError, DatasetView, Query


@dataclass(frozen=True)
class Protocol:
    """How one family of datasets is scored."""

    ks: tuple[int, ...]  # R@K reported
    remove_reference: bool  # drop the query's reference image from its ranking (CIRR)
    headline: Callable[[Mapping[str, float]], float]  # the one number a paper quotes
    headline_doc: str


PROTOCOLS: dict[str, Protocol] = {
    # Our synthetic benchmarks: small galleries (a few hundred images), so the low K carry
    # the signal. An edit never yields the unchanged scene, and the reference is by far the
    # most similar image to its target, so, as in CIRR, it is removed from its own ranking
    # (kept, it takes rank 1 for nearly every query and R@1 measures nothing).
    "synthetic": Protocol(
        ks=(1, 5, 10, 50),
        remove_reference=True,
        headline=lambda m: (m["R@1"] + m["R@5"] + m["R@10"]) / 3,
        headline_doc="(R@1 + R@5 + R@10) / 3",
    ),
}


def protocol_of(dataset: CIRDataset) -> Protocol:
    try:
        return PROTOCOLS[dataset.protocol]
    except KeyError:
        raise DataError(f"dataset {dataset.name!r} names an unknown evaluation protocol "
                        f"{dataset.protocol!r}") from None


def target_ranks(scores: Tensor, targets: Tensor, exclude: Tensor | None = None) -> Tensor:
    """0-based rank of each query's target in its row of ``scores`` (higher = better).

    Ties are broken by gallery order, as a stable sort would: a degenerate model whose
    scores are all equal does not get a perfect recall. ``exclude[i]`` (a gallery index, or
    -1 for none) is removed from query ``i``'s ranking before ranking.
    """
    scores = scores.float()
    if exclude is not None:
        scores = scores.clone()
        rows = torch.nonzero(exclude >= 0).squeeze(1)
        scores[rows, exclude[rows]] = float("-inf")
    rows = torch.arange(scores.shape[0])
    t = scores[rows, targets].unsqueeze(1)
    before = torch.arange(scores.shape[1]).unsqueeze(0) < targets.unsqueeze(1)
    return ((scores > t) | ((scores == t) & before)).sum(dim=1)


def evaluate(dataset: CIRDataset, scores: Tensor | np.ndarray) -> dict[str, float]:
    """Recall metrics (percentages) of ``scores`` under the dataset's protocol.

    ``scores[i, j]`` is the similarity of ``dataset.queries[i]`` to ``dataset.gallery[j]``.
    Returns ``R@K`` for each K of the protocol and ``headline``.
    """
    proto = protocol_of(dataset)
    scores = torch.as_tensor(scores)
    queries, gallery = dataset.queries, dataset.gallery
    if scores.shape != (len(queries), len(gallery)):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected "
                         f"({len(queries)} queries, {len(gallery)} gallery images)")
    index = {name: j for j, name in enumerate(gallery)}
    targets = torch.tensor([_gallery_index(index, q.target, q, dataset) for q in queries],
                           dtype=torch.long)
    exclude = None
    if proto.remove_reference:
        exclude = torch.tensor([index.get(q.reference, -1) for q in queries], dtype=torch.long)
    ranks = target_ranks(scores, targets, exclude)
    metrics = {f"R@{k}": float((ranks < k).float().mean() * 100) for k in proto.ks}
    metrics["headline"] = float(proto.headline(metrics))
    return metrics


def _gallery_index(index: Mapping[str, int], name: str | None, query: Query,
                   dataset: CIRDataset) -> int:
    if name is None:
        raise DataError(f"{dataset.name}/{dataset.split}: queries have no targets (a test "
                        "split?); recall cannot be computed")
    try:
        return index[name]
    except KeyError:
        raise DataError(f"{dataset.name}/{dataset.split}: target {name!r} of the query on "
                        f"{query.reference!r} is not in the gallery") from None


def train_probe(train: CIRDataset, val: CIRDataset, n_queries: int | None = None,
                seed: int = 0) -> DatasetView:
    """The train probe: training triplets ranked exactly as the validation split is.

    METHOD.md: a fixed, seeded sample of training triplets as large as the val query set,
    ranked against a gallery of training images as large as the val gallery (recall falls
    as galleries grow, so unequal galleries would bias the gap). The gallery holds every
    probe query's reference and target (and CIRR-style members), filled up with other
    training images. Queries are taken in a seeded order while their images still fit in
    a gallery of the val size; so the probe can have fewer queries than asked when the
    training set is small or its images are few, never a larger gallery.
    """
    want = n_queries if n_queries is not None else len(val.queries)
    size = len(val.gallery)
    rng = random.Random(seed)
    order = list(range(len(train.queries)))
    rng.shuffle(order)
    chosen: list[int] = []
    needed: set[str] = set()
    for i in order:
        if len(chosen) >= want:
            break
        q = train.queries[i]
        images = {q.reference, q.target, *(q.members or ())} - {None}
        if len(needed | images) <= size:
            chosen.append(i)
            needed |= images  # type: ignore[arg-type]
    others = sorted(set(train.gallery) - needed)
    fill = rng.sample(others, min(len(others), size - len(needed)))
    gallery = sorted(needed | set(fill))
    return DatasetView(train, [train.queries[i] for i in sorted(chosen)], gallery,
                       split=f"{train.split}-probe")


def generalization_gap(probe: Mapping[str, float], val: Mapping[str, float]) -> dict[str, float]:
    """The generalization gap (METHOD.md), the one definition used everywhere.

    For every recall metric and the headline: ``gap = probe - val`` (train-probe recall
    minus validation recall; positive = overfitting). For the loss: ``val - probe``.
    Keys present in only one input are skipped.
    """
    gap = {}
    for key, value in probe.items():
        if key not in val:
            continue
        if key == "loss":
            gap[key] = val[key] - value
        elif key.startswith(("R@", "Rsubset@")) or key == "headline":
            gap[key] = value - val[key]
    return gap


def contrastive_eval_loss(query: Tensor, target: Tensor, logit_scale: float,
                          batch_size: int) -> float:
    """Mean in-batch contrastive loss over consecutive chunks of ``batch_size`` queries.

    The same loss the model trains on, computed from features already extracted for
    recall, so the loss gap costs no extra forward pass.
    """
    from wrf4cir.losses import cir_contrastive_loss

    total, count = 0.0, 0
    scale = torch.tensor(logit_scale)
    for start in range(0, query.shape[0], batch_size):
        q, t = query[start:start + batch_size], target[start:start + batch_size]
        if q.shape[0] < 2:  # a lone query has no negatives
            continue
        total += float(cir_contrastive_loss(q.float(), t.float(), scale)["loss"]) * q.shape[0]
        count += q.shape[0]
    return total / max(count, 1)

