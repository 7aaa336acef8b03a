"""Speed and memory of retrieval evaluation from precomputed features.

    python -m benchmarks.evaluation

1. A FashionIQ-sized category (6,346 gallery images, 2,038 queries, 640-d features as
   RN50x4's) under the FashionIQ protocol: median wall time of ``evaluate_features``.
2. A CIRR-style evaluation against a 100,000-image gallery (4,000 queries, reference
   removal and subset recall): wall time, and the largest score block held at once
   (``chunk x gallery``), against the 100k x 100k matrix a naive gallery-to-gallery
   computation would need.

Writes ``benchmarks/results/evaluation.json``. Target (issue: real benchmarks): the
FashionIQ-sized category in well under a second on CPU.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from wrf4cir.data import Query
from wrf4cir.evaluation import evaluate_features

OUT = Path(__file__).parent / "results" / "evaluation.json"


class _Split:
    def __init__(self, protocol: str, queries: list[Query], gallery: list[str]) -> None:
        self.name, self.split, self.protocol = "bench", "val", protocol
        self.queries, self.gallery, self.parts = queries, gallery, None


def _features(n: int, dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1)


def main() -> dict:
    # 1. FashionIQ-sized category
    n_gallery, n_queries, dim = 6346, 2038, 640
    gallery = [f"B{i:09d}" for i in range(n_gallery)]
    queries = [Query(gallery[(7 * i) % n_gallery], gallery[(13 * i + 1) % n_gallery], "t")
               for i in range(n_queries)]
    fiq = _Split("fashioniq", queries, gallery)
    qf, gf = _features(n_queries, dim, 0), _features(n_gallery, dim, 1)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        evaluate_features(fiq, qf, gf)
        times.append(time.perf_counter() - t0)

    # 2. CIRR-style against 100k images
    big, nq, chunk = 100_000, 4000, 1024
    gallery = [f"img{i}" for i in range(big)]
    queries = []
    for i in range(nq):
        ref, target = gallery[(31 * i) % big], gallery[(31 * i + 5) % big]
        others = [gallery[(31 * i + k) % big] for k in (1, 2, 3, 4)]
        queries.append(Query(ref, target, "t", pair_id=i, members=(ref, target, *others)))
    cirr = _Split("cirr", queries, gallery)
    qf, gf = _features(nq, 512, 2), _features(big, 512, 3)
    t0 = time.perf_counter()
    evaluate_features(cirr, qf, gf, chunk=chunk)
    big_time = time.perf_counter() - t0

    result = {
        "benchmark": "evaluation",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "torch_threads": torch.get_num_threads()},
        "fashioniq_category": {"gallery": n_gallery, "queries": n_queries, "dim": dim,
                               "median_s": statistics.median(times), "runs": len(times)},
        "cirr_100k": {"gallery": big, "queries": nq, "dim": 512, "chunk": chunk,
                      "seconds": big_time,
                      "largest_score_block_mib": chunk * big * 4 / 2**20,
                      "naive_gallery_square_gib": big * big * 4 / 2**30},
        "target": "fashioniq_category median well under 1 s",
        "target_met": statistics.median(times) < 0.5,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"FashionIQ-sized category: {statistics.median(times) * 1000:.0f} ms; "
          f"100k gallery, 4k queries: {big_time:.1f} s with blocks of "
          f"{result['cirr_100k']['largest_score_block_mib']:.0f} MiB; wrote {OUT}")
    return result


if __name__ == "__main__":
    main()
