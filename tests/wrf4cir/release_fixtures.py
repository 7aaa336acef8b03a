"""Small FashionIQ and CIRR trees in the exact release layouts (DATASETS.md), for tests.

Each image is a 32x32 solid colour, :func:`image_color` of its name (distinct within a
tree). Everything is deterministic: the same arguments write byte-identical trees.
JPEG is lossy, so compare a ``.jpg`` image's pixels to its colour with a tolerance
(:data:`JPEG_TOLERANCE`); PNG pixels are exact.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image

FASHIONIQ_SPLITS = ("train", "val", "test")
CIRR_SPLITS = ("train", "val", "test1")
CIRR_PREFIX = {"train": "train", "val": "dev", "test1": "test1"}
IMAGE_SIZE = 32
JPEG_TOLERANCE = 8  # max per-channel error of a solid-colour 32x32 JPEG at quality 95
CIRR_SET_SIZE = 6

# captions of FashionIQ triplets: trailing/leading '.?, ' and mixed case on purpose
_CAPTIONS = [
    ("is red.", " has long sleeves "),
    ("Is MORE Colorful?", "has a v-neck,"),
    ("  is shorter and darker", "is solid white."),
    ("has a graphic print", "Is Less Formal"),
    ("is longer.", "has no pattern?"),
    ("is blue and has buttons", "is tighter, "),
]
_CIRR_CAPTIONS = [
    "show three bottles of soft drink",
    "The dog is now lying on the grass.",
    "remove the people and add a red car",
    "Make it a close-up of the same animal",
]


def image_color(name: str) -> tuple[int, int, int]:
    """The colour image ``name`` is filled with."""
    digest = hashlib.sha256(name.encode()).digest()
    return digest[0], digest[1], digest[2]


def _write_image(path: Path, name: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), image_color(name))
    if path.suffix == ".jpg":
        img.save(path, format="JPEG", quality=95)
    else:
        img.save(path, format="PNG")


def _dump(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")


def _check_distinct(names: list[str]) -> None:
    colors = [image_color(n) for n in names]
    assert len(set(colors)) == len(colors), "two fixture images share a colour"


def fashioniq_name(i: int) -> str:
    """The i-th ASIN-like image name: ``B00000001A``, ``B00000002A``, ..."""
    return f"B{i:08d}A"


def write_fashioniq(root: Path, *, n_images: int = 12, image_ext: str = ".jpg",
                    categories: tuple[str, ...] = ("dress", "shirt", "toptee")) -> Path:
    """Write a FashionIQ release at ``root`` and return ``root``.

    For each category and split (train, val, test): ``n_images`` images of its own
    (``split.<cat>.<split>.json`` lists them in an order that is not sorted) and
    ``n_images`` triplets ``candidate = images[i]``, ``target = images[(i + 1 + i % 3) %
    n_images]`` (never the candidate), captions cycling through a fixed list that needs
    stripping and case folding. Test caption files have no ``"target"``. Images are
    ``images/<name><image_ext>`` (".jpg" or ".png").
    """
    if n_images < 4:
        raise ValueError("write_fashioniq needs n_images >= 4")
    root = Path(root)
    counter = 0
    all_names = []
    for cat in categories:
        for split in FASHIONIQ_SPLITS:
            names = []
            for _ in range(n_images):
                counter += 1
                names.append(fashioniq_name(counter))
            all_names += names
            listed = list(names)
            random.Random(f"{cat}.{split}").shuffle(listed)
            _dump(root / "image_splits" / f"split.{cat}.{split}.json", listed)
            triplets = []
            for i in range(n_images):
                c1, c2 = _CAPTIONS[(i + counter) % len(_CAPTIONS)]
                rec: dict[str, Any] = {"candidate": names[i]}
                if split != "test":
                    rec["target"] = names[(i + 1 + i % 3) % n_images]
                rec["captions"] = [c1, c2]
                triplets.append(rec)
            _dump(root / "captions" / f"cap.{cat}.{split}.json", triplets)
    _check_distinct(all_names)
    for name in all_names:
        _write_image(root / "images" / f"{name}{image_ext}", name)
    return root


def cirr_name(split: str, i: int) -> str:
    """The i-th image name of a CIRR split, e.g. ``dev-100-0-img0``."""
    return f"{CIRR_PREFIX[split]}-{100 + i}-{i % 2}-img{i % 2}"


def cirr_relpath(split: str, name: str, i: int) -> str:
    """Split-file path of image ``name`` (the i-th of its split)."""
    if split == "train":
        return f"./train/{(7 * i) % 100}/{name}.png"
    return f"./{CIRR_PREFIX[split]}/{name}.png"


def write_cirr(root: Path, *, n_images: int = 18) -> Path:
    """Write a CIRR release at ``root`` and return ``root``.

    Per split (train, val, test1): ``n_images`` PNGs (train ones spread over
    ``train/<k>/`` shards), a split file listing them in a shuffled (not sorted) order,
    and, per group of 6 consecutive images (an ``img_set``), two entries: reference =
    member 0, target = member 2, and reference = member 3, target = member 5. Pairids are
    unique over the three splits. test1 entries have no ``target_hard``, ``target_soft``
    or ``target_rank``. Images past the last full group are in the split only.
    """
    if n_images < CIRR_SET_SIZE:
        raise ValueError(f"write_cirr needs n_images >= {CIRR_SET_SIZE}")
    root = Path(root)
    pairid = 1000
    set_id = 0
    all_names = []
    for split in CIRR_SPLITS:
        names = [cirr_name(split, i) for i in range(n_images)]
        all_names += names
        rel = {name: cirr_relpath(split, name, i) for i, name in enumerate(names)}
        order = list(names)
        random.Random(f"cirr.{split}").shuffle(order)
        _dump(root / "cirr" / "image_splits" / f"split.rc2.{split}.json",
              {name: rel[name] for name in order})
        entries = []
        for g in range(n_images // CIRR_SET_SIZE):
            members = names[g * CIRR_SET_SIZE:(g + 1) * CIRR_SET_SIZE]
            set_id += 1
            for ref_i, tgt_i in ((0, 2), (3, 5)):
                pairid += 7
                entry: dict[str, Any] = {
                    "pairid": pairid,
                    "reference": members[ref_i],
                }
                if split != "test1":
                    entry["target_hard"] = members[tgt_i]
                    entry["target_soft"] = {members[tgt_i]: 1.0, members[1]: 0.5,
                                            members[4]: -1.0}
                entry["caption"] = _CIRR_CAPTIONS[(pairid // 7) % len(_CIRR_CAPTIONS)]
                img_set: dict[str, Any] = {"id": set_id, "members": list(members),
                                           "reference_rank": ref_i}
                if split != "test1":
                    img_set["target_rank"] = tgt_i
                entry["img_set"] = img_set
                entries.append(entry)
        _dump(root / "cirr" / "captions" / f"cap.rc2.{split}.json", entries)
        for name in names:
            _write_image(root / rel[name], name)
    _check_distinct(all_names)
    return root
