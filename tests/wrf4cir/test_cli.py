from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.conftest import TINY_RECIPE
from wrf4cir.cli import main


def write_config(tmp_path, **extra) -> str:
    cfg = {"model": {"pretrained": None},
           "data": {"name": "synthetic-scenes", "recipe": dict(TINY_RECIPE)},
           "optim": {"epochs": 1, "batch_size": 8},
           "run": {"progress": False}}
    for k, v in extra.items():
        cfg.setdefault(k, {}).update(v)
    path = tmp_path / "train.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_train_runs_and_prints_one_line_per_epoch(tmp_path, capsys, caplog):
    caplog.set_level("INFO", logger="wrf4cir")
    out = tmp_path / "run"
    code = main(["train", "--config", write_config(tmp_path), "--out", str(out),
                 "--set", "optim.epochs=2", "--set", "perturb.kind=sam",
                 "--set", "perturb.radius=0.05"])
    assert code == 0
    assert "done: val headline" in capsys.readouterr().out
    epoch_lines = [r.message for r in caplog.records if r.message.startswith("epoch ")]
    assert len(epoch_lines) == 2 and "gap" in epoch_lines[0] and "val R@1" in epoch_lines[0]
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    assert yaml.safe_load((out / "config.yaml").read_text())["perturb"]["kind"] == "sam"


@pytest.mark.parametrize("args,needle", [
    (["--set", "optim.lrr=1"], "optim.lrr: unknown key"),
    (["--set", "perturb.radius=-1"], "perturb.radius"),
    (["--set", "model.name=ViT-Z-1"], "model.name"),
    (["--set", "data.name=nope"], "data.name"),
    (["--set", "model.pretrained=/missing/w.pt"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    code = main(["train", "--config", write_config(tmp_path), "--out", str(out), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert needle in err and len(err.splitlines()) == 1, err
    assert not out.exists()


def test_real_process_exit_code_and_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  epochs: many\n")
    proc = subprocess.run([sys.executable, "-m", "wrf4cir.cli", "train", "--config", str(bad)],
                          capture_output=True, text=True, env=os.environ.copy())
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("wrf4cir: error: optim.epochs: expected an integer, "
                                   "got 'many'")


def test_make_data_writes_the_documented_layout(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["make-data", "--name", "synthetic-shapes", "--out", str(out),
                 "--train-triplets", "40", "--val-triplets", "10", "--seed", "3"]) == 0
    header = json.loads((out / "dataset.json").read_text())
    assert header["recipe"]["seed"] == 3 and header["recipe"]["train_triplets"] == 40
    assert (out / "splits" / "train.json").is_file() and (out / "captions.json").is_file()
    assert main(["make-data", "--name", "fashioniq", "--out", str(tmp_path / "x")]) == 2


def test_list_names_models_and_datasets(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    assert "wrf-tiny-vit" in text and "ViT-B-32" in text and "synthetic-scenes" in text
