from __future__ import annotations

import pytest
import yaml

from wrf4cir.config import (
    Config,
    ConfigError,
    config_keys,
    flatten,
    load_config,
    save_config,
)


def write(tmp_path, text: str):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_defaults_are_the_embedded_offline_default():
    cfg = Config()
    assert cfg.model.name == "wrf-tiny-vit" and cfg.model.pretrained == "synthetic"
    assert cfg.data.name == "synthetic-shapes"
    assert cfg.perturb.kind == "wrf" and cfg.perturb.radius == 1e-3


def test_yaml_values_and_overrides_land_in_typed_fields(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 2e-5\n  betas: [0.9, 0.999]\nperturb:\n  kind: sam\n")
    cfg = load_config(path, ["perturb.radius=0.05", "data.max_triplets=100", "run.threads=1"])
    assert cfg.optim.lr == 2e-5 and isinstance(cfg.optim.lr, float)  # YAML reads 2e-5 as str
    assert cfg.optim.betas == (0.9, 0.999)
    assert cfg.perturb.kind == "sam" and cfg.perturb.radius == 0.05
    assert cfg.data.max_triplets == 100 and cfg.run.threads == 1


def test_round_trip_through_the_saved_yaml(tmp_path):
    cfg = load_config(None, ["perturb.kind=random", "optim.epochs=3", "model.fusion=combiner"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("text,key", [
    ("optim:\n  lrr: 1\n", "optim.lrr"),
    ("modle: {}\n", "modle"),
    ("optim:\n  lr: fast\n", "optim.lr"),
    ("optim:\n  lr: -1\n", "optim.lr"),
    ("optim:\n  epochs: 2.5\n", "optim.epochs"),
    ("optim:\n  batch_size: 1\n", "optim.batch_size"),
    ("perturb:\n  radius: -0.001\n", "perturb.radius"),
    ("perturb:\n  kind: adversarial\n", "perturb.kind"),
    ("perturb:\n  modules: [image, decoder]\n", "perturb.modules[1]"),
    ("perturb:\n  modules: []\n", "perturb.modules"),
    ("model:\n  freeze_image: 'yes'\n", "model.freeze_image"),
    ("model:\n  fusion: concat\n", "model.fusion"),
    ("data:\n  max_triplets: 0\n", "data.max_triplets"),
    ("optim:\n  betas: [0.9]\n", "optim.betas"),
    ("optim: 3\n", "optim"),
    ("run:\n  device: tpu\n", "run.device"),
    ("seed: -1\n", "seed"),
])
def test_bad_values_name_the_key(tmp_path, text, key):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert str(err.value).startswith(f"{key}:"), str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("text,needle", [
    ("optim: [unclosed\n", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping"),
    ("!!python/object/apply:os.system ['echo hacked']\n", "not valid YAML"),
])
def test_bad_files_are_refused_with_the_file_named(tmp_path, text, needle):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and needle in str(err.value)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])


def test_flat_keys_cover_every_leaf():
    keys = config_keys()
    assert {"optim.lr", "perturb.radius", "model.name", "data.max_triplets", "seed"} <= set(keys)
    flat = flatten(Config())
    assert flat["perturb.modules"] == ["image", "text", "fusion"]
    assert yaml.safe_load(yaml.safe_dump(flat)) == flat


@pytest.mark.parametrize("name", ["synthetic-shapes", "synthetic-scenes", "fashioniq", "cirr"])
def test_example_configs_load(name):
    from pathlib import Path

    cfg = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
    assert cfg.data.name == name
