"""Tests of the synthetic CIR generators and their loader (wrf4cir.data.synthetic)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image

from tests.conftest import read_json
from wrf4cir.data import synthetic as syn
from wrf4cir.data.base import CIRDataset, DataError, Query, build_dataset
from wrf4cir.data.synthetic import (
    BACKGROUND,
    COLORS,
    GENERATOR_VERSION,
    POSITIONS,
    RECIPES,
    SHAPES,
    SIZES,
    SyntheticDataset,
    SyntheticRecipe,
    default_root,
    generate,
    generate_caption_pairs,
    load_caption_pairs,
)

SMALL = {"train_triplets": 60, "val_triplets": 20}
SHAPES_RECIPE = SyntheticRecipe(kind="shapes", **SMALL)
SCENES_RECIPE = SyntheticRecipe(kind="scenes", **SMALL)
NAMES = {"shapes": "synthetic-shapes", "scenes": "synthetic-scenes"}
# Longest first, so "top left" is never read as "top".
POS_RE = "|".join(sorted(POSITIONS, key=len, reverse=True))


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("synthetic-shapes", tmp_path_factory.mktemp("shapes") / "ds", SHAPES_RECIPE)


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate("synthetic-scenes", tmp_path_factory.mktemp("scenes") / "ds", SCENES_RECIPE)


@pytest.fixture(params=["shapes", "scenes"])
def kind_root(request: pytest.FixtureRequest, shapes_root: Path,
              scenes_root: Path) -> tuple[str, Path]:
    return request.param, shapes_root if request.param == "shapes" else scenes_root


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def objects_by_image(root: Path) -> dict[str, list[dict[str, str]]]:
    return {rec["image"]: rec["objects"] for rec in read_json(root / "captions.json")}


def pixels(root: Path, name: str) -> np.ndarray:
    return np.asarray(Image.open(root / "images" / f"{name}.png").convert("RGB")).astype(int)


def cell(position: str, size: int) -> tuple[slice, slice]:
    row, col = divmod(POSITIONS.index(position), 3)
    return (slice(row * size // 3, (row + 1) * size // 3),
            slice(col * size // 3, (col + 1) * size // 3))


def reading_order(objs: list[dict[str, str]]) -> list[dict[str, str]]:
    return sorted(objs, key=lambda o: POSITIONS.index(o["position"]))


def apply_edit(objs: list[dict[str, str]], edit: dict[str, Any]) -> list[dict[str, str]]:
    """The documented meaning of an edit record, written independently of the generator."""
    obj, etype = edit["object"], edit["type"]
    if etype == "add":
        assert obj["position"] not in {o["position"] for o in objs}
        return reading_order([*objs, obj])
    assert obj in objs, "the edited object must be in the reference"
    rest = [o for o in objs if o != obj]
    if etype == "remove":
        return rest
    attr = {"recolor": "color", "move": "position"}.get(etype, etype)
    assert edit["from"] == obj[attr] and edit["to"] != obj[attr]
    return reading_order([*rest, {**obj, attr: edit["to"]}])


# --------------------------------------------------------------------------- determinism


@pytest.mark.parametrize("kind", ["shapes", "scenes"])
def test_regeneration_is_byte_identical(kind: str, tmp_path: Path, shapes_root: Path,
                                        scenes_root: Path) -> None:
    first = shapes_root if kind == "shapes" else scenes_root
    again = generate(NAMES[kind], tmp_path / "again", SyntheticRecipe(kind=kind, **SMALL))
    a, b = files(first), files(again)
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


@pytest.mark.parametrize("kind", ["shapes", "scenes"])
def test_other_seed_gives_other_files(kind: str, tmp_path: Path, shapes_root: Path,
                                      scenes_root: Path) -> None:
    first = files(shapes_root if kind == "shapes" else scenes_root)
    other = files(generate(NAMES[kind], tmp_path / "s1",
                           SyntheticRecipe(kind=kind, seed=1, **SMALL)))
    for split_file in ("splits/train.json", "splits/val.json"):
        assert first[split_file] != other[split_file]
    pngs = [k for k in first if k.endswith(".png") and k in other]
    assert sum(first[k] != other[k] for k in pngs) > len(pngs) // 2


@pytest.mark.parametrize("kind", ["shapes", "scenes"])
def test_val_does_not_shift_with_the_train_pool_size(kind: str, tmp_path: Path, shapes_root: Path,
                                                     scenes_root: Path) -> None:
    first = shapes_root if kind == "shapes" else scenes_root
    other = generate(NAMES[kind], tmp_path / "t30",
                     SyntheticRecipe(kind=kind, train_triplets=30, val_triplets=20))
    assert read_json(other / "splits" / "train.json") != read_json(first / "splits" / "train.json")
    val = read_json(first / "splits" / "val.json")
    assert read_json(other / "splits" / "val.json") == val
    for name in val["images"]:
        rel = Path("images") / f"{name}.png"
        assert (other / rel).read_bytes() == (first / rel).read_bytes()


def test_recipe_digest_is_the_documented_hash() -> None:
    recipe = SyntheticRecipe(kind="scenes", seed=3)
    blob = json.dumps({"kind": "scenes", "seed": 3, "image_size": 64, "train_triplets": 2000,
                       "val_triplets": 400, "generator": GENERATOR_VERSION},
                      sort_keys=True).encode()
    assert recipe.digest() == hashlib.sha256(blob).hexdigest()[:12]
    assert SyntheticRecipe(kind="scenes", seed=4).digest() != recipe.digest()
    assert RECIPES["synthetic-shapes"] == SyntheticRecipe(kind="shapes")
    assert (RECIPES["synthetic-scenes"].train_triplets, RECIPES["synthetic-scenes"].val_triplets
            ) == (2000, 400)


# --------------------------------------------------------------------------- layout


def test_layout_and_json_keys(kind_root: tuple[str, Path]) -> None:
    kind, root = kind_root
    assert sorted(p.name for p in root.iterdir()) == [
        "captions.json", "dataset.json", "images", "splits"]
    header = read_json(root / "dataset.json")
    assert set(header) == {"name", "format_version", "recipe", "counts"}
    assert header["name"] == NAMES[kind] and header["format_version"] == 1
    assert header["recipe"] == SyntheticRecipe(kind=kind, **SMALL).to_dict()

    captions = read_json(root / "captions.json")
    names = [rec["image"] for rec in captions]
    assert names == sorted(names)
    assert sorted(p.name for p in (root / "images").iterdir()) == [f"{n}.png" for n in names]
    assert header["counts"]["images"] == len(names)
    pattern = r"shapes-\d{4}" if kind == "shapes" else r"scenes-(train|val)-\d{5}"
    assert all(re.fullmatch(pattern, n) for n in names)
    for rec in captions:
        assert set(rec) == {"image", "caption", "objects"}
        assert rec["objects"] == reading_order(rec["objects"])
        for o in rec["objects"]:
            assert set(o) == {"shape", "color", "size", "position"}
            assert (o["shape"] in SHAPES and o["color"] in COLORS and o["size"] in SIZES
                    and o["position"] in POSITIONS)

    split_images: list[str] = []
    for split, wanted in (("train", 60), ("val", 20)):
        data = read_json(root / "splits" / f"{split}.json")
        assert set(data) == {"images", "triplets"}
        assert data["images"] == sorted(data["images"])
        assert len(data["triplets"]) == wanted == header["counts"][f"{split}_triplets"]
        for t in data["triplets"]:
            assert set(t) == {"reference", "target", "text", "edit"}
        split_images += data["images"]
    assert sorted(split_images) == names  # every image belongs to exactly one split

    # JSON exactly as documented: sorted keys, indent 1, trailing newline.
    for path in [root / "dataset.json", root / "captions.json", *root.glob("splits/*.json")]:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), sort_keys=True, indent=1) + "\n"


def test_shapes_has_one_image_per_state_and_unseen_val_combinations(shapes_root: Path) -> None:
    objs = objects_by_image(shapes_root)
    states = {tuple(sorted(o[0].items())) for o in objs.values()}
    assert all(len(o) == 1 for o in objs.values())
    assert len(objs) == len(states) == len(SHAPES) * len(COLORS) * len(SIZES) * len(POSITIONS)
    train = read_json(shapes_root / "splits" / "train.json")["images"]
    val = read_json(shapes_root / "splits" / "val.json")["images"]
    assert not set(train) & set(val)
    assert len(train) == round(0.6 * len(objs))
    train_states = {tuple(sorted(objs[n][0].items())) for n in train}
    val_states = {tuple(sorted(objs[n][0].items())) for n in val}
    assert not train_states & val_states


def test_scenes_splits_are_disjoint_and_val_has_distractors(scenes_root: Path) -> None:
    objs = objects_by_image(scenes_root)
    key = {n: json.dumps(o, sort_keys=True) for n, o in objs.items()}
    assert len(set(key.values())) == len(key)  # no scene twice, across splits too
    train = read_json(scenes_root / "splits" / "train.json")
    val = read_json(scenes_root / "splits" / "val.json")
    assert not set(train["images"]) & set(val["images"])
    assert all(2 <= len(o) <= 4 for o in objs.values())
    assert len({len(o) for o in objs.values()}) == 3
    used = {n for t in val["triplets"] for n in (t["reference"], t["target"])}
    distractors = set(val["images"]) - used
    assert len(distractors) == round(0.2 * len(used))


# --------------------------------------------------------------------------- edits and texts


def test_every_target_is_the_reference_with_the_edit_applied(kind_root: tuple[str, Path]) -> None:
    kind, root = kind_root
    objs = objects_by_image(root)
    seen_types = set()
    for split in ("train", "val"):
        for t in read_json(root / "splits" / f"{split}.json")["triplets"]:
            seen_types.add(t["edit"]["type"])
            assert objs[t["target"]] == apply_edit(objs[t["reference"]], t["edit"]), t
    assert seen_types == set(syn.SHAPES_EDITS if kind == "shapes" else syn.SCENES_EDITS)


def test_shapes_texts_name_the_object_and_the_new_value(shapes_root: Path) -> None:
    for split in ("train", "val"):
        for t in read_json(shapes_root / "splits" / f"{split}.json")["triplets"]:
            text, edit = t["text"], t["edit"]
            words = text.split()
            assert edit["object"]["shape"] in words, t
            if edit["type"] == "position":
                assert text.endswith(f"the {edit['to']}"), t
            else:
                assert edit["to"] in words, t


def test_scenes_texts_identify_the_object_uniquely(tmp_path: Path) -> None:
    # Big enough for objects sharing colour and shape to occur a few dozen times.
    root = generate("synthetic-scenes", tmp_path / "ds",
                    SyntheticRecipe(kind="scenes", train_triplets=600, val_triplets=20))
    objs = objects_by_image(root)
    desc_re = re.compile(rf"(?:(small|large) )?({'|'.join(COLORS)}) ({'|'.join(SHAPES)})"
                         rf"(?: at the ({POS_RE}))?")
    disambiguated = {"size": 0, "position": 0}
    for split in ("train", "val"):
        for t in read_json(root / "splits" / f"{split}.json")["triplets"]:
            text, edit, obj = t["text"], t["edit"], t["edit"]["object"]
            if edit["type"] == "add":
                assert text.endswith(f"{obj['size']} {obj['color']} {obj['shape']} at the "
                                     f"{obj['position']}"), t
                continue
            if edit["type"] == "move":
                assert text.endswith(f"to the {edit['to']}"), t
            if edit["type"] == "recolor":
                assert text.split()[-1] == edit["to"], t
            size, color, shape, pos = desc_re.search(text).groups()
            matches = [o for o in objs[t["reference"]]
                       if o["color"] == color and o["shape"] == shape
                       and size in (None, o["size"]) and pos in (None, o["position"])]
            assert matches == [obj], t
            twins = [o for o in objs[t["reference"]]
                     if (o["color"], o["shape"]) == (color, shape)]
            if len(twins) > 1:
                disambiguated["position" if pos else "size"] += 1
    assert min(disambiguated.values()) >= 3, disambiguated


def test_texts_and_captions_fit_the_tiny_clip_context(shapes_root: Path, scenes_root: Path,
                                                      tmp_path: Path) -> None:
    tok = SimpleTokenizer()
    corpus = generate_caption_pairs(tmp_path / "caps", 300)

    def n_tokens(s: str) -> int:
        return len(tok.encode(s)) + 2  # + start and end of text

    strings = [c for _, c in load_caption_pairs(corpus)]
    for root in (shapes_root, scenes_root):
        strings += [c for _, c in load_caption_pairs(root)]
        for split in ("train", "val"):
            strings += [t["text"] for t in read_json(root / "splits" / f"{split}.json")["triplets"]]
    # The longest possible caption: four large cyan (two BPE tokens) triangles in the
    # longest cells.
    worst = [syn._Obj("triangle", "cyan", "large", p) for p in
             ("top right", "bottom left", "bottom right", "top left")]
    strings.append(syn._caption(syn._sorted_scene(worst)))
    assert max(n_tokens(s) for s in strings) <= 40
    assert n_tokens(syn._caption(syn._sorted_scene(worst))) <= 37


def test_captions_describe_the_objects(kind_root: tuple[str, Path]) -> None:
    _, root = kind_root
    for rec in read_json(root / "captions.json"):
        parts = rec["caption"].split(", ")
        assert len(parts) == len(rec["objects"])
        for part, o in zip(parts, rec["objects"], strict=True):
            core = f"{o['size']} {o['color']} {o['shape']} at the {o['position']}"
            assert part in (core, f"a {core}")


# --------------------------------------------------------------------------- pixels


def dominant_colour(arr: np.ndarray, position: str) -> tuple[str, float, tuple[float, float]]:
    """Nearest palette colour at the centroid of the non-background pixels of a cell."""
    rows, cols = cell(position, arr.shape[0])
    patch = arr[rows, cols]
    mask = np.abs(patch - np.array(BACKGROUND)).max(axis=2) > 60
    assert mask.any(), f"nothing drawn at the {position}"
    ys, xs = np.nonzero(mask)
    cy, cx = ys.mean(), xs.mean()
    px = patch[int(round(cy)), int(round(cx))]
    dists = {name: float(np.abs(px - np.array(rgb)).max()) for name, rgb in COLORS.items()}
    best = min(dists, key=dists.get)
    return best, dists[best], (cy + rows.start, cx + cols.start)


def test_images_show_the_recorded_objects(shapes_root: Path, scenes_root: Path) -> None:
    for root in (shapes_root, scenes_root):
        for name, objs in list(objects_by_image(root).items())[:300]:
            arr = pixels(root, name)
            assert arr.shape == (64, 64, 3)
            for o in objs:
                colour, dist, _ = dominant_colour(arr, o["position"])
                assert colour == o["color"] and dist < 40, (name, o, colour, dist)
            empty = set(POSITIONS) - {o["position"] for o in objs}
            for p in empty:
                rows, cols = cell(p, 64)
                # Only faint resampling ringing from neighbours may reach an empty cell.
                assert np.abs(arr[rows, cols] - np.array(BACKGROUND)).max() < 60, (name, p)


def test_large_objects_are_larger_and_positions_are_jittered(shapes_root: Path) -> None:
    objs = objects_by_image(shapes_root)
    area = {"small": [], "large": []}
    centres = []
    for name, (o,) in objs.items():
        arr = pixels(shapes_root, name)
        area[o["size"]].append(int((np.abs(arr - np.array(BACKGROUND)).max(axis=2) > 60).sum()))
        if o["position"] == "center" and o["shape"] == "circle":
            centres.append(dominant_colour(arr, "center")[2])
    assert max(area["small"]) < min(area["large"])
    spread = np.array(centres).std(axis=0)
    assert (spread > 0.4).all() and (spread < 2.5).all()  # a few pixels, not a template


def test_edits_keep_unchanged_objects_in_place(scenes_root: Path) -> None:
    objs = objects_by_image(scenes_root)
    for t in read_json(scenes_root / "splits" / "val.json")["triplets"]:
        ref, tgt = pixels(scenes_root, t["reference"]), pixels(scenes_root, t["target"])
        before = {o["position"]: o for o in objs[t["reference"]]}
        after = {o["position"]: o for o in objs[t["target"]]}
        for p in POSITIONS:
            rows, cols = cell(p, 64)
            diff = np.abs(ref[rows, cols] - tgt[rows, cols]).max()
            if before.get(p) != after.get(p):
                assert diff > 40, (t, p)
            elif p in before:
                assert diff <= 24, (t, p)  # identical but for ringing from an edited neighbour


# --------------------------------------------------------------------------- loader


def test_loader_round_trip(kind_root: tuple[str, Path]) -> None:
    kind, root = kind_root
    for split in ("train", "val"):
        ds = build_dataset(NAMES[kind], root, split)
        data = read_json(root / "splits" / f"{split}.json")
        assert isinstance(ds, SyntheticDataset) and isinstance(ds, CIRDataset)
        assert (ds.name, ds.split, ds.protocol, ds.root) == (NAMES[kind], split, "synthetic", root)
        assert ds.queries == [Query(t["reference"], t["target"], t["text"])
                              for t in data["triplets"]]
        assert ds.edits == [t["edit"] for t in data["triplets"]]
        assert len(ds) == len(data["triplets"])
        assert ds.gallery == sorted(data["images"])
        assert all(q.pair_id is None and q.members is None for q in ds.queries)
        gallery = set(ds.gallery)
        assert all(q.reference in gallery and q.target in gallery for q in ds.queries)
        name = ds.queries[0].target
        img = ds.image(name)
        assert img.mode == "RGB" and img.size == (64, 64)
        assert np.array_equal(np.asarray(img), pixels(root, name))
        caption = next(r for r in read_json(root / "captions.json") if r["image"] == name)
        assert ds.caption(name) == caption["caption"]
        assert ds.objects(name) == caption["objects"]


def test_train_subsample_is_seeded_and_sized(shapes_root: Path) -> None:
    full = build_dataset("synthetic-shapes", shapes_root, "train")
    a = build_dataset("synthetic-shapes", shapes_root, "train", max_triplets=10, seed=3)
    b = build_dataset("synthetic-shapes", shapes_root, "train", max_triplets=10, seed=3)
    c = build_dataset("synthetic-shapes", shapes_root, "train", max_triplets=10, seed=4)
    assert len(a) == 10 and a.queries == b.queries and a.queries != c.queries
    positions = [full.queries.index(q) for q in a.queries]
    assert positions == sorted(positions)  # original order kept
    assert [full.edits[i] for i in positions] == a.edits
    assert a.gallery == full.gallery
    val = build_dataset("synthetic-shapes", shapes_root, "val", max_triplets=5, seed=3)
    assert len(val) == 20  # val is always complete


def test_builder_generates_on_demand_in_the_cache(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WRF4CIR_CACHE", str(tmp_path / "cache"))
    ds = build_dataset("synthetic-scenes", None, "val", recipe=dict(SMALL))
    assert ds.root == default_root("synthetic-scenes", SCENES_RECIPE)
    assert ds.root == tmp_path / "cache" / "data" / f"synthetic-scenes-{SCENES_RECIPE.digest()}"
    assert len(ds) == 20 and ds.recipe == SCENES_RECIPE
    stamp = (ds.root / "dataset.json").stat().st_mtime_ns
    again = build_dataset("synthetic-scenes", None, "train", recipe=SCENES_RECIPE)
    assert again.root == ds.root and (ds.root / "dataset.json").stat().st_mtime_ns == stamp
    # A root given but empty is generated too; recipe=None loads whatever is there.
    fresh = build_dataset("synthetic-scenes", tmp_path / "given", "val",
                          recipe={"seed": 2, **SMALL})
    assert build_dataset("synthetic-scenes", fresh.root, "val").recipe.seed == 2


def test_generate_returns_at_once_for_the_same_recipe(scenes_root: Path) -> None:
    stamp = (scenes_root / "dataset.json").stat().st_mtime_ns
    assert generate("synthetic-scenes", scenes_root, SCENES_RECIPE) == scenes_root
    assert (scenes_root / "dataset.json").stat().st_mtime_ns == stamp


def test_concurrent_generation_of_one_root(tmp_path: Path) -> None:
    root = tmp_path / "shared"
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: generate("synthetic-scenes", root, SCENES_RECIPE),
                                range(2)))
    assert results == [root, root]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared", "shared.lock"]
    assert read_json(root / "dataset.json")["recipe"] == SCENES_RECIPE.to_dict()


def test_a_crash_leaves_no_partial_dataset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(syn, "_write_images", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        generate("synthetic-scenes", tmp_path / "ds", SCENES_RECIPE)
    assert [p.name for p in tmp_path.iterdir()] == ["ds.lock"]


# --------------------------------------------------------------------------- caption corpus


def test_caption_pairs_are_deterministic_and_mixed(tmp_path: Path) -> None:
    a = generate_caption_pairs(tmp_path / "a", 200, seed=5, image_size=32)
    b = generate_caption_pairs(tmp_path / "b", 200, seed=5, image_size=32)
    c = generate_caption_pairs(tmp_path / "c", 200, seed=6, image_size=32)
    fa, fb, fc = files(a), files(b), files(c)
    assert fa == fb and fa != fc
    assert sorted(p.name for p in a.iterdir()) == ["captions.json", "dataset.json", "images"]
    header = read_json(a / "dataset.json")
    assert header["recipe"] == {"kind": "captions", "n": 200, "seed": 5, "image_size": 32}
    pairs = load_caption_pairs(a)
    assert len(pairs) == 200 and all(p.is_file() for p, _ in pairs)
    assert Image.open(pairs[0][0]).size == (32, 32)
    counts = [len(rec["objects"]) for rec in read_json(a / "captions.json")]
    assert {1, 2, 3, 4} <= set(counts) and set(counts) <= {1, 2, 3, 4}
    assert all(caption for _, caption in pairs)
    with pytest.raises(DataError, match=r"\"n\": 10"):  # same root, other recipe
        generate_caption_pairs(a, 10, seed=5, image_size=32)


def test_caption_corpus_is_not_the_benchmark(scenes_root: Path, tmp_path: Path) -> None:
    corpus = generate_caption_pairs(tmp_path / "caps", 100)
    scene_captions = {c for _, c in load_caption_pairs(scenes_root)}
    multi = [c for _, c in load_caption_pairs(corpus) if ", " in c]
    assert multi and not set(multi) & scene_captions


# --------------------------------------------------------------------------- errors


@pytest.fixture
def copy_root(shapes_root: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(shapes_root, tmp_path / "copy"))


def test_unknown_split_names_the_allowed_ones(shapes_root: Path) -> None:
    with pytest.raises(DataError, match="train, val"):
        build_dataset("synthetic-shapes", shapes_root, "test")


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"name": "synthetic-shapes", "format_version": 1}', "lacks key"),
    ("[1, 2]", "must hold a JSON object"),
])
def test_malformed_dataset_json(copy_root: Path, content: str, problem: str) -> None:
    (copy_root / "dataset.json").write_text(content)
    with pytest.raises(DataError, match=problem) as err:
        build_dataset("synthetic-shapes", copy_root, "val")
    assert str(copy_root / "dataset.json") in str(err.value)


def test_wrong_dataset_name_in_root(shapes_root: Path) -> None:
    with pytest.raises(DataError, match="dataset.json"):
        build_dataset("synthetic-scenes", shapes_root, "val")


@pytest.mark.parametrize("mutate, problem", [
    (lambda d: "{oops", "not valid JSON"),
    (lambda d: json.dumps({"images": d["images"]}), "keys 'images' and 'triplets'"),
    (lambda d: json.dumps({"images": d["images"],
                           "triplets": [{**d["triplets"][0], "target": "shapes-9999"}]}),
     "not in the split's image list"),
    (lambda d: json.dumps({"images": d["images"], "triplets": [{"reference": d["images"][0]}]}),
     "lacks key"),
])
def test_malformed_split_file(copy_root: Path, mutate: Any, problem: str) -> None:
    path = copy_root / "splits" / "val.json"
    path.write_text(mutate(read_json(path)))
    with pytest.raises(DataError, match=problem) as err:
        build_dataset("synthetic-shapes", copy_root, "val")
    assert str(path) in str(err.value)
    build_dataset("synthetic-shapes", copy_root, "train")  # the other split is unaffected


def test_missing_image_is_reported_with_its_split_file(copy_root: Path) -> None:
    ds = build_dataset("synthetic-shapes", copy_root, "val")
    gone = ds.gallery[3]
    (copy_root / "images" / f"{gone}.png").unlink()
    with pytest.raises(DataError, match=f"{gone}.png") as err:
        build_dataset("synthetic-shapes", copy_root, "val")
    assert "val.json" in str(err.value)
    lazy = build_dataset("synthetic-shapes", copy_root, "val", validate_images=False)
    with pytest.raises(DataError, match=f"{gone}.png"):
        lazy.image(gone)


def test_unreadable_image_names_the_file(copy_root: Path) -> None:
    ds = build_dataset("synthetic-shapes", copy_root, "val")
    name = ds.gallery[0]
    (copy_root / "images" / f"{name}.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{name}.png"):
        ds.image(name)
    with pytest.raises(DataError, match="captions.json"):
        ds.image("../dataset")


def test_recipe_mismatch_names_both(shapes_root: Path) -> None:
    other = SyntheticRecipe(kind="shapes", seed=9, **SMALL)
    with pytest.raises(DataError) as err:
        build_dataset("synthetic-shapes", shapes_root, "val", recipe=other)
    assert SHAPES_RECIPE.digest() in str(err.value) and other.digest() in str(err.value)
    assert "dataset.json" in str(err.value)
    with pytest.raises(DataError, match=r'"seed": 9') as err:
        generate("synthetic-shapes", shapes_root, other)
    assert '"seed": 0' in str(err.value)


def test_bad_recipes_are_rejected(shapes_root: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="colour_count"):
        build_dataset("synthetic-shapes", shapes_root, "val", recipe={"colour_count": 3})
    with pytest.raises(DataError, match="kind"):
        build_dataset("synthetic-shapes", shapes_root, "val", recipe=SCENES_RECIPE)
    with pytest.raises(DataError, match="only .* distinct"):
        generate("synthetic-shapes", tmp_path / "big",
                 SyntheticRecipe(kind="shapes", train_triplets=100_000))
    assert not (tmp_path / "big").exists()
    with pytest.raises(DataError, match="image_size"):
        SyntheticRecipe(kind="shapes", image_size=8)
    with pytest.raises(DataError, match="unknown synthetic dataset"):
        generate("synthetic-cubes", tmp_path / "x")


def test_refuses_a_foreign_nonempty_root(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="dataset.json"):
        build_dataset("synthetic-shapes", tmp_path / "mine", "val")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_malformed_captions_json(copy_root: Path) -> None:
    (copy_root / "captions.json").write_text('[{"image": 3}]')
    with pytest.raises(DataError, match="captions.json"):
        build_dataset("synthetic-shapes", copy_root, "val")
    with pytest.raises(DataError, match="captions.json"):
        load_caption_pairs(copy_root)
