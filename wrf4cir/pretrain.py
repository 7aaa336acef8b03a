"""Offline pre-training of the tiny backbones (``model.pretrained: synthetic``).

No public weights can be downloaded on an offline machine, and fine-tuning from random
weights would not be "fine-tuning a pre-trained model". So the embedded default first
trains the tiny open_clip architectures contrastively (the CLIP loss) on synthetic
image-caption pairs, caches the result keyed by a hash of everything that shaped it, and
hands open_clip the file as an ordinary ``pretrained=<path>`` checkpoint: the same code
path as ``pretrained: openai`` on a machine with internet.

Cache layout: ``<cache>/pretrained/<model>-<digest>.pt`` (an open_clip state dict) and
``<model>-<digest>.json`` (the pre-training config and its final metrics).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from wrf4cir.data.synthetic import generate_caption_pairs, load_caption_pairs
from wrf4cir.losses import clip_loss
from wrf4cir.models.factory import CONFIG_DIR, create_backbone
from wrf4cir.paths import cache_dir

log = logging.getLogger(__name__)

# bump when the pre-training code changes what it produces, so old caches are not reused
PRETRAIN_VERSION = 1


@dataclass(frozen=True)
class PretrainConfig:
    pairs: int = 4000  # synthetic image-caption pairs to train on
    held_out: int = 500  # extra pairs kept out of training, for the retrieval check
    epochs: int = 5
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 30
    seed: int = 0
    image_size: int = 64  # size the synthetic images are rendered at
    threads: int | None = None  # torch CPU threads; null: torch's default

    def digest(self, model: str) -> str:
        """Hash of this config, the architecture's definition and the code version."""
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "threads"}
        arch = CONFIG_DIR / f"{model}.json"
        blob = json.dumps({"config": fields, "model": model, "version": PRETRAIN_VERSION,
                           "arch": arch.read_text() if arch.is_file() else None},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


DEFAULT_PRETRAIN = PretrainConfig()


def pretrained_path(model: str, config: PretrainConfig = DEFAULT_PRETRAIN) -> Path:
    """Where the cached checkpoint for ``model`` pre-trained with ``config`` lives."""
    return cache_dir() / "pretrained" / f"{model}-{config.digest(model)}.pt"


def ensure_pretrained(model: str, config: PretrainConfig = DEFAULT_PRETRAIN,
                      force: bool = False) -> Path:
    """Return the cached checkpoint for ``model``, pre-training it first if needed.

    A file lock makes concurrent callers (parallel trials) wait for one pre-training
    instead of each running their own.
    """
    path = pretrained_path(model, config)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file() and not force:
            return path
        log.info("pre-training %s on synthetic captions (cached at %s)", model, path)
        state, report = pretrain(model, config)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        sidecar = path.with_suffix(".json")
        sidecar.write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    return path


class _Pairs(Dataset):
    def __init__(self, pairs: list[tuple[Path, str]], transform: Any) -> None:
        self.pairs, self.transform = pairs, transform

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        path, caption = self.pairs[i]
        with Image.open(path) as im:
            return self.transform(im.convert("RGB")), caption


def pretrain(model: str, config: PretrainConfig = DEFAULT_PRETRAIN
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Train ``model`` from scratch with the CLIP loss on synthetic pairs.

    Returns the open_clip state dict and a report (config, held-out image->text and
    text->image R@1 on ``held_out`` pairs, loss, wall time).
    """
    t_start = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    root = cache_dir() / "data" / (f"captions-{config.pairs + config.held_out}-"
                                   f"s{config.seed}-{config.image_size}px")
    generate_caption_pairs(root, config.pairs + config.held_out, seed=config.seed,
                           image_size=config.image_size)
    pairs = load_caption_pairs(root)
    train_pairs, held_out = pairs[: config.pairs], pairs[config.pairs:]
    clip, transform, tokenizer = create_backbone(model, pretrained=None)
    loader = DataLoader(_Pairs(train_pairs, transform), batch_size=config.batch_size,
                        shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(config.seed))
    total = max(1, len(loader) * config.epochs)
    decay = [p for p in clip.parameters() if p.ndim >= 2]
    no_decay = [p for p in clip.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=config.lr, betas=(0.9, 0.98), eps=1e-6)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, total - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    clip.train()
    loss = float("nan")
    for epoch in range(config.epochs):
        bar = tqdm(loader, desc=f"pretrain {model} {epoch + 1}/{config.epochs}", leave=False,
                   disable=None)  # None: no bar when stderr is not a terminal
        for images, captions in bar:
            image = clip.encode_image(images, normalize=True)
            text = clip.encode_text(tokenizer(list(captions)), normalize=True)
            out = clip_loss(image, text, clip.logit_scale.exp().clamp(max=100))
            opt.zero_grad(set_to_none=True)
            out["loss"].backward()
            opt.step()
            sched.step()
            loss = float(out["loss"].detach())
            bar.set_postfix(loss=f"{loss:.3f}")
        log.info("pretrain %s epoch %d/%d loss %.3f", model, epoch + 1, config.epochs, loss)
    report = {"model": model, "config": dataclasses.asdict(config), "final_loss": loss,
              **held_out_retrieval(clip, transform, tokenizer, held_out),
              "seconds": time.perf_counter() - t_start, "version": PRETRAIN_VERSION}
    log.info("pretrain %s done in %.0fs: held-out image->text R@1 %.1f", model,
             report["seconds"], report["image_to_text_R@1"])
    return clip.state_dict(), report


@torch.inference_mode()
def held_out_retrieval(clip: torch.nn.Module, transform: Any, tokenizer: Any,
                       pairs: list[tuple[Path, str]]) -> dict[str, float]:
    """Image->text and text->image R@1 (%) among the held-out pairs."""
    if len(pairs) < 2:
        return {"image_to_text_R@1": float("nan"), "text_to_image_R@1": float("nan")}
    clip.eval()
    loader = DataLoader(_Pairs(pairs, transform), batch_size=256)
    images, texts = [], []
    for batch, captions in loader:
        images.append(clip.encode_image(batch, normalize=True))
        texts.append(clip.encode_text(tokenizer(list(captions)), normalize=True))
    sim = torch.cat(images) @ torch.cat(texts).T
    # identical captions describe identical scenes: count a hit on any matching caption
    captions = [c for _, c in pairs]
    same = torch.tensor([[a == b for b in captions] for a in captions])
    i2t = same[torch.arange(len(pairs)), sim.argmax(1)].float().mean() * 100
    t2i = same[sim.argmax(0), torch.arange(len(pairs))].float().mean() * 100
    return {"image_to_text_R@1": float(i2t), "text_to_image_R@1": float(t2i)}
