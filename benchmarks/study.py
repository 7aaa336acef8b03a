"""Overhead of the study layer: the same fits run through Ray Tune and directly.

    python -m benchmarks.study [--trials 8] [--parallel 2]

Runs ``--trials`` identical short fits (different seeds) twice, with the same parallelism:
directly, in a pool of ``--parallel`` worker processes each calling ``wrf4cir.fit``, and
as a grid study (one CPU per trial, a local Ray instance with ``--parallel`` CPUs). Writes
``benchmarks/results/study.json`` with both wall times, their ratio, and the overhead per
trial. Ray's start-up is counted in the study's time (a user waits for it too) and also
reported on its own.

Target (issue: study layer): ratio <= 1.15 for 8 trials of ~20 s each on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "results" / "study.json"
TARGET = 1.15


def base_config(epochs: int, triplets: int) -> dict[str, Any]:
    return {
        "model": {"name": "wrf-tiny-rn", "pretrained": None},
        "data": {"name": "synthetic-shapes", "max_triplets": triplets},
        "perturb": {"kind": "wrf", "radius": 1e-3},
        "optim": {"epochs": epochs, "batch_size": 32},
        "run": {"progress": False, "threads": 1},
    }


def _direct_fit(args: tuple[dict[str, Any], int, str]) -> float:
    from wrf4cir.config import Config
    from wrf4cir.trainer import fit

    base, seed, out = args
    data = json.loads(json.dumps(base))
    data["seed"] = seed
    data["run"]["out_dir"] = out
    t0 = time.perf_counter()
    fit(Config.from_dict(data))
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--parallel", type=int, default=2)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--triplets", type=int, default=250)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    base = base_config(args.epochs, args.triplets)
    work = Path(tempfile.mkdtemp(prefix="wrf4cir-bench-study-"))

    # the data are generated once, outside both timings
    from wrf4cir.config import Config
    from wrf4cir.trainer import load_splits

    load_splits(Config.from_dict(base))

    # direct: a process pool with the same parallelism as the study
    ctx = mp.get_context("spawn")
    t0 = time.perf_counter()
    with ctx.Pool(args.parallel) as pool:
        fit_times = pool.map(_direct_fit, [(base, s, str(work / f"direct-{s}"))
                                           for s in range(args.trials)])
    direct = time.perf_counter() - t0

    # through the study layer: a grid over the seed
    import ray

    from study.runner import init_ray, run_study
    from study.spec import parse_spec

    spec = {"name": "bench", "base": base, "grid": {"seed": list(range(args.trials))},
            "resources": {"cpu": 1}, "checkpoint": {"every": 1, "keep": 1}}
    t0 = time.perf_counter()
    init_ray(None, ship_code=False, verbose=0, num_cpus=args.parallel)  # sized like the pool
    ray_start = time.perf_counter() - t0
    t1 = time.perf_counter()
    run_study(parse_spec(spec), storage=work)
    tune_time = time.perf_counter() - t1
    ray.shutdown()
    studied = ray_start + tune_time

    result = {
        "benchmark": "study",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
        "trials": args.trials, "parallel": args.parallel,
        "fit": {"epochs": args.epochs, "triplets": args.triplets, "model": "wrf-tiny-rn",
                "kind": "wrf"},
        "mean_fit_s": sum(fit_times) / len(fit_times),
        "direct_wall_s": direct,
        "study_wall_s": studied,
        "ray_start_s": ray_start,
        "ratio": studied / direct,
        "ratio_without_ray_start": tune_time / direct,
        "overhead_per_trial_s": (studied - direct) / args.trials,
        "target_ratio": TARGET,
        "target_met": studied / direct <= TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"direct {direct:.1f}s, study {studied:.1f}s (Ray start {ray_start:.1f}s): ratio "
          f"{result['ratio']:.3f}, {result['overhead_per_trial_s']:.2f}s per trial; "
          f"target <= {TARGET}: {'met' if result['target_met'] else 'NOT met'}")
    return result


if __name__ == "__main__":
    main()
