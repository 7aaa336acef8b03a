"""Step-time and memory cost of the perturbation kinds.

    python -m benchmarks.step [--model wrf-tiny-vit] [--batch-size 32] [--steps 20]

In one process, on the same model and batch, times the training step (the trainer's own
``train_step``) for ``none``, ``wrf``, ``sam``, ``wrf`` with ``perturb_every=2`` and
``random``, round-robin so drift in machine speed hits every variant alike, and reports
the median step time and its ratio to ``none``. Peak memory is measured per variant in a
child process (max resident set size on CPU; ``torch.cuda.max_memory_allocated`` on
CUDA), since a process's peak cannot be reset. Writes ``benchmarks/results/step.json``.

Target (issue: core library): ``wrf / none <= 2.1``; two passes make 2.0 the floor.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from wrf4cir import __version__
from wrf4cir.config import Config
from wrf4cir.models import build_model
from wrf4cir.trainer import build_optimizer, resolve_device, train_step

VARIANTS: dict[str, dict[str, Any]] = {
    "none": {"kind": "none"},
    "wrf": {"kind": "wrf", "radius": 1e-3},
    "sam": {"kind": "sam", "radius": 0.05},
    "wrf_every2": {"kind": "wrf", "radius": 1e-3, "perturb_every": 2},
    "random": {"kind": "random", "radius": 1e-3},
}
TARGET = {"wrf/none": 2.1}
OUT = Path(__file__).parent / "results" / "step.json"
TEXTS = ["make the small red circle blue", "remove the green square",
         "add a large yellow triangle at the top left", "move the cyan cross to the center"]


def setup(variant: str, model_name: str, batch_size: int, device: torch.device):
    cfg = Config.from_dict({"model": {"name": model_name, "pretrained": None},
                            "perturb": VARIANTS[variant], "run": {"progress": False}})
    torch.manual_seed(0)
    model, _, tokenizer = build_model(cfg.model, device)
    model.train()
    opt = build_optimizer(model, cfg)
    size = model.clip.visual.image_size
    size = size[0] if isinstance(size, tuple | list) else size
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(batch_size, 3, size, size, generator=g),
             tokenizer([TEXTS[i % len(TEXTS)] for i in range(batch_size)]),
             torch.randn(batch_size, 3, size, size, generator=g))
    return model, opt, batch


def time_steps(state, device: torch.device, n: int) -> list[float]:
    model, opt, batch = state
    out = []
    for _ in range(n):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_step(model, opt, batch, device, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(time.perf_counter() - t0)
    return out


def _proc_status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise KeyError(field)


def child_memory(variant: str, model_name: str, batch_size: int, device_name: str
                 ) -> dict[str, float]:
    """Peak memory (MiB) of one variant's training steps, in this (child) process.

    On CUDA: ``max_memory_allocated`` over the steps. On CPU: the resident-set high-water
    mark over the steps, reset first through ``/proc/self/clear_refs`` (Linux) so the
    peak of importing libraries does not hide the step's; ``step_delta`` is that peak
    minus the resident size just before (model and optimizer state already allocated).
    """
    device = resolve_device(device_name)
    state = setup(variant, model_name, batch_size, device)
    time_steps(state, device, 1)  # allocates the optimizer state
    if device.type == "cuda":
        base = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        time_steps(state, device, 3)
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"peak": peak, "step_delta": peak - base}
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    base = _proc_status_mib("VmRSS")
    time_steps(state, device, 3)
    peak = _proc_status_mib("VmHWM")
    return {"peak": peak, "step_delta": peak - base}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="wrf-tiny-vit")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    p.add_argument("--rounds", type=int, default=4, help="round-robin rounds")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--child-memory", metavar="VARIANT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child_memory:
        print(json.dumps(child_memory(args.child_memory, args.model, args.batch_size,
                                      args.device)))
        return {}

    device = resolve_device(args.device)
    states = {v: setup(v, args.model, args.batch_size, device) for v in VARIANTS}
    for s in states.values():  # warm-up: allocator, kernels, AdamW state
        time_steps(s, device, 2)
    times: dict[str, list[float]] = {v: [] for v in VARIANTS}
    per_round = max(1, args.steps // args.rounds)
    for _ in range(args.rounds):
        for v, s in states.items():
            times[v] += time_steps(s, device, per_round)
    medians = {v: statistics.median(t) for v, t in times.items()}

    memory = {}
    for v in VARIANTS:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.step", "--child-memory", v,
                               "--model", args.model, "--batch-size", str(args.batch_size),
                               "--device", args.device], capture_output=True, text=True,
                              check=True)
        memory[v] = json.loads(proc.stdout.strip().splitlines()[-1])

    ratios = {f"{v}/none": medians[v] / medians["none"] for v in VARIANTS if v != "none"}
    result = {
        "benchmark": "step",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "wrf4cir": __version__,
        "torch": torch.__version__,
        "machine": {"platform": platform.platform(), "processor": platform.machine(),
                    "device": str(device), "torch_threads": torch.get_num_threads()},
        "model": args.model,
        "batch_size": args.batch_size,
        "steps_per_variant": len(times["none"]),
        "median_step_s": medians,
        "p10_p90_step_s": {v: [statistics.quantiles(t, n=10)[0],
                               statistics.quantiles(t, n=10)[-1]] for v, t in times.items()},
        "samples_per_s": {v: args.batch_size / m for v, m in medians.items()},
        "ratios_to_none": ratios,
        "peak_memory_mib": memory,
        "memory_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda" else
                          "VmHWM over the steps of a child process running the variant "
                          "alone, reset via /proc/self/clear_refs; step_delta = peak - RSS "
                          "before the steps"),
        "target": TARGET,
        "target_met": all(ratios[k] <= v for k, v in TARGET.items()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    for v in VARIANTS:
        extra = f"  x{ratios[f'{v}/none']:.2f}" if v != "none" else ""
        print(f"{v:>11}: {medians[v] * 1000:7.1f} ms/step  peak {memory[v]['peak']:6.0f} MiB"
              f" (step +{memory[v]['step_delta']:4.0f} MiB){extra}")
    print(f"wrote {args.out} (target wrf/none <= {TARGET['wrf/none']}: "
          f"{'met' if result['target_met'] else 'NOT met'})")
    return result


if __name__ == "__main__":
    main()
