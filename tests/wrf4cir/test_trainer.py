from __future__ import annotations

import json

import pytest
import torch
import yaml

from tests.conftest import tiny_config
from wrf4cir import NonFiniteLossError, fit
from wrf4cir.checkpoint import list_checkpoints, load_checkpoint
from wrf4cir.config import ConfigError
from wrf4cir.data import DataError
from wrf4cir.models import ModelError


class Interrupt(Exception):
    pass


def stop_after(epoch: int):
    def callback(report):
        if report.epoch == epoch:
            raise Interrupt

    return callback


def test_fit_reports_recall_gap_and_timing_every_epoch(tmp_path):
    reports = []
    history = fit(tiny_config(tmp_path / "run"), callbacks=[reports.append])
    assert [r.epoch for r in reports] == [1, 2] and reports[-1].is_last
    assert len(history.epochs) == 2
    m = history.final
    for key in ("train/loss", "val/R@1", "val/R@50", "val/headline", "val/loss",
                "probe/R@1", "probe/headline", "probe/loss", "gap/R@1", "gap/headline",
                "gap/loss", "time/epoch", "time/second_pass", "lr", "logit_scale"):
        assert key in m, key
    assert m["gap/headline"] == pytest.approx(m["probe/headline"] - m["val/headline"])
    assert m["gap/loss"] == pytest.approx(m["val/loss"] - m["probe/loss"])
    # the train probe is ranked exactly like val: same gallery size, <= as many queries
    assert m["probe/gallery"] == m["val/gallery"]
    assert 0 < m["probe/queries"] <= m["val/queries"]
    assert m["time/second_pass"] > 0  # wrf takes a second pass
    assert 0 <= m["val/R@1"] <= m["val/R@5"] <= m["val/R@10"] <= m["val/R@50"] <= 100
    # what the run leaves on disk
    out = history.out_dir
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1.0, 2.0]
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["perturb"]["kind"] == "wrf" and saved["optim"]["epochs"] == 2
    assert reports[-1].checkpoint == list_checkpoints(out / "checkpoints")[-1]


def test_training_lowers_the_training_loss(tmp_path):
    history = fit(tiny_config(tmp_path / "run", optim={"epochs": 4},
                              perturb={"kind": "none"}))
    losses = [e["train/loss"] for e in history.epochs]
    assert losses[-1] < losses[0]


def test_radius_zero_is_exactly_the_plain_optimizer(tmp_path):
    plain = fit(tiny_config(tmp_path / "a", perturb={"kind": "none"}))
    zero = fit(tiny_config(tmp_path / "b", perturb={"kind": "wrf", "radius": 0.0}))
    strip = [{k: v for k, v in e.items() if not k.startswith("time/")} for e in plain.epochs]
    assert strip == [{k: v for k, v in e.items() if not k.startswith("time/")}
                     for e in zero.epochs]
    assert zero.final["time/second_pass"] == 0


@pytest.mark.parametrize("sections", [
    {"perturb": {"kind": "wrf", "radius": 1e-2}},
    {"perturb": {"kind": "random", "radius": 1e-2}, "model": {"fusion": "combiner"}},
])
def test_resume_continues_to_the_identical_result(tmp_path, sections):
    """Interrupted after epoch 1 and resumed == uninterrupted, bit for bit (CPU)."""
    epochs = {"optim": {"epochs": 3, "batch_size": 8, "lr": 1e-3}}
    full = fit(tiny_config(tmp_path / "full", **sections, **epochs))

    cfg = tiny_config(tmp_path / "cut", **sections, **epochs)
    with pytest.raises(Interrupt):
        fit(cfg, callbacks=[stop_after(1)])
    assert [c.name for c in list_checkpoints(tmp_path / "cut" / "checkpoints")] == ["epoch-0001"]
    resumed_cfg = tiny_config(tmp_path / "cut", **sections, **epochs,
                              run={"resume": "auto", "out_dir": str(tmp_path / "cut"),
                                   "progress": False})
    resumed = fit(resumed_cfg)
    assert resumed.resumed_from == 1

    def strip(h):
        return [{k: v for k, v in e.items() if not k.startswith("time/")} for e in h.epochs]

    assert strip(resumed) == strip(full)
    a = load_checkpoint(list_checkpoints(tmp_path / "full" / "checkpoints")[-1])["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "cut" / "checkpoints")[-1])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1.0, 2.0, 3.0]


def test_resume_with_a_different_config_is_refused(tmp_path):
    with pytest.raises(Interrupt):
        fit(tiny_config(tmp_path / "run"), callbacks=[stop_after(1)])
    cfg = tiny_config(tmp_path / "run", perturb={"radius": 0.5},
                      run={"resume": "auto", "out_dir": str(tmp_path / "run"), "progress": False})
    with pytest.raises(ConfigError, match="perturb.radius"):
        fit(cfg)


def test_non_finite_loss_stops_with_the_step_named(tmp_path):
    cfg = tiny_config(tmp_path / "run", optim={"optimizer": "sgd", "lr": 1e12,
                                               "schedule": "constant", "epochs": 3},
                      perturb={"kind": "none"})
    with pytest.raises(NonFiniteLossError, match=r"epoch \d+, step \d+"):
        fit(cfg)


def test_sharpness_is_measured_at_the_end_and_leaves_the_weights_alone(tmp_path):
    common = {"optim": {"epochs": 4, "batch_size": 8, "lr": 1e-3}, "perturb": {"kind": "none"}}
    h = fit(tiny_config(tmp_path / "a", eval={"sharpness": True, "sharpness_samples": 2,
                                              "sharpness_radius": 1.0}, **common))
    assert "sharpness/mean" in h.final and "sharpness/mean" not in h.epochs[0]
    # weights moved by their own norm lose what training learned: the loss rises
    assert h.final["sharpness/mean"] > 0
    plain = fit(tiny_config(tmp_path / "b", **common))
    a = load_checkpoint(list_checkpoints(tmp_path / "a" / "checkpoints")[-1])["model"]
    b = load_checkpoint(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.final["val/headline"] == h.final["val/headline"]


@pytest.mark.parametrize("sections,error,needle", [
    ({"model": {"name": "ViT-Q-99"}}, ModelError, "model.name"),
    ({"model": {"pretrained": "/no/such/weights.pt"}}, ModelError, "does not exist"),
    ({"data": {"name": "imagenet-cir"}}, DataError, "data.name"),
    ({"run": {"device": "cuda:3"}}, ConfigError, "run.device"),
])
def test_bad_input_fails_before_any_work(tmp_path, sections, error, needle):
    if "run" in sections and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    sections.setdefault("run", {}).update(out_dir=str(tmp_path / "run"), progress=False)
    with pytest.raises(error, match=needle):
        fit(tiny_config(tmp_path / "run", **sections))
    assert not (tmp_path / "run").exists()


def test_perturbing_only_the_fusion_head_leaves_the_encoders_alone(tmp_path):
    h = fit(tiny_config(tmp_path / "run", model={"fusion": "combiner", "freeze_image": True,
                                                 "freeze_text": True},
                        perturb={"modules": ["fusion"], "radius": 1e-2},
                        optim={"epochs": 1, "batch_size": 8, "lr": 1e-3}))
    assert h.final["time/second_pass"] > 0


def test_fashioniq_release_trains_jointly_and_reports_per_category(tmp_path):
    from tests.wrf4cir.release_fixtures import write_fashioniq

    root = write_fashioniq(tmp_path / "fashionIQ")
    h = fit(tiny_config(tmp_path / "run", data={"name": "fashioniq", "root": str(root),
                                                "recipe": None, "preprocess": "target_pad"},
                        optim={"epochs": 1, "batch_size": 8, "lr": 1e-3}))
    m = h.final
    for cat in ("dress", "shirt", "toptee"):
        for key in ("R@10", "R@50", "headline"):
            assert f"val/{cat}/{key}" in m and f"probe/{cat}/{key}" in m
            assert f"gap/{cat}/{key}" in m
    mean10 = sum(m[f"val/{c}/R@10"] for c in ("dress", "shirt", "toptee")) / 3
    mean50 = sum(m[f"val/{c}/R@50"] for c in ("dress", "shirt", "toptee")) / 3
    assert m["val/R@10"] == pytest.approx(mean10)
    assert m["val/headline"] == pytest.approx((mean10 + mean50) / 2)
    assert "val/R@1" not in m  # FashionIQ reports R@10 and R@50 only


def test_cirr_release_trains_and_reports_subset_recall(tmp_path):
    from tests.wrf4cir.release_fixtures import write_cirr

    root = write_cirr(tmp_path / "cirr")
    h = fit(tiny_config(tmp_path / "run", data={"name": "cirr", "root": str(root),
                                                "recipe": None},
                        optim={"epochs": 1, "batch_size": 8, "lr": 1e-3}))
    m = h.final
    for key in ("R@1", "R@5", "R@10", "R@50", "Rsubset@1", "Rsubset@2", "Rsubset@3"):
        assert f"val/{key}" in m and f"probe/{key}" in m and f"gap/{key}" in m
    assert m["val/headline"] == pytest.approx((m["val/R@5"] + m["val/Rsubset@1"]) / 2)


def test_a_missing_release_root_fails_before_any_work(tmp_path):
    with pytest.raises(DataError, match="not a directory"):
        fit(tiny_config(tmp_path / "run", data={"name": "cirr", "root": str(tmp_path / "nope"),
                                                "recipe": None}))
    assert not (tmp_path / "run").exists()
