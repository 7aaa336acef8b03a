"""``fit(config) -> History``: fine-tune a CIR model under weight perturbation and measure
its generalization gap every epoch.

Per epoch: train with the perturbed step, then (every ``eval.every`` epochs, and always
after the last) encode the validation split and the train probe once each, compute recall
under the dataset's protocol, the gap, and the losses, and report one metrics dict to the
callbacks. Metric names (the study layer's columns):

    epoch, step, lr, logit_scale,
    train/loss, train/<loss terms>,            mean over the epoch's steps (first pass)
    val/R@K, val/headline, val/loss, val/queries, val/gallery,
    probe/R@K, probe/headline, probe/loss, probe/queries, probe/gallery,
    gap/R@K, gap/headline, gap/loss,           wrf4cir.evaluation.generalization_gap
    time/epoch, time/train, time/second_pass, time/eval   (seconds)
    sharpness/mean, sharpness/std              (last epoch, if eval.sharpness)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from wrf4cir import checkpoint as ckpt
from wrf4cir.config import Config, ConfigError, flatten, save_config
from wrf4cir.data import CIRDataset, DataError, build_dataset, list_datasets
from wrf4cir.data.transforms import image_transform
from wrf4cir.evaluation import (
    contrastive_eval_loss,
    evaluate_features,
    generalization_gap,
    train_probe,
)
from wrf4cir.losses import cir_contrastive_loss
from wrf4cir.models import CIRModel, build_model, check_architecture, module_of
from wrf4cir.models.factory import resolve_pretrained
from wrf4cir.perturb import PerturbedOptimizer, perturbed

log = logging.getLogger(__name__)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the epoch and step."""


@dataclass
class EpochReport:
    """What a callback receives after each epoch."""

    epoch: int  # 1-based
    metrics: dict[str, float]
    checkpoint: Path | None  # the checkpoint directory written after this epoch, if any
    is_last: bool
    config: Config


Callback = Callable[[EpochReport], None]


@dataclass
class History:
    """Everything a fit measured: one metrics dict per epoch, and where it wrote."""

    config: Config
    out_dir: Path
    epochs: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0  # the epoch the run continued after (0: a fresh start)

    @property
    def final(self) -> dict[str, float]:
        """The last epoch's metrics."""
        return self.epochs[-1] if self.epochs else {}

    def best(self, metric: str = "val/headline", mode: str = "max") -> dict[str, float]:
        """The epoch whose ``metric`` is best (``mode``: max or min)."""
        rows = [r for r in self.epochs if metric in r]
        if not rows:
            raise KeyError(f"no epoch reported {metric!r}")
        pick = max if mode == "max" else min
        return pick(rows, key=lambda r: r[metric])


# ---------------------------------------------------------------------------------------
# data


class TripletData(Dataset):
    """A CIR split as ``(reference tensor, text, target tensor)`` triplets.

    A dataset with ``text_choices(i)`` (FashionIQ's four caption forms) gets one of them
    drawn per query and epoch, from a generator seeded by ``(seed, epoch, i)``: random
    like the reference code, yet the same on every run and after a resume.
    """

    def __init__(self, dataset: CIRDataset, transform: Callable[[Any], Tensor],
                 seed: int = 0) -> None:
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self.choices = getattr(dataset, "text_choices", None)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset.queries)

    def __getitem__(self, i: int) -> tuple[Tensor, str, Tensor]:
        q = self.dataset.queries[i]
        text = q.text
        if self.choices is not None:
            forms = self.choices(i)
            text = forms[random.Random(f"{self.seed}/{self.epoch}/{i}").randrange(len(forms))]
        return (self.transform(self.dataset.image(q.reference)), text,
                self.transform(self.dataset.image(q.target)))


class _Collate:
    # a class, not a closure, so DataLoader workers can pickle it
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer

    def __call__(self, batch: Sequence[tuple[Tensor, str, Tensor]]) -> tuple[Tensor, ...]:
        refs, texts, targets = zip(*batch, strict=True)
        return torch.stack(refs), self.tokenizer(list(texts)), torch.stack(targets)


class _Images(Dataset):
    def __init__(self, dataset: CIRDataset, names: Sequence[str],
                 transform: Callable[[Any], Tensor]) -> None:
        self.dataset, self.names, self.transform = dataset, names, transform

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Tensor:
        return self.transform(self.dataset.image(self.names[i]))


# ---------------------------------------------------------------------------------------
# set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"run.device: {name!r} requested but no CUDA device is available")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full fp32."""
    if precision == "fp32" or device.type != "cuda":
        if precision == "bf16" and device.type != "cuda":
            log.warning("run.precision bf16 is only used on CUDA; running fp32 on %s", device)
        return None
    if precision == "auto" and not torch.cuda.is_bf16_supported():
        return None
    return torch.bfloat16


def param_groups(model: CIRModel, config: Config) -> list[dict[str, Any]]:
    """Trainable parameters grouped by (weight decay?, perturbed?).

    No weight decay on tensors with fewer than 2 dims (biases, norm gains) or the
    temperature; ``perturb.modules`` picks the modules whose tensors are perturbed.
    """
    groups: dict[tuple[bool, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        part = module_of(name)
        decay = p.ndim >= 2 and part != "scale"
        perturb = part in config.perturb.modules
        groups.setdefault((decay, perturb), []).append(p)
    if not groups:
        raise ConfigError("model: nothing to train (both encoders frozen and no trainable "
                          "fusion head); use model.fusion: combiner or unfreeze an encoder")
    return [
        {"params": ps, "weight_decay": config.optim.weight_decay if decay else 0.0,
         "perturb": perturb}
        for (decay, perturb), ps in sorted(groups.items())
    ]


def build_optimizer(model: CIRModel, config: Config) -> PerturbedOptimizer:
    o, p = config.optim, config.perturb
    base: dict[str, Any] = {"lr": o.lr}
    if o.optimizer == "sgd":
        base_cls: type[torch.optim.Optimizer] = torch.optim.SGD
        base["momentum"] = o.momentum
    else:
        base_cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        base.update(betas=tuple(o.betas), eps=o.eps)
    return PerturbedOptimizer(param_groups(model, config), base_cls, kind=p.kind,
                              radius=p.radius, perturb_every=p.perturb_every,
                              min_ndim=p.min_ndim, seed=config.seed, **base)


def build_scheduler(optimizer: PerturbedOptimizer, config: Config, total_steps: int
                    ) -> torch.optim.lr_scheduler.LRScheduler:
    o = config.optim
    if o.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=o.lr, total_steps=max(total_steps, 2), cycle_momentum=False)
    warmup = o.warmup_steps

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if o.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def default_out_dir(config: Config) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    tag = f"{config.perturb.kind}{config.perturb.radius:g}"
    return Path("runs") / f"{config.data.name}-{config.model.name}-{tag}-{stamp}"


def _data_options(config: Config) -> dict[str, Any]:
    d = config.data
    opts: dict[str, Any] = {"validate_images": d.validate_images}
    if d.recipe is not None:
        opts["recipe"] = d.recipe
    if d.category is not None:
        opts["category"] = d.category
    return opts


def preflight(config: Config) -> None:
    """Cheap checks of names and paths, so bad input fails before any work starts.

    Raises ``ModelError`` (unknown architecture, missing checkpoint file), ``DataError``
    (unknown dataset, missing root of a real dataset) or ``ConfigError`` (device).
    """
    check_architecture(config.model.name)
    resolve_device(config.run.device)
    p = config.model.pretrained
    if p is not None and p != "synthetic":
        resolve_pretrained(config.model)  # checks that a path-like value exists
    if config.data.name not in list_datasets():
        raise DataError(f"data.name: unknown dataset {config.data.name!r}; known: "
                        f"{', '.join(list_datasets())}")
    root = config.data.root
    if root is not None and not config.data.name.startswith("synthetic") \
            and not Path(root).expanduser().is_dir():
        raise DataError(f"data.root: {root} is not a directory")


def load_splits(config: Config) -> tuple[CIRDataset, CIRDataset]:
    """The training split (with the few-triplets subsample) and the validation split."""
    d = config.data
    opts = _data_options(config)
    train = build_dataset(d.name, d.root, "train", max_triplets=d.max_triplets,
                          seed=d.subsample_seed, **opts)
    val = build_dataset(d.name, d.root, "val", **opts)
    if len(train.queries) < 2:
        raise ConfigError(f"data.max_triplets: training needs at least 2 triplets, "
                          f"{d.name} train has {len(train.queries)}")
    return train, val


# ---------------------------------------------------------------------------------------
# evaluation


@torch.inference_mode()
def encode_images(model: CIRModel, dataset: CIRDataset, names: Sequence[str],
                  transform: Callable[[Any], Tensor], batch_size: int, device: torch.device,
                  amp: torch.dtype | None, workers: int = 0, progress: bool = False) -> Tensor:
    """Normalised features of ``names``, in batches, in that order (float32 on the CPU)."""
    loader = DataLoader(_Images(dataset, names, transform), batch_size=batch_size,
                        num_workers=workers)
    out = []
    for images in tqdm(loader, desc="images", leave=False, disable=None if progress else True):
        with _autocast(device, amp):
            out.append(model.encode_image(images.to(device)).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


@torch.inference_mode()
def evaluate_model(model: CIRModel, dataset: CIRDataset, transform: Callable[[Any], Tensor],
                   tokenizer: Any, config: Config, device: torch.device,
                   amp: torch.dtype | None) -> dict[str, float]:
    """Recall (protocol of the dataset), contrastive loss and sizes for one split.

    Every image the split needs (gallery, references) is encoded once, in batches.
    """
    model.eval()
    queries, gallery = dataset.queries, dataset.gallery
    names = list(dict.fromkeys([*gallery, *(q.reference for q in queries)]))
    feats = encode_images(model, dataset, names, transform, config.eval.batch_size, device,
                          amp, config.data.num_workers, config.run.progress)
    index = {n: i for i, n in enumerate(names)}
    query_feats = []
    bs = config.eval.batch_size
    for start in range(0, len(queries), bs):
        chunk = queries[start:start + bs]
        refs = feats[[index[q.reference] for q in chunk]].to(device)
        tokens = tokenizer([q.text for q in chunk]).to(device)
        with _autocast(device, amp):
            text = model.encode_text(tokens)
            query_feats.append(model.compose(refs.to(text.dtype), text).float().cpu())
    query = torch.cat(query_feats)
    metrics = evaluate_features(dataset, query, feats[: len(gallery)])
    targets = feats[[index[q.target] for q in queries]]
    metrics["loss"] = contrastive_eval_loss(query, targets, float(model.logit_scale().detach()),
                                            config.optim.batch_size)
    metrics["queries"] = float(len(queries))
    metrics["gallery"] = float(len(gallery))
    return metrics


def measure_sharpness(model: CIRModel, probe: CIRDataset, transform: Callable[[Any], Tensor],
                      tokenizer: Any, config: Config, device: torch.device,
                      amp: torch.dtype | None, base_loss: float) -> dict[str, float]:
    """Mean (and std) increase of the probe loss under random layer-wise perturbations.

    Each sample moves every trainable tensor with >= 2 dims by ``r * ||w_l||`` in a random
    direction (the ``random`` kind of perturb.py), measures the loss, and restores the
    weights exactly. Flatter minima rise less. ``base_loss`` is the probe loss at the
    trained weights, which the epoch's evaluation has already measured.
    """
    params = [(p, config.eval.sharpness_radius) for p in model.parameters()
              if p.requires_grad and p.ndim >= 2]
    generator = torch.Generator().manual_seed(config.seed + 1)
    rises = []
    for _ in range(config.eval.sharpness_samples):
        with perturbed(params, "random", generator):
            loss = evaluate_model(model, probe, transform, tokenizer, config, device, amp)["loss"]
        rises.append(loss - base_loss)
    return {"sharpness/mean": statistics.fmean(rises),
            "sharpness/std": statistics.pstdev(rises) if len(rises) > 1 else 0.0}


def train_step(model: CIRModel, optimizer: PerturbedOptimizer,
               batch: Sequence[Tensor], device: torch.device, amp: torch.dtype | None,
               grad_clip: float | None = None, where: str = ""
               ) -> tuple[dict[str, Tensor], list[float]]:
    """One optimizer update on a ``(reference, tokens, target)`` batch.

    Returns the loss terms of the first pass (the loss at ``w``; at ``w + e`` for the
    one-pass ``random`` kind) and the wall time of each forward/backward pass, so the
    cost of the second pass can be reported. Raises :class:`NonFiniteLossError`.
    """
    ref, tokens, tgt = (t.to(device) for t in batch)
    pass_times: list[float] = []
    terms: dict[str, Tensor] = {}

    def closure() -> Tensor:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            query, target = model(ref, tokens, tgt)
            out = cir_contrastive_loss(query.float(), target.float(), model.logit_scale())
        loss = out["loss"]
        if not torch.isfinite(loss):
            which = "perturbed" if pass_times else "first"
            raise NonFiniteLossError(f"loss is {float(loss.detach())} at {where} ({which} pass); "
                                     "lower optim.lr or perturb.radius")
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        if not terms:
            terms.update({k: v.detach() for k, v in out.items()})
        pass_times.append(time.perf_counter() - t0)
        return loss

    optimizer.step(closure)
    return terms, pass_times


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------
# the fit


def _find_resume(config: Config, ckpt_root: Path) -> tuple[Path, dict[str, Any]] | None:
    want = config.run.resume
    if want is None:
        return None
    if want == "auto":
        return ckpt.load_latest(ckpt_root)
    path = Path(want)
    if path.is_dir() and not (path / ckpt.FILENAME).exists():
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        found = ckpt.load_latest(root)
        if found is None:
            raise ckpt.CheckpointError(f"run.resume: no readable checkpoint under {path}")
        return found
    return path, ckpt.load_checkpoint(path)


def _check_same_run(saved: dict[str, Any], config: Config) -> None:
    # only run.* (paths, device, progress) and the epoch count may change on resume
    old = {k: v for k, v in flatten(saved).items() if not k.startswith("run.")}
    new = {k: v for k, v in flatten(config).items() if not k.startswith("run.")}
    # more epochs continue a constant or cosine schedule; a one-cycle schedule's shape is
    # fixed by its total length, so there the epoch count must stay too
    free = {"optim.epochs"} if new.get("optim.schedule") != "onecycle" else set()
    diff = sorted(k for k in new if old.get(k) != new[k] and k not in free)
    if diff:
        k = diff[0]
        raise ConfigError(f"{k}: the checkpoint was trained with {old.get(k)!r}, this config "
                          f"says {new[k]!r}; resume needs the same config")


def fit(config: Config, callbacks: Iterable[Callback] = ()) -> History:
    """Fine-tune as ``config`` says; return the per-epoch metrics.

    Writes ``config.yaml`` (the resolved config), ``metrics.jsonl`` (one line per epoch)
    and ``checkpoints/`` under ``config.run.out_dir``. With ``run.resume`` it continues
    from a checkpoint and, on CPU, reaches bit-identical results to an uninterrupted run.

    Raises :class:`ConfigError` / ``DataError`` / ``ModelError`` for bad input (before any
    training) and :class:`NonFiniteLossError` if the loss diverges.
    """
    callbacks = list(callbacks)
    cfg = config
    out_dir = Path(cfg.run.out_dir) if cfg.run.out_dir else default_out_dir(cfg)
    out_dir = out_dir.expanduser().resolve()
    ckpt_root = out_dir / "checkpoints"
    device = resolve_device(cfg.run.device)
    amp = autocast_dtype(cfg.run.precision, device)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)

    # everything that can fail on bad input happens before the first step
    preflight(cfg)
    seed_everything(cfg.seed)
    train, val = load_splits(cfg)
    probe = train_probe(train, val, cfg.eval.probe_queries, cfg.eval.probe_seed)
    model, transform, tokenizer = build_model(cfg.model, device)
    transform = image_transform(transform, cfg.data.preprocess, cfg.data.target_pad_ratio)
    optimizer = build_optimizer(model, cfg)
    loader_gen = torch.Generator()
    train_data = TripletData(train, transform, seed=cfg.seed)
    drop_last = len(train_data) > cfg.optim.batch_size  # keep a tiny set's only batch
    loader = DataLoader(train_data, batch_size=cfg.optim.batch_size, shuffle=True,
                        drop_last=drop_last, collate_fn=_Collate(tokenizer),
                        num_workers=cfg.data.num_workers, generator=loader_gen)
    steps_per_epoch = len(loader)
    scheduler = build_scheduler(optimizer, cfg, steps_per_epoch * cfg.optim.epochs)

    history = History(config=cfg, out_dir=out_dir)
    start_epoch, step = 0, 0
    resume = _find_resume(cfg, ckpt_root)
    if resume is not None:
        path, state = resume
        _check_same_run(state["config"], cfg)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        history.epochs = list(state["history"])
        history.resumed_from = start_epoch
        ckpt.set_rng_state(state["rng"])
        log.info("resumed from %s (epoch %d, step %d)", path, start_epoch, step)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    # the metrics file mirrors the history: epochs re-run after a resume are not doubled
    _write_jsonl(out_dir / "metrics.jsonl", history.epochs)
    log.info("train %d triplets (%d steps/epoch), val %d queries / %d images, probe %d / %d, "
             "%s on %s", len(train.queries), steps_per_epoch, len(val.queries),
             len(val.gallery), len(probe.queries), len(probe.gallery),
             f"{cfg.perturb.kind}(radius={cfg.perturb.radius:g})", device)

    epochs = cfg.optim.epochs
    for epoch in range(start_epoch + 1, epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        # a generator seeded per epoch: the data order does not depend on resume points
        loader_gen.manual_seed(cfg.seed * 100_003 + epoch)
        train_data.set_epoch(epoch)
        sums: dict[str, float] = {}
        n_steps, second_pass = 0, 0.0
        bar = tqdm(loader, desc=f"epoch {epoch}/{epochs}", leave=False,
                   disable=None if cfg.run.progress else True)  # None: off if not a tty
        for batch in bar:
            two_pass = optimizer.needs_second_pass
            terms, pass_times = train_step(model, optimizer, batch, device, amp,
                                           cfg.optim.grad_clip, where=f"epoch {epoch}, "
                                           f"step {step + 1}")
            scheduler.step()
            step += 1
            n_steps += 1
            if two_pass:
                second_pass += pass_times[1]
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            bar.set_postfix(loss=f"{float(terms['loss']):.3f}")
        t_train = time.perf_counter() - t_epoch

        metrics: dict[str, float] = {
            "epoch": float(epoch), "step": float(step),
            "lr": float(scheduler.get_last_lr()[0]),
            "logit_scale": float(model.logit_scale().detach()),
        }
        metrics.update({f"train/{k}": v / max(n_steps, 1) for k, v in sums.items()})
        is_last = epoch == epochs
        t_eval = 0.0
        if epoch % cfg.eval.every == 0 or is_last:
            t0 = time.perf_counter()
            val_m = evaluate_model(model, val, transform, tokenizer, cfg, device, amp)
            probe_m = evaluate_model(model, probe, transform, tokenizer, cfg, device, amp)
            metrics.update({f"val/{k}": v for k, v in val_m.items()})
            metrics.update({f"probe/{k}": v for k, v in probe_m.items()})
            metrics.update({f"gap/{k}": v for k, v in generalization_gap(probe_m, val_m).items()})
            if is_last and cfg.eval.sharpness:
                metrics.update(measure_sharpness(model, probe, transform, tokenizer, cfg,
                                                 device, amp, probe_m["loss"]))
            t_eval = time.perf_counter() - t0
        metrics.update({"time/epoch": time.perf_counter() - t_epoch, "time/train": t_train,
                        "time/second_pass": second_pass, "time/eval": t_eval})
        history.epochs.append(metrics)

        saved = None
        if epoch % cfg.run.checkpoint_every == 0 or is_last:
            saved = ckpt.save_checkpoint({
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "step": step,
                "rng": ckpt.rng_state(),
                "config": cfg.to_dict(),
                "history": history.epochs,
            }, ckpt.checkpoint_dir(ckpt_root, epoch))
            ckpt.prune_checkpoints(ckpt_root, cfg.run.keep_checkpoints)
        _append_jsonl(out_dir / "metrics.jsonl", metrics)
        log.info("%s", epoch_line(metrics, epochs))
        report = EpochReport(epoch=epoch, metrics=dict(metrics), checkpoint=saved,
                             is_last=is_last, config=cfg)
        for cb in callbacks:
            cb(report)
    return history


def _write_jsonl(path: Path, rows: list[dict[str, float]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    os.replace(tmp, path)


def _append_jsonl(path: Path, row: dict[str, float]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def epoch_line(m: dict[str, float], epochs: int) -> str:
    """One summary line per epoch."""
    parts = [f"epoch {int(m['epoch'])}/{epochs}", f"loss {m.get('train/loss', float('nan')):.3f}"]
    if "val/headline" in m:
        rec = [k for k in m if k.startswith("val/R@")]
        parts.append("val " + " ".join(f"{k[4:]} {m[k]:.1f}" for k in rec))
        parts.append("probe " + " ".join(f"{k[4:]} {m['probe/' + k[4:]]:.1f}" for k in rec))
        parts.append(f"gap {m['gap/headline']:+.1f} (loss {m['gap/loss']:+.3f})")
    if "sharpness/mean" in m:
        parts.append(f"sharpness {m['sharpness/mean']:.4f}")
    parts.append(f"{m['time/epoch']:.1f}s (2nd pass {m['time/second_pass']:.1f}s)")
    return " | ".join(parts)
