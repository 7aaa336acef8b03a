"""CIRR (Liu et al., 2021) as distributed: loader registered as ``"cirr"``.

Layout of the root a user passes in (DATASETS.md)::

    <root>/cirr/captions/cap.rc2.{train,val,test1}.json
    <root>/cirr/image_splits/split.rc2.{train,val,test1}.json
    <root>/train/<0..99>/<name>.png, <root>/dev/<name>.png, <root>/test1/<name>.png

A split file maps each image name to its path relative to ``<root>``
(``"dev-244-0-img0": "./dev/dev-244-0-img0.png"``). A caption entry is
``{"pairid", "reference", "target_hard", "target_soft", "caption",
"img_set": {"id", "members", "reference_rank", "target_rank"}}``; test1 entries have no
``target_hard``, ``target_soft`` or ``target_rank``.

The query text is the caption as written. Evaluation (``wrf4cir.evaluation``, protocol
``"cirr"``) ranks every image of the split, removes the query's reference, and scores the
subset recall over ``Query.members``.

Every check happens in :func:`build_cirr`: a bad release raises :class:`DataError`
naming the file before any training starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path, PurePosixPath
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

SPLITS: tuple[str, ...] = ("train", "val", "test1")
SPLIT_ALIASES: dict[str, str] = {"test": "test1"}


class CIRR:
    """One split of CIRR; satisfies ``CIRDataset``.

    Attributes:

    - ``name = "cirr"``, ``protocol = "cirr"``, ``split`` ("train", "val" or "test1"),
      ``root`` (absolute), ``parts = None``;
    - ``queries``: caption-file order (after the train subsample): ``reference``,
      ``target`` = ``target_hard`` (None on test1), ``text`` = ``caption``, ``pair_id`` =
      ``pairid``, ``members`` = ``img_set.members`` as a tuple;
    - ``img_set_ids[i]``: ``img_set.id`` of ``queries[i]``;
    - ``target_soft[i]``: ``target_soft`` of ``queries[i]`` (name -> 1.0/0.5/0.2/-1.0;
      ``{}`` on test1 or where the file has none);
    - ``gallery``: every image of the split file, in the file's key order;
    - ``caption_file``, ``split_file``: the two files read.
    """

    name = "cirr"
    protocol = "cirr"
    parts = None

    def __init__(self, root: Path, split: str, queries: list[Query], img_set_ids: list[int],
                 target_soft: list[dict[str, float]], paths: dict[str, str],
                 caption_file: Path, split_file: Path) -> None:
        self.root = root
        self.split = split
        self.queries = queries
        self.img_set_ids = img_set_ids
        self.target_soft = target_soft
        self.gallery = list(paths)
        self.caption_file = caption_file
        self.split_file = split_file
        self._paths = paths

    def __len__(self) -> int:
        return len(self.queries)

    def __repr__(self) -> str:
        return (f"CIRR(split={self.split!r}, queries={len(self.queries)}, "
                f"gallery={len(self.gallery)}, root={self.root})")

    def text_choices(self, i: int) -> tuple[str]:
        """The texts query ``i`` may take: a 1-tuple, its caption."""
        return (self.queries[i].text,)

    def image_path(self, name: str) -> Path:
        """The file of image ``name``: its split-file path resolved against ``root``."""
        if name not in self._paths:
            raise DataError(f"image {name!r} is not in {self.split_file}")
        return self.root / self._paths[name]

    def image(self, name: str) -> Image.Image:
        """Image ``name`` (of this split) as RGB; :class:`DataError` naming the file if it
        is missing or unreadable."""
        path = self.image_path(name)
        if not path.is_file():
            raise DataError(f"image {path} (listed in {self.split_file}) does not exist")
        return load_image(path)


def _read_split_file(path: Path) -> dict[str, str]:
    data = read_json(path, "CIRR split file")
    if not isinstance(data, dict):
        raise DataError(f"CIRR split file {path} must hold a JSON object mapping image names "
                        f"to paths, got {type(data).__name__}")
    for name, rel in data.items():
        if not isinstance(rel, str) or not rel:
            raise DataError(f"{path}: the path of image {name!r} must be a string, got {rel!r}")
        parts = PurePosixPath(rel).parts
        if PurePosixPath(rel).is_absolute() or ".." in parts or "\\" in rel:
            raise DataError(f"{path}: the path of image {name!r} must be relative to the root "
                            f"without '..', got {rel!r}")
    return data


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _parse_entry(rec: Any, i: int, path: Path, split: str, images: dict[str, str],
                 split_path: Path) -> tuple[Query, int, dict[str, float]]:
    """One caption entry, checked, as ``(query, img_set id, target_soft)``."""
    if not isinstance(rec, dict):
        raise DataError(f"{path}: entry {i} is not a JSON object")
    keys = ["pairid", "reference", "caption", "img_set"]
    if split != "test1":
        keys.append("target_hard")
    missing = [k for k in keys if k not in rec]
    if missing:
        raise DataError(f"{path}: entry {i} lacks key(s) {', '.join(missing)}")
    pairid = rec["pairid"]
    if not _is_int(pairid):
        raise DataError(f"{path}: entry {i} pairid must be an integer, got {pairid!r}")
    where = f"{path}: pairid {pairid}"
    if not isinstance(rec["caption"], str):
        raise DataError(f"{where}: caption must be a string, got {rec['caption']!r}")
    img_set = rec["img_set"]
    if not isinstance(img_set, dict) or "id" not in img_set or "members" not in img_set:
        raise DataError(f"{where}: img_set must be an object with 'id' and 'members'")
    members = img_set["members"]
    if not isinstance(members, list) or not all(isinstance(m, str) for m in members):
        raise DataError(f"{where}: img_set.members must be a list of image names")
    if not _is_int(img_set["id"]):
        raise DataError(f"{where}: img_set.id must be an integer, got {img_set['id']!r}")
    names = {"reference": rec["reference"]}
    if split != "test1":
        names["target_hard"] = rec["target_hard"]
    for key, name in names.items():
        if not isinstance(name, str):
            raise DataError(f"{where}: {key} must be a string, got {name!r}")
        if name not in images:
            raise DataError(f"{where}: {key} {name!r} is not in {split_path}")
    for m in members:
        if m not in images:
            raise DataError(f"{where}: img_set member {m!r} is not in {split_path}")
    target = names.get("target_hard")
    if split == "val":  # DATASETS.md: in val, reference and target are among the members
        for key, name in names.items():
            if name not in members:
                raise DataError(f"{where}: {key} {name!r} is not among its img_set.members "
                                f"{members}")
    soft: dict[str, float] = {}
    if split != "test1" and "target_soft" in rec:
        raw = rec["target_soft"]
        if (not isinstance(raw, dict)
                or not all(isinstance(v, int | float) and not isinstance(v, bool)
                           for v in raw.values())):
            raise DataError(f"{where}: target_soft must map image names to numbers, "
                            f"got {raw!r}")
        soft = {k: float(v) for k, v in raw.items()}
    query = Query(reference=rec["reference"], target=target, text=rec["caption"],
                  pair_id=pairid, members=tuple(members))
    return query, img_set["id"], soft


def _check_images(root: Path, paths: dict[str, str], split_path: Path) -> None:
    files = [root / rel for rel in paths.values()]
    for name, path in zip(paths, files, strict=True):
        if not path.is_file():
            raise DataError(f"image {path} of {name!r}, listed in {split_path}, does not exist")
    verify_images(files)


@register_dataset("cirr")
def build_cirr(root: str | Path | None, split: str, *, max_triplets: int | None = None,
               seed: int = 0, validate_images: bool = True, recipe: Any = None,
               category: str | Sequence[str] | None = None) -> CIRR:
    """Split ``split`` ("train", "val", or "test1", alias "test") of the CIRR release at
    ``root`` (the folder holding ``cirr/``, ``train/``, ``dev/``, ``test1/``).

    ``max_triplets``/``seed`` subsample the train split only (:func:`subsample_queries`).
    ``validate_images`` checks that every image of the split file exists and that Pillow
    can open and verify it. ``recipe`` and ``category`` are other datasets' options and
    must be None.

    Raises :class:`DataError`, naming the file, for: a missing root, a missing or non-JSON
    caption/split file, a file of the wrong structure, a pairid used twice, an entry whose
    reference, target or img_set member is not in the split file, a val entry whose
    reference or target is not among its img_set members (naming the pairid), a missing
    or unreadable image; and for an unknown split.
    """
    no_extra_options("cirr", recipe=recipe, category=category)
    canonical = SPLIT_ALIASES.get(split, split)
    if canonical not in SPLITS:
        raise DataError(f"CIRR has splits {', '.join(SPLITS)} (or 'test' for test1); "
                        f"got {split!r}")
    root = check_root(root, "CIRR")
    split_path = root / "cirr" / "image_splits" / f"split.rc2.{canonical}.json"
    cap_path = root / "cirr" / "captions" / f"cap.rc2.{canonical}.json"
    paths = _read_split_file(split_path)
    data = read_json(cap_path, "CIRR caption file")
    if not isinstance(data, list):
        raise DataError(f"CIRR caption file {cap_path} must hold a JSON list of entries, "
                        f"got {type(data).__name__}")
    queries, set_ids, softs = [], [], []
    seen: set[int] = set()
    for i, rec in enumerate(data):
        query, set_id, soft = _parse_entry(rec, i, cap_path, canonical, paths, split_path)
        if query.pair_id in seen:
            raise DataError(f"{cap_path}: pairid {query.pair_id} occurs twice")
        seen.add(query.pair_id)  # type: ignore[arg-type]
        queries.append(query)
        set_ids.append(set_id)
        softs.append(soft)
    if validate_images:
        _check_images(root, paths, split_path)

    keep = (kept_indices(queries, max_triplets, seed) if canonical == "train"
            else list(range(len(queries))))
    return CIRR(root, canonical, [queries[i] for i in keep], [set_ids[i] for i in keep],
                [softs[i] for i in keep], paths, cap_path, split_path)
