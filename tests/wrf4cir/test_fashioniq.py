"""Tests of the FashionIQ loader (wrf4cir.data.fashioniq) on release-layout fixtures."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import wrf4cir.data.fashioniq  # noqa: F401  (registers "fashioniq")
from tests.conftest import read_json
from tests.wrf4cir.release_fixtures import (
    JPEG_TOLERANCE,
    fashioniq_name,
    image_color,
    write_fashioniq,
)
from wrf4cir.data.base import CIRDataset, DataError, build_dataset
from wrf4cir.data.fashioniq import CATEGORIES, FashionIQ, build_fashioniq, caption_forms

N = 12  # images and triplets per category and split in the fixture

# The fixture's captions and their texts, written out by hand.
VAL_TEXT = {
    ("is red.", " has long sleeves "): "Is red and has long sleeves",
    ("Is MORE Colorful?", "has a v-neck,"): "Is more colorful and has a v-neck",
    ("  is shorter and darker", "is solid white."): "Is shorter and darker and is solid white",
    ("has a graphic print", "Is Less Formal"): "Has a graphic print and Is Less Formal",
    ("is longer.", "has no pattern?"): "Is longer and has no pattern",
    ("is blue and has buttons", "is tighter, "): "Is blue and has buttons and is tighter",
}
TRAIN_FORMS = {
    ("is red.", " has long sleeves "): (
        "Is red and has long sleeves", "Has long sleeves and is red", "Is red",
        "Has long sleeves"),
    ("Is MORE Colorful?", "has a v-neck,"): (
        "Is more colorful and has a v-neck", "Has a v-neck and Is MORE Colorful",
        "Is more colorful", "Has a v-neck"),
    ("  is shorter and darker", "is solid white."): (
        "Is shorter and darker and is solid white", "Is solid white and is shorter and darker",
        "Is shorter and darker", "Is solid white"),
    ("has a graphic print", "Is Less Formal"): (
        "Has a graphic print and Is Less Formal", "Is less formal and has a graphic print",
        "Has a graphic print", "Is less formal"),
    ("is longer.", "has no pattern?"): (
        "Is longer and has no pattern", "Has no pattern and is longer", "Is longer",
        "Has no pattern"),
    ("is blue and has buttons", "is tighter, "): (
        "Is blue and has buttons and is tighter", "Is tighter and is blue and has buttons",
        "Is blue and has buttons", "Is tighter"),
}


@pytest.fixture(scope="module")
def fiq(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_fashioniq(tmp_path_factory.mktemp("fiq") / "release", n_images=N)


@pytest.fixture
def fresh(fiq: Path, tmp_path: Path) -> Path:
    """A private copy of the release, for tests that damage it."""
    return Path(shutil.copytree(fiq, tmp_path / "release"))


def caps(root: Path, cat: str, split: str) -> list[dict[str, Any]]:
    return read_json(root / "captions" / f"cap.{cat}.{split}.json")


def split_list(root: Path, cat: str, split: str) -> list[str]:
    return read_json(root / "image_splits" / f"split.{cat}.{split}.json")


# --------------------------------------------------------------------------- texts


def test_caption_forms_by_hand():
    assert caption_forms("is red.", " has long sleeves ") == (
        "Is red and has long sleeves", "Has long sleeves and is red", "Is red",
        "Has long sleeves")
    # str.capitalize lower-cases the rest; the second caption is used as stripped
    assert caption_forms("Is RED", "Has A Logo")[0] == "Is red and Has A Logo"
    assert caption_forms("Is RED", "Has A Logo")[1] == "Has a logo and Is RED"
    # '.?, ' stripped from both ends only, not inside
    assert caption_forms(", is red, not blue?.", "..ok ")[2:] == ("Is red, not blue", "Ok")


def test_val_queries_follow_the_caption_file(fiq):
    ds = build_fashioniq(fiq, "val", category="shirt")
    recs = caps(fiq, "shirt", "val")
    assert len(ds) == len(recs) == N
    for i, (q, rec) in enumerate(zip(ds.queries, recs, strict=True)):
        assert (q.reference, q.target) == (rec["candidate"], rec["target"])
        assert q.text == VAL_TEXT[tuple(rec["captions"])]
        assert ds.text_choices(i) == (q.text,)
        assert q.pair_id is None and q.members is None
    assert ds.name == "fashioniq" and ds.protocol == "fashioniq" and ds.split == "val"
    assert ds.categories == ("shirt",) and ds.root == fiq.resolve()
    assert isinstance(ds, CIRDataset)


def test_train_texts_are_drawn_from_the_four_forms_in_order(fiq):
    ds = build_fashioniq(fiq, "train")
    recs = [r for c in CATEGORIES for r in caps(fiq, c, "train")]
    drawn = set()
    for i, (q, rec) in enumerate(zip(ds.queries, recs, strict=True)):
        forms = TRAIN_FORMS[tuple(rec["captions"])]
        assert ds.text_choices(i) == forms
        assert q.text in forms
        drawn.add(forms.index(q.text))
    assert drawn == {0, 1, 2, 3}  # a real draw, not always the val form


def test_train_text_draw_is_seeded(fiq):
    def texts(seed: int, category: Any = None) -> list[str]:
        return [q.text for q in build_fashioniq(fiq, "train", seed=seed,
                                                category=category).queries]

    assert texts(0) == texts(0)
    assert texts(0) != texts(1)
    # one stream per category: a dress triplet's text does not depend on the others loaded
    assert texts(5, "dress") == texts(5)[:N]
    # val texts do not depend on the seed
    assert ([q.text for q in build_fashioniq(fiq, "val", seed=0).queries]
            == [q.text for q in build_fashioniq(fiq, "val", seed=9).queries])


# --------------------------------------------------------------------------- categories


def test_joint_categories_concatenate_and_keep_per_category_parts(fiq):
    ds = build_fashioniq(fiq, "val")
    singles = {c: build_fashioniq(fiq, "val", category=c) for c in CATEGORIES}
    assert ds.categories == CATEGORIES
    assert ds.queries == [q for c in CATEGORIES for q in singles[c].queries]
    assert ds.category_of == [c for c in CATEGORIES for _ in range(N)]
    assert ds.gallery == [g for c in CATEGORIES for g in split_list(fiq, c, "val")]
    assert list(ds.parts) == list(CATEGORIES)
    for c, part in ds.parts.items():
        assert isinstance(part, FashionIQ) and part.parts is None
        assert part.categories == (c,) and part.split == "val"
        assert part.queries == singles[c].queries
        assert part.gallery == split_list(fiq, c, "val") == singles[c].gallery
        assert part.category_of == [c] * N
        assert all(q.target in part.gallery for q in part.queries)
        # a part reads any image of the release (the evaluation encodes through one part)
        assert part.image(ds.gallery[-1]).size == (32, 32)


def test_single_category_has_no_parts_and_lists_are_ordered(fiq):
    assert build_fashioniq(fiq, "val", category="dress").parts is None
    assert build_fashioniq(fiq, "val", category=["dress"]).parts is None
    two = build_fashioniq(fiq, "val", category=["toptee", "dress"])
    assert two.categories == ("dress", "toptee") and list(two.parts) == ["dress", "toptee"]
    assert two.category_of == ["dress"] * N + ["toptee"] * N
    assert two.gallery == split_list(fiq, "dress", "val") + split_list(fiq, "toptee", "val")


def test_gallery_is_deduplicated_in_first_occurrence_order(fresh):
    dress = split_list(fresh, "dress", "val")
    path = fresh / "image_splits" / "split.shirt.val.json"
    shirt = read_json(path)
    path.write_text(json.dumps(shirt + [dress[0], shirt[0]]))
    ds = build_fashioniq(fresh, "val")
    assert ds.gallery == dress + shirt + split_list(fresh, "toptee", "val")
    assert ds.parts["shirt"].gallery == shirt + [dress[0]]  # its own list, deduplicated


# --------------------------------------------------------------------------- test split


def test_test_split_has_no_targets(fiq):
    ds = build_fashioniq(fiq, "test")
    assert len(ds) == 3 * N and ds.split == "test"
    assert all(q.target is None for q in ds.queries)
    recs = caps(fiq, "toptee", "test")
    assert "target" not in recs[0]
    last = ds.parts["toptee"].queries[-1]
    assert last.reference == recs[-1]["candidate"]
    assert last.text == VAL_TEXT[tuple(recs[-1]["captions"])]


# --------------------------------------------------------------------------- images


def test_image_returns_the_written_pixels_jpg(fiq):
    ds = build_fashioniq(fiq, "val", category="dress")
    for name in ds.gallery[:4]:
        img = ds.image(name)
        assert img.mode == "RGB" and img.size == (32, 32)
        got = img.getpixel((16, 16))
        want = image_color(name)
        assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= JPEG_TOLERANCE
        assert ds.image_path(name) == fiq.resolve() / "images" / f"{name}.jpg"


def test_png_mirror_is_accepted(tmp_path):
    root = write_fashioniq(tmp_path / "png", n_images=6, image_ext=".png",
                           categories=("dress",))
    assert not list((root / "images").glob("*.jpg"))
    ds = build_fashioniq(root, "train", category="dress")
    name = ds.queries[3].target
    assert ds.image(name).getpixel((0, 0)) == image_color(name)  # PNG: exact
    assert ds.image_path(name).suffix == ".png"


def test_without_validation_a_missing_image_fails_when_read(fresh):
    name = split_list(fresh, "dress", "val")[2]
    (fresh / "images" / f"{name}.jpg").unlink()
    ds = build_fashioniq(fresh, "val", category="dress", validate_images=False)
    with pytest.raises(DataError, match=name):
        ds.image(name)
    (fresh / "images" / f"{name}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=f"{name}.jpg"):
        ds.image(name)


# --------------------------------------------------------------------------- subsample


def test_max_triplets_subsamples_train_only_and_keeps_everything_aligned(fiq):
    full = build_fashioniq(fiq, "train", seed=3)
    ds = build_fashioniq(fiq, "train", max_triplets=7, seed=3)
    again = build_fashioniq(fiq, "train", max_triplets=7, seed=3)
    other = build_fashioniq(fiq, "train", max_triplets=7, seed=4)
    assert len(ds) == 7 and ds.queries == again.queries
    assert [q.reference for q in other.queries] != [q.reference for q in ds.queries]
    kept = [full.queries.index(q) for q in ds.queries]
    assert kept == sorted(kept)  # original order
    assert ds.category_of == [full.category_of[i] for i in kept]
    assert [ds.text_choices(i) for i in range(7)] == [full.text_choices(i) for i in kept]
    assert sum(len(p) for p in ds.parts.values()) == 7
    for c, part in ds.parts.items():
        assert part.queries == [q for q, k in zip(ds.queries, ds.category_of, strict=True)
                                if k == c]
        assert part.gallery == split_list(fiq, c, "train")  # galleries are not subsampled
    assert len(build_fashioniq(fiq, "val", max_triplets=7)) == 3 * N
    assert len(build_fashioniq(fiq, "test", max_triplets=7)) == 3 * N


def test_fixture_is_deterministic(fiq, tmp_path):
    again = write_fashioniq(tmp_path / "again", n_images=N)
    files = sorted(p.relative_to(fiq) for p in fiq.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert len(files) == 18 + 3 * 3 * N
    assert all((fiq / f).read_bytes() == (again / f).read_bytes() for f in files)


def test_registered_and_built_by_name(fiq):
    ds = build_dataset("fashioniq", fiq, "val", category="dress", validate_images=False)
    assert isinstance(ds, FashionIQ) and len(ds) == N


# --------------------------------------------------------------------------- errors


def _write(path: Path, text: str) -> None:
    path.write_text(text)


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(read_json(path))))


def _set(obj: dict, key: str, value: Any) -> dict:
    obj[key] = value
    return obj


# the fixture numbers images per category then split: shirt val holds images 49-60
SHIRT_VAL_IMAGE = fashioniq_name(49)


def _first_image(root: Path) -> Path:
    return root / "images" / f"{SHIRT_VAL_IMAGE}.jpg"


CAP = "captions/cap.shirt.val.json"
SPLIT = "image_splits/split.shirt.val.json"

# (id, damage(root) -> None, builder options, text the message must contain)
ERROR_CASES: list[tuple[str, Callable[[Path], None], dict[str, Any], str]] = [
    ("missing-caption-file", lambda r: (r / CAP).unlink(), {}, "cap.shirt.val.json"),
    ("missing-split-file", lambda r: (r / SPLIT).unlink(), {}, "split.shirt.val.json"),
    ("missing-test-caption-file", lambda r: (r / "captions/cap.dress.test.json").unlink(),
     {"split": "test", "category": "dress"}, "cap.dress.test.json"),
    ("caption-not-json", lambda r: _write(r / CAP, "[{\"candidate\": "), {},
     "cap.shirt.val.json"),
    ("split-not-json", lambda r: _write(r / SPLIT, "B01, B02"), {}, "split.shirt.val.json"),
    ("caption-not-a-list", lambda r: _edit_json(r / CAP, lambda d: {"triplets": d}), {},
     "cap.shirt.val.json"),
    ("caption-entry-not-object", lambda r: _edit_json(r / CAP, lambda d: d + ["x"]), {},
     "cap.shirt.val.json"),
    ("one-caption", lambda r: _edit_json(r / CAP, lambda d: [_set(d[0], "captions", ["a"])]),
     {}, "cap.shirt.val.json"),
    ("caption-not-string", lambda r: _edit_json(
        r / CAP, lambda d: [_set(d[0], "captions", ["a", 3])]), {}, "cap.shirt.val.json"),
    ("val-without-target", lambda r: _edit_json(
        r / CAP, lambda d: [{k: v for k, v in d[0].items() if k != "target"}]), {},
     "cap.shirt.val.json"),
    ("split-not-a-list", lambda r: _edit_json(r / SPLIT, lambda d: {n: 1 for n in d}), {},
     "split.shirt.val.json"),
    ("split-entry-not-string", lambda r: _edit_json(r / SPLIT, lambda d: d + [7]), {},
     "split.shirt.val.json"),
    ("candidate-not-in-split", lambda r: _edit_json(
        r / CAP, lambda d: [_set(d[0], "candidate", "B99999999Z")] + d[1:]), {},
     "B99999999Z"),
    # DATASETS.md: every val target is in its category's val split (here: a train image)
    ("val-target-from-train", lambda r: _edit_json(
        r / CAP, lambda d: [_set(d[0], "target", split_list(r, "shirt", "train")[0])]), {},
     "split.shirt.val.json"),
    ("missing-image", lambda r: _first_image(r).unlink(), {}, f"{SHIRT_VAL_IMAGE}.jpg"),
    ("unreadable-image", lambda r: _first_image(r).write_bytes(b"\x00garbage" * 10), {},
     f"{SHIRT_VAL_IMAGE}.jpg"),
    ("missing-root", lambda r: shutil.rmtree(r), {}, "release"),
    ("unknown-category", lambda r: None, {"category": "shoes"}, "dress, shirt, toptee"),
    ("unknown-category-in-list", lambda r: None, {"category": ["dress", "skirt"]}, "skirt"),
    ("bad-split", lambda r: None, {"split": "dev"}, "'dev'"),
    ("recipe-given", lambda r: None, {"recipe": {"seed": 1}}, "recipe"),
]


@pytest.mark.parametrize("damage, options, needle", [c[1:] for c in ERROR_CASES],
                         ids=[c[0] for c in ERROR_CASES])
def test_bad_release_raises_a_data_error_naming_the_problem(fresh, damage, options, needle):
    damage(fresh)
    options = dict(options)
    split = options.pop("split", "val")
    with pytest.raises(DataError) as err:
        build_fashioniq(fresh, split, **options)
    assert needle in str(err.value)


def test_missing_image_message_names_the_file_and_the_split_file(fresh):
    img = _first_image(fresh)
    img.unlink()
    with pytest.raises(DataError, match=img.stem) as err:
        build_fashioniq(fresh, "val", category="shirt")
    assert "split.shirt.val.json" in str(err.value)
    # not validated: builds, and only the category asked for is checked
    build_fashioniq(fresh, "val", category="shirt", validate_images=False)
    build_fashioniq(fresh, "val", category="dress")


def test_unreadable_image_is_named(fresh):
    img = _first_image(fresh)
    img.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DataError, match=img.name):
        build_fashioniq(fresh, "val", category="shirt")


def test_root_none_is_refused():
    with pytest.raises(DataError, match="root"):
        build_fashioniq(None, "val")
