from __future__ import annotations

import json
import shutil

import torch

from tests.conftest import tiny_config
from wrf4cir import fit
from wrf4cir.config import ModelConfig
from wrf4cir.models import build_model
from wrf4cir.pretrain import DEFAULT_PRETRAIN, PretrainConfig, ensure_pretrained, pretrained_path

TINY = PretrainConfig(pairs=64, held_out=16, epochs=2, batch_size=16, warmup_steps=2)


def test_pretrain_caches_by_config_and_reuses(tmp_path):
    path = ensure_pretrained("wrf-tiny-rn", TINY)
    assert path == pretrained_path("wrf-tiny-rn", TINY) and path.is_file()
    report = json.loads(path.with_suffix(".json").read_text())
    assert report["config"]["pairs"] == 64 and 0 <= report["image_to_text_R@1"] <= 100
    stamp = path.stat().st_mtime_ns
    assert ensure_pretrained("wrf-tiny-rn", TINY) == path
    assert path.stat().st_mtime_ns == stamp  # reused, not retrained
    other = PretrainConfig(pairs=64, held_out=16, epochs=1, batch_size=16, warmup_steps=2)
    assert pretrained_path("wrf-tiny-rn", other) != path
    assert pretrained_path("wrf-tiny-vit", TINY) != path


def test_pretraining_learns_something():
    """The CLIP loss falls below chance: the checkpoint is a pre-trained model."""
    cfg = PretrainConfig(pairs=256, held_out=64, epochs=3, batch_size=32, warmup_steps=2,
                         lr=2e-3)
    report = json.loads(ensure_pretrained("wrf-tiny-rn", cfg).with_suffix(".json").read_text())
    chance = float(torch.log(torch.tensor(32.0)))
    assert report["final_loss"] < chance


def test_synthetic_tag_loads_the_cached_checkpoint_through_open_clip(tmp_path):
    small = ensure_pretrained("wrf-tiny-vit", TINY)
    # put it where the default recipe's checkpoint lives, as if pre-trained by default
    target = pretrained_path("wrf-tiny-vit", DEFAULT_PRETRAIN)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(small, target)
    model, _, _ = build_model(ModelConfig(name="wrf-tiny-vit", pretrained="synthetic"))
    state = torch.load(small, weights_only=True)
    assert all(torch.equal(model.clip.state_dict()[k], v) for k, v in state.items())
    # and a fit starts from it
    h = fit(tiny_config(tmp_path / "run", model={"pretrained": "synthetic"},
                        optim={"epochs": 1, "batch_size": 8}))
    assert h.final["val/headline"] >= 0
