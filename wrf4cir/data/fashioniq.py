"""FashionIQ (Wu et al., 2021) as distributed: loader registered as ``"fashioniq"``.

Layout of the root a user passes in (DATASETS.md)::

    <root>/captions/cap.{dress,shirt,toptee}.{train,val,test}.json
    <root>/image_splits/split.{dress,shirt,toptee}.{train,val,test}.json
    <root>/images/<name>.jpg          (some mirrors ship .png: both are accepted)

A caption file is a JSON list of ``{"candidate", "target", "captions": [c1, c2]}``
(no ``"target"`` at test); a split file is a JSON list of image names.

Modification text (the reference CLIP4Cir rules): strip ``'.?, '`` from both ends of c1
and c2; ``C = c.capitalize()`` (Python's, which lower-cases the rest). Val and test use
``"{C1} and {c2}"``; training uses one of ``"{C1} and {c2}"``, ``"{C2} and {c1}"``,
``"{C1}"``, ``"{C2}"`` (:func:`caption_forms`, in that order).

Several categories loaded together form one dataset whose ``parts`` are the single
categories, each with its own gallery, so evaluation scores each category against its
own val images and averages (``wrf4cir.evaluation``).

Every check happens in :func:`build_fashioniq`: a bad release raises :class:`DataError`
naming the file before any training starts.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from wrf4cir.data.base import DataError, Query, register_dataset
from wrf4cir.data.release import (
    check_root,
    kept_indices,
    load_image,
    no_extra_options,
    read_json,
    verify_images,
)

CATEGORIES: tuple[str, ...] = ("dress", "shirt", "toptee")
SPLITS: tuple[str, ...] = ("train", "val", "test")
STRIP_CHARS = ".?, "
IMAGE_EXTS: tuple[str, ...] = (".jpg", ".png")  # tried in this order


# --------------------------------------------------------------------------- captions


def clean_caption(caption: str) -> str:
    """``caption`` with ``'.?, '`` stripped from both ends."""
    return caption.strip(STRIP_CHARS)


def caption_forms(c1: str, c2: str) -> tuple[str, str, str, str]:
    """The four training texts of captions ``(c1, c2)``, in this order:
    ``"{C1} and {c2}"``, ``"{C2} and {c1}"``, ``"{C1}"``, ``"{C2}"``.

    ``c`` is the caption stripped of ``'.?, '`` at both ends and ``C = c.capitalize()``.
    The first form is the val/test text (:func:`eval_text`).
    """
    c1, c2 = clean_caption(c1), clean_caption(c2)
    return (f"{c1.capitalize()} and {c2}", f"{c2.capitalize()} and {c1}",
            c1.capitalize(), c2.capitalize())


def eval_text(c1: str, c2: str) -> str:
    """The fixed val/test text ``"{C1} and {c2}"``."""
    return caption_forms(c1, c2)[0]


# --------------------------------------------------------------------------- dataset


class FashionIQ:
    """One split of FashionIQ over one or more categories; satisfies ``CIRDataset``.

    Attributes:

    - ``name = "fashioniq"``, ``protocol = "fashioniq"``, ``split`` (train/val/test),
      ``root`` (absolute), ``categories`` (tuple, in :data:`CATEGORIES` order);
    - ``queries``: the categories' triplets concatenated in ``categories`` order, each in
      caption-file order (after the train subsample). ``reference`` is the candidate,
      ``target`` the target (None on test), ``text`` the val/test form or, at train, one
      of the four forms drawn once by a seeded RNG; ``pair_id``/``members`` None;
    - ``category_of[i]``: the category of ``queries[i]``;
    - ``gallery``: the categories' split image lists, in category order then file
      order, without duplicates;
    - ``parts``: with several categories, ``{category: FashionIQ}`` of the single
      categories (own queries, own gallery, ``parts=None``); None with one category.
    """

    name = "fashioniq"
    protocol = "fashioniq"

    def __init__(self, root: Path, split: str, categories: tuple[str, ...],
                 queries: list[Query], category_of: list[str],
                 text_choices: list[tuple[str, ...]], gallery: list[str],
                 image_paths: dict[str, Path],
                 parts: dict[str, FashionIQ] | None = None) -> None:
        self.root = root
        self.split = split
        self.categories = categories
        self.queries = queries
        self.category_of = category_of
        self._text_choices = text_choices
        self.gallery = gallery
        self.parts = parts
        self._image_paths = image_paths  # name -> resolved file; shared with the parts

    def __len__(self) -> int:
        return len(self.queries)

    def __repr__(self) -> str:
        return (f"FashionIQ(split={self.split!r}, categories={self.categories}, "
                f"queries={len(self.queries)}, gallery={len(self.gallery)}, root={self.root})")

    def text_choices(self, i: int) -> tuple[str, ...]:
        """The texts query ``i`` may take: at train the four forms of :func:`caption_forms`
        (the trainer may draw one per epoch); at val/test a 1-tuple, the fixed form."""
        return self._text_choices[i]

    def image_path(self, name: str) -> Path:
        """The file of image ``name``: ``images/<name>.jpg``, else ``images/<name>.png``."""
        path = self._image_paths.get(name)
        if path is not None:
            return path
        _check_name(name, "image name")
        candidates = [self.root / "images" / f"{name}{ext}" for ext in IMAGE_EXTS]
        for path in candidates:
            if path.is_file():
                self._image_paths[name] = path
                return path
        raise DataError(f"image {name!r} is missing: neither {candidates[0]} nor "
                        f"{candidates[1].name} exists")

    def image(self, name: str) -> Image.Image:
        """Image ``name`` as RGB (any image of the release, not only this split's);
        :class:`DataError` naming the file if it is missing or unreadable."""
        return load_image(self.image_path(name))


def _check_name(name: Any, what: str, where: Path | None = None) -> None:
    bad = (not isinstance(name, str) or not name or name.startswith(".")
           or "/" in name or "\\" in name)
    if bad:
        prefix = f"{where}: " if where is not None else ""
        raise DataError(f"{prefix}{what} must be a plain image name (a non-empty string "
                        f"without '/'), got {name!r}")


def _read_split_list(path: Path) -> list[str]:
    data = read_json(path, "FashionIQ split file")
    if not isinstance(data, list):
        raise DataError(f"FashionIQ split file {path} must hold a JSON list of image names, "
                        f"got {type(data).__name__}")
    for i, name in enumerate(data):
        _check_name(name, f"entry {i}", path)
    return list(dict.fromkeys(data))


def _read_caption_file(path: Path, split: str, images: set[str],
                       split_path: Path) -> list[tuple[str, str | None, str, str]]:
    """``(candidate, target or None, c1, c2)`` of each triplet of ``path``, checked."""
    data = read_json(path, "FashionIQ caption file")
    if not isinstance(data, list):
        raise DataError(f"FashionIQ caption file {path} must hold a JSON list of triplets, "
                        f"got {type(data).__name__}")
    keys = ("candidate", "captions") if split == "test" else ("candidate", "target", "captions")
    out = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: triplet {i} is not a JSON object")
        missing = [k for k in keys if k not in rec]
        if missing:
            raise DataError(f"{path}: triplet {i} lacks key(s) {', '.join(missing)}")
        caps = rec["captions"]
        if (not isinstance(caps, list) or len(caps) != 2
                or not all(isinstance(c, str) for c in caps)):
            raise DataError(f"{path}: triplet {i} 'captions' must be a list of 2 strings, "
                            f"got {caps!r}")
        names = {"candidate": rec["candidate"]}
        if split != "test":
            names["target"] = rec["target"]
        for key, name in names.items():
            if not isinstance(name, str):
                raise DataError(f"{path}: triplet {i} {key} must be a string, got {name!r}")
            if name not in images:
                raise DataError(f"{path}: triplet {i} {key} {name!r} is not in {split_path}")
        out.append((rec["candidate"], names.get("target"), caps[0], caps[1]))
    return out


def _categories_of(category: str | Iterable[str] | None) -> tuple[str, ...]:
    if category is None:
        return CATEGORIES
    try:
        wanted = [category] if isinstance(category, str) else list(category)
    except TypeError:
        wanted = []
    unknown = [c for c in wanted if c not in CATEGORIES]
    if unknown or not wanted:
        raise DataError(f"FashionIQ category must be one or more of {', '.join(CATEGORIES)}; "
                        f"got {category!r}")
    return tuple(c for c in CATEGORIES if c in wanted)


def _resolve_images(root: Path, names: Sequence[str],
                    split_paths: dict[str, Path]) -> dict[str, Path]:
    """``name -> images/<name>.jpg|.png`` for every name, each opened and verified;
    :class:`DataError` for a missing or unreadable one."""
    out: dict[str, Path] = {}
    for name in names:
        for ext in IMAGE_EXTS:
            path = root / "images" / f"{name}{ext}"
            if path.is_file():
                out[name] = path
                break
        else:
            raise DataError(f"image {root / 'images' / name}.jpg (or .png), listed in "
                            f"{split_paths[name]}, does not exist")
    verify_images(list(out.values()))
    return out


@register_dataset("fashioniq")
def build_fashioniq(root: str | Path | None, split: str, *,
                    category: str | Sequence[str] | None = None,
                    max_triplets: int | None = None, seed: int = 0,
                    validate_images: bool = True, recipe: Any = None) -> FashionIQ:
    """Split ``split`` ("train", "val" or "test") of the FashionIQ release at ``root``.

    ``category``: None for all of :data:`CATEGORIES` (the result then has ``parts``), a
    name or a list of names. ``max_triplets``/``seed`` subsample the train split only
    (:func:`subsample_queries` over the whole train query list); ``seed`` also fixes the
    training text drawn for each triplet (one stream per category, so a triplet's text
    depends neither on the other categories loaded nor on ``max_triplets``).
    ``validate_images`` checks that every image of the chosen split lists exists (as .jpg
    or .png) and that Pillow can open and verify it. ``recipe`` is a synthetic-only option
    and must be None.

    Raises :class:`DataError`, naming the file, for: a missing root, a missing or non-JSON
    caption/split file, a file of the wrong structure, a triplet naming an image absent
    from its category's split list, a missing or unreadable image; and for an unknown
    split or category.
    """
    no_extra_options("fashioniq", recipe=recipe)
    if split not in SPLITS:
        raise DataError(f"FashionIQ has splits {', '.join(SPLITS)}; got {split!r}")
    cats = _categories_of(category)
    root = check_root(root, "FashionIQ")

    per_cat: dict[str, tuple[list[Query], list[tuple[str, ...]], list[str]]] = {}
    split_of: dict[str, Path] = {}  # image name -> the split file listing it (first one)
    for cat in cats:
        split_path = root / "image_splits" / f"split.{cat}.{split}.json"
        cap_path = root / "captions" / f"cap.{cat}.{split}.json"
        images = _read_split_list(split_path)
        for name in images:
            split_of.setdefault(name, split_path)
        triplets = _read_caption_file(cap_path, split, set(images), split_path)
        queries, choices = [], []
        rng = random.Random(f"fashioniq:{seed}:{cat}")
        for cand, target, c1, c2 in triplets:
            if split == "train":
                forms: tuple[str, ...] = caption_forms(c1, c2)
                text = forms[rng.randrange(len(forms))]
            else:
                forms = (eval_text(c1, c2),)
                text = forms[0]
            queries.append(Query(reference=cand, target=target, text=text))
            choices.append(forms)
        per_cat[cat] = (queries, choices, images)

    gallery = list(split_of)
    image_paths = (_resolve_images(root, gallery, split_of)
                   if validate_images else {})

    all_queries = [q for cat in cats for q in per_cat[cat][0]]
    all_choices = [c for cat in cats for c in per_cat[cat][1]]
    all_cats = [cat for cat in cats for _ in per_cat[cat][0]]
    keep = (kept_indices(all_queries, max_triplets, seed) if split == "train"
            else list(range(len(all_queries))))
    queries = [all_queries[i] for i in keep]
    choices = [all_choices[i] for i in keep]
    category_of = [all_cats[i] for i in keep]

    parts = None
    if len(cats) > 1:
        parts = {}
        for cat in cats:
            idx = [i for i, c in enumerate(category_of) if c == cat]
            parts[cat] = FashionIQ(root, split, (cat,), [queries[i] for i in idx],
                                   [cat] * len(idx), [choices[i] for i in idx],
                                   list(per_cat[cat][2]), image_paths)
    return FashionIQ(root, split, cats, queries, category_of, choices, gallery, image_paths,
                     parts)
