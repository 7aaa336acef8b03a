"""Retrieval evaluation: the protocols, the train probe and the generalization gap.

Every rule about how recall is computed lives here: which K, whether a query's own
reference image is removed from its ranking, the headline number, how the train probe is
drawn, and the gap. The trainer and the study layer only call these functions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from wrf4cir.data.base import CIRDataset, DataError, DatasetView, PartsView, Query


@dataclass(frozen=True)
class Protocol:
    """How one family of datasets is scored."""

    ks: tuple[int, ...]  # R@K reported
    remove_reference: bool  # drop the query's reference image from its ranking (CIRR)
    headline: Callable[[Mapping[str, float]], float]  # the one number a paper quotes
    headline_doc: str
    subset_ks: tuple[int, ...] = ()  # Rsubset@K over each query's img_set members (CIRR)


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
    # DATASETS.md: per category, the gallery is the category's val images, the reference
    # is NOT removed; the headline averages R@10 and R@50 (over categories when joint)
    "fashioniq": Protocol(
        ks=(10, 50),
        remove_reference=False,
        headline=lambda m: (m["R@10"] + m["R@50"]) / 2,
        headline_doc="(R@10 + R@50) / 2",
    ),
    # DATASETS.md: rank every val image, then remove the query's reference; subset recall
    # ranks the img_set members without the reference, in the same order
    "cirr": Protocol(
        ks=(1, 5, 10, 50),
        remove_reference=True,
        subset_ks=(1, 2, 3),
        headline=lambda m: (m["R@5"] + m["Rsubset@1"]) / 2,
        headline_doc="(R@5 + Rsubset@1) / 2",
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


def subset_ranks(scores: Tensor, targets: Tensor, members: Tensor) -> Tensor:
    """0-based rank of each target among its query's ``members`` (gallery indices, -1 pads).

    The members keep the order of the full ranking (ties by gallery order); a target that
    is not among its members gets a rank past any K.
    """
    scores = scores.float()
    valid = members >= 0
    m_scores = scores.gather(1, members.clamp(min=0))
    t = scores.gather(1, targets.unsqueeze(1))
    ahead = (m_scores > t) | ((m_scores == t) & (members < targets.unsqueeze(1)))
    rank = (ahead & valid).sum(dim=1)
    present = ((members == targets.unsqueeze(1)) & valid).any(dim=1)
    return torch.where(present, rank, torch.full_like(rank, 10**9))


@dataclass
class _Plan:
    proto: Protocol
    targets: Tensor  # gallery index of each query's target
    exclude: Tensor | None  # gallery index of each query's reference (-1: not in gallery)
    members: Tensor | None  # img_set members minus the reference, as gallery indices


def _plan(dataset: CIRDataset) -> _Plan:
    proto = protocol_of(dataset)
    queries, gallery = dataset.queries, dataset.gallery
    index = {name: j for j, name in enumerate(gallery)}
    targets = torch.tensor([_gallery_index(index, q.target, q, dataset) for q in queries],
                           dtype=torch.long)
    exclude = None
    if proto.remove_reference:
        exclude = torch.tensor([index.get(q.reference, -1) for q in queries], dtype=torch.long)
    members = None
    if proto.subset_ks:
        rows = []
        for q in queries:
            names = [m for m in (q.members or ()) if m != q.reference]
            missing = [m for m in names if m not in index]
            if missing:
                raise DataError(f"{dataset.name}/{dataset.split}: member {missing[0]!r} of "
                                f"pair {q.pair_id} is not in the gallery")
            rows.append([index[m] for m in names])
        width = max((len(r) for r in rows), default=0)
        members = torch.tensor([r + [-1] * (width - len(r)) for r in rows],
                               dtype=torch.long).reshape(len(rows), width)
    return _Plan(proto, targets, exclude, members)


def _metrics(plan: _Plan, ranks: Tensor, sub: Tensor | None) -> dict[str, float]:
    metrics = {f"R@{k}": float((ranks < k).float().mean() * 100) for k in plan.proto.ks}
    if sub is not None:
        metrics.update({f"Rsubset@{k}": float((sub < k).float().mean() * 100)
                        for k in plan.proto.subset_ks})
    metrics["headline"] = float(plan.proto.headline(metrics))
    return metrics


def _score_rows(plan: _Plan, scores: Tensor, rows: slice) -> tuple[Tensor, Tensor | None]:
    excl = plan.exclude[rows] if plan.exclude is not None else None
    ranks = target_ranks(scores, plan.targets[rows], excl)
    sub = None
    if plan.members is not None:
        sub = subset_ranks(scores, plan.targets[rows], plan.members[rows])
    return ranks, sub


def _single(dataset: CIRDataset, scores_for: Callable[[slice], Tensor],
            chunk: int) -> dict[str, float]:
    plan = _plan(dataset)
    n = len(dataset.queries)
    parts = [_score_rows(plan, scores_for(slice(s, min(s + chunk, n))),
                         slice(s, min(s + chunk, n))) for s in range(0, n, chunk)]
    ranks = torch.cat([r for r, _ in parts]) if parts else torch.empty(0)
    sub = torch.cat([s for _, s in parts]) if parts and plan.members is not None else None
    return _metrics(plan, ranks, sub)


def _split_parts(dataset: CIRDataset) -> list[tuple[str, CIRDataset, slice, Tensor]]:
    """Each part's queries (a slice of the whole) and gallery (columns of the whole)."""
    index = {name: j for j, name in enumerate(dataset.gallery)}
    out, start = [], 0
    for name, part in dataset.parts.items():
        stop = start + len(part.queries)
        cols = torch.tensor([index[g] for g in part.gallery], dtype=torch.long)
        out.append((name, part, slice(start, stop), cols))
        start = stop
    if start != len(dataset.queries):
        raise DataError(f"{dataset.name}/{dataset.split}: its parts do not cover its queries")
    return out


def aggregate_parts(protocol: str, per_part: Mapping[str, Mapping[str, float]]
                    ) -> dict[str, float]:
    """Mean of each metric over the parts (FashionIQ categories), and the headline of the
    means; per-part metrics are kept as ``<part>/<metric>``."""
    proto = PROTOCOLS[protocol]
    keys = [k for k in next(iter(per_part.values())) if k != "headline"]
    out = {k: float(np.mean([m[k] for m in per_part.values()])) for k in keys}
    out["headline"] = float(proto.headline(out))
    for name, m in per_part.items():
        out.update({f"{name}/{k}": v for k, v in m.items()})
    return out


def evaluate(dataset: CIRDataset, scores: Tensor | np.ndarray,
             chunk: int = 4096) -> dict[str, float]:
    """Recall metrics (percentages) of ``scores`` under the dataset's protocol.

    ``scores[i, j]`` is the similarity of ``dataset.queries[i]`` to ``dataset.gallery[j]``.
    Returns ``R@K`` for each K of the protocol (``Rsubset@K`` too for CIRR) and
    ``headline``. A dataset with ``parts`` (FashionIQ categories trained jointly) is scored
    per part, each query against its own part's gallery, and :func:`aggregate_parts`
    combines them.
    """
    scores = torch.as_tensor(scores)
    queries, gallery = dataset.queries, dataset.gallery
    if scores.shape != (len(queries), len(gallery)):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected "
                         f"({len(queries)} queries, {len(gallery)} gallery images)")
    if getattr(dataset, "parts", None):
        per = {name: _single(part, lambda r, rows=rows, cols=cols: scores[rows][r][:, cols],
                             chunk)
               for name, part, rows, cols in _split_parts(dataset)}
        return aggregate_parts(dataset.protocol, per)
    return _single(dataset, lambda r: scores[r], chunk)


def evaluate_features(dataset: CIRDataset, query: Tensor, gallery: Tensor,
                      chunk: int = 1024) -> dict[str, float]:
    """:func:`evaluate` from features: scores are cosine similarities, computed ``chunk``
    queries at a time, so a large gallery never needs the whole query x gallery matrix.

    ``query[i]`` is the feature of ``dataset.queries[i]``, ``gallery[j]`` of
    ``dataset.gallery[j]`` (both L2-normalised).
    """
    if getattr(dataset, "parts", None):
        per = {name: _single(part, lambda r, rows=rows, cols=cols:
                             query[rows][r] @ gallery[cols].T, chunk)
               for name, part, rows, cols in _split_parts(dataset)}
        return aggregate_parts(dataset.protocol, per)
    return _single(dataset, lambda r: query[r] @ gallery.T, chunk)


def write_cirr_submission(dataset: CIRDataset, scores: Tensor | np.ndarray,
                          out_dir: str | Path) -> tuple[Path, Path]:
    """The two CIRR test-server files for ``dataset`` (test1) and ``scores``.

    ``recall_submission.json``: per pairid the top 50 gallery names, the query's reference
    removed; ``recall_subset_submission.json``: the top 3 of its img_set members (reference
    removed), in the same order. Both carry ``"version": "rc2"`` and their ``"metric"``.
    """
    scores = torch.as_tensor(scores).float()
    queries, gallery = dataset.queries, list(dataset.gallery)
    if scores.shape != (len(queries), len(gallery)):
        raise ValueError(f"scores have shape {tuple(scores.shape)}, expected "
                         f"({len(queries)} queries, {len(gallery)} gallery images)")
    index = {name: j for j, name in enumerate(gallery)}
    recall: dict[str, Any] = {"version": "rc2", "metric": "recall"}
    subset: dict[str, Any] = {"version": "rc2", "metric": "recall_subset"}
    for i, q in enumerate(queries):
        row = scores[i].clone()
        if q.reference in index:
            row[index[q.reference]] = float("-inf")
        order = torch.argsort(-row, stable=True)  # ties by gallery order, as in evaluate
        recall[str(q.pair_id)] = [gallery[j] for j in order[:50].tolist()]
        members = [m for m in (q.members or ()) if m != q.reference]
        members.sort(key=lambda m: (-float(row[index[m]]), index[m]))
        subset[str(q.pair_id)] = members[:3]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "recall_submission.json", out / "recall_subset_submission.json"
    for path, data in zip(paths, (recall, subset), strict=True):
        path.write_text(json.dumps(data))
    return paths


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
                seed: int = 0) -> CIRDataset:
    """The train probe: training triplets ranked exactly as the validation split is.

    METHOD.md: a fixed, seeded sample of training triplets as large as the val query set,
    ranked against a gallery of training images as large as the val gallery (recall falls
    as galleries grow, so unequal galleries would bias the gap). The gallery holds every
    probe query's reference and target (and CIRR-style members), filled up with other
    training images. Queries are taken in a seeded order while their images still fit in
    a gallery of the val size; so the probe can have fewer queries than asked when the
    training set is small or its images are few, never a larger gallery.

    A validation set with ``parts`` (FashionIQ categories) gets one probe per part, drawn
    from the same part of the training set.
    """
    val_parts = getattr(val, "parts", None)
    if val_parts:
        train_parts = getattr(train, "parts", None) or {}
        missing = [name for name in val_parts if name not in train_parts]
        if missing:
            raise DataError(f"{train.name}: the training split has no part {missing[0]!r} "
                            "to probe")
        return PartsView({name: train_probe(train_parts[name], part, n_queries, seed)
                          for name, part in val_parts.items()}, split=f"{train.split}-probe")
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
    Per-part metrics (``dress/R@10``) get their own gap. Keys present in only one input
    are skipped.
    """
    gap = {}
    for key, value in probe.items():
        if key not in val:
            continue
        leaf = key.rsplit("/", 1)[-1]
        if leaf == "loss":
            gap[key] = val[key] - value
        elif leaf.startswith(("R@", "Rsubset@")) or leaf == "headline":
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

