"""Tests of the CIRR loader (wrf4cir.data.cirr) on release-layout fixtures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wrf4cir.data.cirr  # noqa: F401  (registers "cirr")
from tests.conftest import read_json
from tests.wrf4cir.release_fixtures import cirr_name, image_color, write_cirr
from wrf4cir.data.base import CIRDataset, DataError, Query, build_dataset
from wrf4cir.data.cirr import CIRR, build_cirr

N = 18  # images per split in the fixture: 3 img_sets of 6, 2 queries each


@pytest.fixture(scope="module")
def cirr(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cirr(tmp_path_factory.mktemp("cirr") / "release", n_images=N)


@pytest.fixture
def fresh(cirr: Path, tmp_path: Path) -> Path:
    """A private copy of the release, for tests that damage it."""
    return Path(shutil.copytree(cirr, tmp_path / "release"))


def caps(root: Path, split: str) -> list[dict[str, Any]]:
    return read_json(root / "cirr" / "captions" / f"cap.rc2.{split}.json")


def split_map(root: Path, split: str) -> dict[str, str]:
    return read_json(root / "cirr" / "image_splits" / f"split.rc2.{split}.json")


# --------------------------------------------------------------------------- parsing


def test_val_entry_parsed_by_hand(cirr):
    ds = build_cirr(cirr, "val")
    members = ("dev-100-0-img0", "dev-101-1-img1", "dev-102-0-img0", "dev-103-1-img1",
               "dev-104-0-img0", "dev-105-1-img1")
    assert ds.queries[0] == Query(reference="dev-100-0-img0", target="dev-102-0-img0",
                                  text="The dog is now lying on the grass.", pair_id=1049,
                                  members=members)
    assert ds.queries[1].pair_id == 1056 and ds.queries[1].target == "dev-105-1-img1"
    assert ds.img_set_ids[:3] == [4, 4, 5]
    assert ds.target_soft[0] == {"dev-102-0-img0": 1.0, "dev-101-1-img1": 0.5,
                                 "dev-104-0-img0": -1.0}
    assert ds.text_choices(0) == ("The dog is now lying on the grass.",)
    assert (ds.name, ds.protocol, ds.split, ds.parts) == ("cirr", "cirr", "val", None)
    assert ds.root == cirr.resolve() and isinstance(ds, CIRDataset)


@pytest.mark.parametrize("split", ["train", "val"])
def test_queries_follow_the_caption_file(cirr, split):
    ds = build_cirr(cirr, split)
    recs = caps(cirr, split)
    assert len(ds) == len(recs) == 2 * N // 6
    for i, (q, rec) in enumerate(zip(ds.queries, recs, strict=True)):
        assert q.pair_id == rec["pairid"] and isinstance(q.pair_id, int)
        assert (q.reference, q.target, q.text) == (rec["reference"], rec["target_hard"],
                                                   rec["caption"])
        assert q.members == tuple(rec["img_set"]["members"]) and len(q.members) == 6
        assert ds.img_set_ids[i] == rec["img_set"]["id"]
        assert ds.target_soft[i] == rec["target_soft"]


def test_test1_has_no_targets_and_test_is_an_alias(cirr):
    ds = build_cirr(cirr, "test1")
    alias = build_cirr(cirr, "test")
    assert ds.split == alias.split == "test1"
    assert ds.queries == alias.queries and len(ds) == 2 * N // 6
    assert all(q.target is None for q in ds.queries)
    assert all(s == {} for s in ds.target_soft)
    assert "target_hard" not in caps(cirr, "test1")[0]
    assert ds.queries[0].reference == "test1-100-0-img0"
    assert ds.queries[0].members[0] == "test1-100-0-img0"


@pytest.mark.parametrize("split", ["train", "val", "test1"])
def test_gallery_is_every_image_in_split_file_order(cirr, split):
    ds = build_cirr(cirr, split)
    keys = list(split_map(cirr, split))
    assert ds.gallery == keys and len(keys) == N
    assert keys != sorted(keys)  # the fixture's order is not sorted, so this tests order


# --------------------------------------------------------------------------- images


def test_image_returns_the_written_pixels(cirr):
    train = build_cirr(cirr, "train")
    name = cirr_name("train", 5)
    assert split_map(cirr, "train")[name] == f"./train/35/{name}.png"  # a shard folder
    assert train.image_path(name) == cirr.resolve() / "train" / "35" / f"{name}.png"
    img = train.image(name)
    assert img.mode == "RGB" and img.size == (32, 32)
    assert img.getpixel((3, 30)) == image_color(name)
    val = build_cirr(cirr, "val")
    assert val.image("dev-107-1-img1").getpixel((0, 0)) == image_color("dev-107-1-img1")
    with pytest.raises(DataError, match="split.rc2.val.json"):
        val.image(name)  # a train image is not in the val split file


def test_without_validation_a_missing_image_fails_when_read(fresh):
    name = cirr_name("val", 4)
    (fresh / "dev" / f"{name}.png").unlink()
    ds = build_cirr(fresh, "val", validate_images=False)
    with pytest.raises(DataError, match=f"{name}.png"):
        ds.image(name)


# --------------------------------------------------------------------------- subsample


def test_max_triplets_subsamples_train_only(cirr):
    full = build_cirr(cirr, "train")
    ds = build_cirr(cirr, "train", max_triplets=4, seed=1)
    assert len(ds) == 4 and ds.queries == build_cirr(cirr, "train", max_triplets=4,
                                                     seed=1).queries
    kept = [full.queries.index(q) for q in ds.queries]
    assert kept == sorted(kept)
    assert ds.img_set_ids == [full.img_set_ids[i] for i in kept]
    assert ds.target_soft == [full.target_soft[i] for i in kept]
    assert ds.gallery == full.gallery  # the gallery is not subsampled
    seeds = {tuple(q.pair_id for q in build_cirr(cirr, "train", max_triplets=4,
                                                  seed=s).queries) for s in range(5)}
    assert len(seeds) > 1  # the seed picks the sample
    assert len(build_cirr(cirr, "val", max_triplets=4)) == 2 * N // 6


def test_fixture_is_deterministic(cirr, tmp_path):
    again = write_cirr(tmp_path / "again", n_images=N)
    files = sorted(p.relative_to(cirr) for p in cirr.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 6 + 3 * N
    assert all((cirr / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_registered_and_built_by_name(cirr):
    ds = build_dataset("cirr", cirr, "val", validate_images=False)
    assert isinstance(ds, CIRR) and len(ds) == 6


# --------------------------------------------------------------------------- errors


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(read_json(path))))


def _entry0(change: Callable[[dict], None]) -> Callable[[list], list]:
    def apply(entries: list) -> list:
        change(entries[0])
        return entries
    return apply


CAP = "cirr/captions/cap.rc2.val.json"
SPLIT = "cirr/image_splits/split.rc2.val.json"
TRAIN_CAP = "cirr/captions/cap.rc2.train.json"
VAL_IMAGE = "dev/dev-103-1-img1.png"

# (id, damage(root) -> None, builder options, text the message must contain)
ERROR_CASES: list[tuple[str, Callable[[Path], None], dict[str, Any], str]] = [
    ("missing-root", lambda r: shutil.rmtree(r), {}, "release"),
    ("missing-caption-file", lambda r: (r / CAP).unlink(), {}, "cap.rc2.val.json"),
    ("missing-split-file", lambda r: (r / "cirr/image_splits/split.rc2.test1.json").unlink(),
     {"split": "test"}, "split.rc2.test1.json"),
    ("caption-not-json", lambda r: _write(r / CAP, "[{'pairid': 1}]"), {}, "cap.rc2.val.json"),
    ("split-not-json", lambda r: _write(r / SPLIT, ""), {}, "split.rc2.val.json"),
    ("caption-not-a-list", lambda r: _edit_json(r / CAP, lambda d: {"entries": d}), {},
     "cap.rc2.val.json"),
    ("split-not-an-object", lambda r: _edit_json(r / SPLIT, list), {}, "split.rc2.val.json"),
    ("split-path-not-string", lambda r: _edit_json(
        r / SPLIT, lambda d: {**d, "dev-100-0-img0": 5}), {}, "split.rc2.val.json"),
    ("val-entry-without-target", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e.pop("target_hard"))), {}, "cap.rc2.val.json"),
    ("pairid-not-int", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e.update(pairid="1049"))), {}, "cap.rc2.val.json"),
    ("members-not-a-list", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e["img_set"].update(members="dev-100-0-img0"))), {},
     "cap.rc2.val.json"),
    ("reference-not-in-split", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e.update(reference="dev-999-0-img0"))), {},
     "split.rc2.val.json"),
    ("train-target-not-in-train-split", lambda r: _edit_json(
        r / TRAIN_CAP, _entry0(lambda e: e.update(target_hard="dev-100-0-img0"))),
     {"split": "train"}, "split.rc2.train.json"),
    ("member-not-in-split", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e["img_set"]["members"].__setitem__(5, "dev-x"))), {},
     "'dev-x'"),
    # DATASETS.md: in val, reference and target are both among the members
    ("val-target-not-a-member", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e.update(target_hard="dev-110-0-img0"))), {},
     "pairid 1049"),
    ("val-reference-not-a-member", lambda r: _edit_json(
        r / CAP, _entry0(lambda e: e["img_set"]["members"].remove("dev-100-0-img0"))), {},
     "pairid 1049"),
    ("duplicate-pairid", lambda r: _edit_json(
        r / CAP, lambda d: [d[0], {**d[1], "pairid": d[0]["pairid"]}]), {}, "pairid 1049"),
    ("missing-image", lambda r: (r / VAL_IMAGE).unlink(), {}, "dev-103-1-img1.png"),
    ("unreadable-image", lambda r: (r / VAL_IMAGE).write_bytes(b"\x89PNG garbage"), {},
     "dev-103-1-img1.png"),
    ("bad-split", lambda r: None, {"split": "dev"}, "'dev'"),
    ("recipe-given", lambda r: None, {"recipe": {"seed": 1}}, "recipe"),
    ("category-given", lambda r: None, {"category": "dress"}, "category"),
]


@pytest.mark.parametrize("damage, options, needle", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_bad_release_raises_a_data_error_naming_the_problem(fresh, damage, options, needle):
    damage(fresh)
    options = dict(options)
    split = options.pop("split", "val")
    with pytest.raises(DataError) as err:
        build_cirr(fresh, split, **options)
    assert needle in str(err.value)


def test_member_rule_names_the_caption_file_and_applies_to_val_only(fresh):
    _edit_json(fresh / TRAIN_CAP, _entry0(lambda e: e.update(target_hard="train-110-0-img0")))
    assert build_cirr(fresh, "train").queries[0].target == "train-110-0-img0"
    _edit_json(fresh / CAP, _entry0(lambda e: e.update(target_hard="dev-110-0-img0")))
    with pytest.raises(DataError, match="cap.rc2.val.json: pairid 1049"):
        build_cirr(fresh, "val")


def test_root_none_is_refused():
    with pytest.raises(DataError, match="root"):
        build_cirr(None, "val")
