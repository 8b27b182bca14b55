"""The benchmark datasets (docs/protocol.md section 4), read from their standard on-disk layouts.

Under the data root (--root, $FEATX_DATA_ROOT, default ./datasets):
    voc2007/VOCdevkit/VOC2007        trainval + test archives unpacked together
    voc2012/VOCdevkit/VOC2012        classification (ImageSets/Main) and action (ImageSets/Action)
    caltech101/101_ObjectCategories  102 folders: 101 objects + BACKGROUND_Google
    caltech256/256_ObjectCategories  257 folders NNN.<class>, 257.clutter included
plus two generic forms: "folder:DIR" (a folder per class) and "csv:FILE" (path,label[;label...][,split]).

A Dataset lists the images to extract (`items`, `ids`: the HDF5 cache's rows) and the labelled
samples built on them: a VOC or Caltech sample is one image; a VOC action sample is one person,
seen as the whole image and as the person's box (`views`).
"""
from __future__ import annotations

import csv
import io
import os
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import file_digest, write_text
from ..errors import DatasetError
from ..paths import data_root, image_set_key, shipped_splits
from .images import IMAGE_EXTENSIONS, Crop

VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor")
ACTIONS = ("jumping", "phoning", "playinginstrument", "reading", "ridingbike", "ridinghorse",
           "running", "takingphoto", "usingcomputer", "walking")
CALTECH = {"caltech101": {"folder": "101_ObjectCategories", "train": 30, "test": 50, "classes": 102},
           "caltech256": {"folder": "256_ObjectCategories", "train": 60, "test": None, "classes": 257}}
N_SPLITS, VAL_FRACTION = 3, 0.2


@dataclass
class ImageSet:
    """Images to extract, unlabelled: a folder (searched recursively) or a list file.

    source: where it lives (its cache is found by it: featx.paths.cache_path); cli: how
    featx extract names it (for hints that suggest a command)."""

    name: str
    items: list
    ids: list
    source: Path | None = None
    cli: tuple = ()

    @property
    def key(self) -> str:
        return image_set_key(self.name, self.source)


def load_image_list(source: Path) -> ImageSet:
    """A folder (recursively, image extensions) or a text file with one path per line.

    In a folder, every entry named like an image is an item, whatever it is: a dangling
    symlink or a directory called x.jpg is then recorded as that image's failure, not skipped
    in silence. Symlinked folders are not followed (no loops)."""
    source = Path(source)
    cli = ("--images", str(source.resolve()))
    if source.is_dir():
        paths = []
        for folder, dirs, files in os.walk(source, followlinks=False):
            paths += [Path(folder) / n for n in dirs + files if Path(n).suffix.lower() in IMAGE_EXTENSIONS]
        paths.sort()
        if not paths:
            raise DatasetError(f"{source}: no images found (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return ImageSet(source.resolve().name, [str(p) for p in paths],
                        [p.relative_to(source).as_posix() for p in paths], source, cli)
    if source.is_file():
        items, ids = [], []
        try:
            text = source.read_text(encoding="utf-8-sig", errors="surrogateescape")
        except OSError as e:
            raise DatasetError(f"{source}: cannot read ({e.strerror or e})") from None
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                p = Path(line).expanduser()
                items.append(str(p if p.is_absolute() else source.parent / p))
                ids.append(line)
        if not items:
            raise DatasetError(f"{source}: the list names no images")
        return ImageSet(source.stem, items, ids, source, cli)
    raise DatasetError(f"{source}: no such folder or list file")


@dataclass
class Dataset:
    """Images to extract and the labelled samples of one benchmark.

    labels: multilabel -> (n_samples, n_classes) int8, 1 positive, -1 negative, 0 difficult
            (left out of that class's evaluation); multiclass -> (n_samples,) class index.
    splits: {name: sample indices}. views: {name: (n_samples,) row in items per sample}.
    source: where a folder or CSV collection lives (None for a benchmark: its name finds its
    cache); cli: how featx extract names it (--dataset NAME [--root ROOT]).
    """

    name: str
    path: Path
    items: list
    ids: list
    classes: tuple
    task: str  # "multilabel" or "multiclass"
    labels: np.ndarray
    splits: dict
    views: dict = field(default_factory=dict)
    source: Path | None = None
    cli: tuple = ()

    def __post_init__(self):
        if not self.views:
            self.views = {"image": np.arange(len(self.items))}

    @property
    def key(self) -> str:
        """The folder name of its caches (featx.paths.image_set_key)."""
        return image_set_key(self.name, self.source)

    def __len__(self):
        return len(self.labels)

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise DatasetError(f"{self.name} has no split {name!r}; it has {', '.join(self.splits)}")
        return self.splits[name]

    def rows_of(self, split_names, views=None) -> np.ndarray:
        """Item rows (cache rows) that the samples of these splits need, in these views (all)."""
        samples = np.unique(np.concatenate([self.split(s) for s in split_names]))
        views = self.views if views is None else {v: self.views[v] for v in views}
        return np.unique(np.concatenate([v[samples] for v in views.values()]))

    def protocol_rows(self, views=None) -> np.ndarray:
        """The rows the evaluation protocol reads: every sample of some split (Caltech's three
        splits use 7,107 of Caltech-101's 9,144 images), in these views (all)."""
        return self.rows_of(list(self.splits), views)

    def describe(self) -> str:
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.splits.items())
        return (f"{self.name}: {len(self.items)} images to extract, {len(self)} samples, "
                f"{len(self.classes)} classes ({self.task}); splits: {sizes}")


def load_dataset(name: str, root=None) -> Dataset:
    """A benchmark under the data root, folder:DIR (a folder per class) or csv:FILE."""
    if name.startswith("folder:"):
        return load_class_folders(Path(name[len("folder:"):]))
    if name.startswith("csv:"):
        return load_csv(Path(name[len("csv:"):]))
    data = spec_of(name).load(data_root(root))
    given = ("--root", str(Path(root).resolve())) if root else ()
    return replace(data, cli=("--dataset", name) + given)


def spec_of(name: str) -> "DatasetSpec":
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}, "
                           "folder:DIR or csv:FILE")
    return DATASETS[name]


# -- VOC classification -------------------------------------------------------------------------

def _voc_dir(root: Path, year: str, name: str) -> Path:
    path = root / f"voc{year}" / "VOCdevkit" / f"VOC{year}"
    if not (path / "JPEGImages").is_dir():
        raise DatasetError(f"{name} not found: expected {path}/JPEGImages and ImageSets/ "
                           f"(get it with: featx datasets download {name} --root {root})")
    return path


def _read_lines(path: Path):
    """(line number, fields) for each non-blank line."""
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                yield n, line.split()


def load_voc(root: Path, year: str) -> Dataset:
    name = f"voc{year}"
    base = _voc_dir(root, year, name)
    main = base / "ImageSets" / "Main"
    split_names = [s for s in ("train", "val", "trainval", "test") if (main / f"{s}.txt").is_file()]
    if not split_names:
        raise DatasetError(f"{main}: no split lists (train.txt, val.txt, trainval.txt, test.txt)")
    ids, row, members = [], {}, {}
    for s in split_names:
        members[s] = []
        for n, fields in _read_lines(main / f"{s}.txt"):
            image_id = fields[0]
            if image_id not in row:
                if not (base / "JPEGImages" / f"{image_id}.jpg").is_file():
                    raise DatasetError(f"{main / f'{s}.txt'}:{n}: image {image_id} is not in {base / 'JPEGImages'}")
                row[image_id] = len(ids)
                ids.append(image_id)
            members[s].append(row[image_id])
    members_set = {s: set(m) for s, m in members.items()}
    labels = np.zeros((len(ids), len(VOC_CLASSES)), np.int8)
    for s in split_names:
        for c, cls in enumerate(VOC_CLASSES):
            path = main / f"{cls}_{s}.txt"
            if not path.is_file():
                raise DatasetError(f"{path} is missing: the {s} split has no {cls} labels")
            seen = set()
            for n, fields in _read_lines(path):
                if len(fields) != 2 or fields[1] not in ("1", "0", "-1"):
                    raise DatasetError(f"{path}:{n}: expected '<image id> <1|0|-1>', got {' '.join(fields)!r}")
                r = row.get(fields[0])
                if r is None or r not in members_set[s]:
                    raise DatasetError(f"{path}:{n}: image {fields[0]} is not in {s}.txt")
                labels[r, c] = int(fields[1])
                seen.add(r)
            if len(seen) != len(members_set[s]):
                first = min(members_set[s] - seen)
                raise DatasetError(f"{path}: no label for image {ids[first]}")
    items = [str(base / "JPEGImages" / f"{i}.jpg") for i in ids]
    splits = {s: np.asarray(m, dtype=np.int64) for s, m in members.items()}
    return Dataset(name, base, items, ids, VOC_CLASSES, "multilabel", labels, splits)


# -- VOC 2012 action ----------------------------------------------------------------------------

def load_voc_action(root: Path) -> Dataset:
    """One sample per annotated person: its image, its box and its action flags (10 + other)."""
    base = _voc_dir(root, "2012", "voc2012-action")
    action_sets = base / "ImageSets" / "Action"
    split_names = [s for s in ("train", "val", "trainval") if (action_sets / f"jumping_{s}.txt").is_file()]
    if not split_names:
        raise DatasetError(f"{action_sets}: no action split files (jumping_train.txt, ...)")
    persons, members = {}, {}
    for s in split_names:
        members[s] = set()
        for action in ACTIONS:
            path = action_sets / f"{action}_{s}.txt"
            if not path.is_file():
                raise DatasetError(f"{path} is missing")
            for n, fields in _read_lines(path):
                if len(fields) != 3 or not fields[1].isdigit() or fields[2] not in ("1", "0", "-1"):
                    raise DatasetError(f"{path}:{n}: expected '<image id> <person index> <1|0|-1>', "
                                       f"got {' '.join(fields)!r}")
                key = (fields[0], int(fields[1]))
                persons.setdefault(key, None)
                members[s].add(key)
    keys = sorted(persons)
    classes = ACTIONS + ("other",)
    labels = np.full((len(keys), len(classes)), -1, np.int8)
    boxes, annotations = [], {}
    for k, (image_id, index) in enumerate(keys):
        if image_id not in annotations:
            annotations[image_id] = _voc_objects(base / "Annotations" / f"{image_id}.xml")
        objects = annotations[image_id]
        if not 1 <= index <= len(objects):
            raise DatasetError(f"{base / 'Annotations' / f'{image_id}.xml'}: no person #{index} "
                               f"(the file has {len(objects)} objects)")
        box, flags, where = objects[index - 1]
        if flags is None:
            raise DatasetError(f"{where}: person #{index} has no <actions> element")
        unknown = set(flags) - set(classes)
        if unknown:
            raise DatasetError(f"{where}: unknown action {sorted(unknown)[0]!r} for person #{index}")
        labels[k] = [1 if flags.get(a) == 1 else -1 for a in classes]
        boxes.append(box)
    image_ids = sorted({i for i, _ in keys})
    image_row = {i: r for r, i in enumerate(image_ids)}
    for i in image_ids:
        if not (base / "JPEGImages" / f"{i}.jpg").is_file():
            raise DatasetError(f"{action_sets}: image {i} is not in {base / 'JPEGImages'}")
    items = [str(base / "JPEGImages" / f"{i}.jpg") for i in image_ids]
    items += [Crop(str(base / "JPEGImages" / f"{i}.jpg"), b) for (i, _), b in zip(keys, boxes)]
    ids = image_ids + [f"{i}/person{n}" for i, n in keys]
    key_row = {key: k for k, key in enumerate(keys)}
    splits = {s: np.asarray(sorted(key_row[key] for key in m), dtype=np.int64) for s, m in members.items()}
    views = {"image": np.asarray([image_row[i] for i, _ in keys]),
             "box": len(image_ids) + np.arange(len(keys))}
    return Dataset("voc2012-action", base, items, ids, classes, "multilabel", labels, splits, views)


def _voc_objects(path: Path):
    """[(crop box, {action: 0/1} or None, path)] for every <object>, in file order."""
    if not path.is_file():
        raise DatasetError(f"{path} is missing (needed for the person boxes)")
    try:
        tree = ET.parse(path)
    except ET.ParseError as e:
        raise DatasetError(f"{path}: not valid XML ({e})") from None
    out = []
    for obj in tree.getroot().iter("object"):
        bb = obj.find("bndbox")
        try:
            x1, y1, x2, y2 = (float(bb.find(t).text) for t in ("xmin", "ymin", "xmax", "ymax"))
        except (AttributeError, TypeError, ValueError):
            raise DatasetError(f"{path}: an object has no valid <bndbox>") from None
        # VOC boxes are 1-based and inclusive; Crop boxes are 0-based, end-exclusive.
        box = (int(round(x1)) - 1, int(round(y1)) - 1, int(round(x2)), int(round(y2)))
        actions = obj.find("actions")
        flags = None if actions is None else {a.tag: int(float(a.text)) for a in actions}
        out.append((box, flags, path))
    return out


# -- Caltech ------------------------------------------------------------------------------------

def _caltech_dir(root: Path, name: str) -> Path:
    folder = CALTECH[name]["folder"]
    for path in (root / name / folder, root / folder):
        if path.is_dir():
            return path
    raise DatasetError(f"{name} not found: expected {root / name / folder}/<class>/*.jpg "
                       f"(get it with: featx datasets download {name} --root {root})")


def load_caltech(root: Path, name: str, splits_dir: Path | None = None) -> Dataset:
    """All JPEGs of every class folder (stray non-image files, such as the official archive's
    BACKGROUND_Google/tmp, are ignored); three splits (train / val / test per split).

    Splits come from the files featx ships for this dataset (they pin the exact images), else
    from ROOT/splits/<name>/, drawn by the seeded rule the first time; either way each file is
    checked against the tree."""
    base = _caltech_dir(root, name)
    spec = CALTECH[name]
    classes = tuple(sorted(p.name for p in base.iterdir() if p.is_dir()))
    if not classes:
        raise DatasetError(f"{base}: no class folders")
    ids, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p.name for p in (base / cls).iterdir() if p.suffix.lower() == ".jpg" and p.is_file())
        ids += [f"{cls}/{f}" for f in files]
        labels += [c] * len(files)
    labels = np.asarray(labels, dtype=np.int64)
    items = [str(base / i) for i in ids]
    shipped = shipped_splits(name) if splits_dir is None else None
    splits_dir = splits_dir or shipped or root / "splits" / name
    splits = {}
    for k in range(1, N_SPLITS + 1):
        path = splits_dir / f"split{k}.csv"
        if not path.is_file():
            if shipped:
                raise DatasetError(f"{path} is missing: featx's split files for {name} are incomplete "
                                   "(reinstall featx)")
            split = seeded_split(labels, classes, k, spec["train"], spec["test"], where=base)
            write_split(path, {s: [ids[i] for i in split[s]] for s in ("train", "val", "test")})
        splits.update({f"{sub}{k}": rows for sub, rows in read_split(path, ids, base).items()})
    return Dataset(name, base, items, ids, classes, "multiclass", labels, splits)


def seeded_split(labels: np.ndarray, classes, seed: int, n_train: int | None = None,
                 n_test: int | None = None, where=None) -> dict[str, np.ndarray]:
    """featx's one split rule, for every dataset without official splits: per class (a
    multi-label collection is one group), shuffle with seed `seed`, take the first n_train
    (default: half) to train, 20% of those (at least 1) held out to choose C, then the next
    n_test (default: all the rest) to test. Returns sorted rows per subset, and trainval."""
    rng = np.random.default_rng(seed)
    groups = ([np.flatnonzero(labels == c) for c in range(len(classes))] if labels.ndim == 1
              else [np.arange(len(labels))])
    part = {"train": [], "val": [], "test": []}
    for c, rows in enumerate(groups):
        what = f"{where}/{classes[c]}" if labels.ndim == 1 else str(where)
        if n_train is None and len(rows) < 4:
            raise DatasetError(f"{what}: {len(rows)} images; at least 4 are needed to train, "
                               "choose C and test")
        if n_train is not None and len(rows) <= n_train:
            raise DatasetError(f"{what}: {len(rows)} images, but the protocol trains on "
                               f"{n_train} per class and needs at least one more to test")
        rows = rows[rng.permutation(len(rows))]
        n = len(rows) // 2 if n_train is None else n_train
        n_val = max(1, int(round(VAL_FRACTION * n)))
        part["val"] += list(rows[:n_val])
        part["train"] += list(rows[n_val:n])
        part["test"] += list(rows[n:] if n_test is None else rows[n:n + n_test])
    out = {name: np.sort(np.asarray(rows, dtype=np.int64)) for name, rows in part.items()}
    out["trainval"] = np.union1d(out["train"], out["val"])
    return out


def numbered_splits(labels, classes, n_splits: int = N_SPLITS, where=None) -> dict:
    """{train1, val1, trainval1, test1, train2, ...}: seeded_split with seeds 1..n_splits."""
    return {f"{name}{k}": rows for k in range(1, n_splits + 1)
            for name, rows in seeded_split(labels, classes, k, where=where).items()}


def write_split(path: Path, split: dict):
    """A split file (id, subset per row) written whole or not at all."""
    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["id", "subset"])
    for subset in ("train", "val", "test"):
        for i in sorted(split[subset]):
            w.writerow([i, subset])
    write_text(path, text.getvalue())


def read_split(path: Path, ids, tree=None) -> dict[str, np.ndarray]:
    """{train, val, trainval, test: rows}; trainval = train + val (the whole training part)."""
    row = {i: r for r, i in enumerate(ids)}
    out = {"train": [], "val": [], "test": []}
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != ["id", "subset"]:
            raise DatasetError(f"{path}:1: expected the header 'id,subset', got {header}")
        for n, rec in enumerate(reader, 2):
            if len(rec) != 2 or rec[1] not in out:
                raise DatasetError(f"{path}:{n}: expected '<image id>,<train|val|test>', got {','.join(rec)!r}")
            if rec[0] not in row:
                raise DatasetError(f"{path}:{n}: image {rec[0]} is not in the dataset"
                                   + (f" at {tree} (is the copy there complete?)" if tree else ""))
            out[rec[1]].append(row[rec[0]])
    out = {k: np.asarray(sorted(v), dtype=np.int64) for k, v in out.items()}
    out["trainval"] = np.union1d(out["train"], out["val"])
    return out


# -- generic ------------------------------------------------------------------------------------

def load_class_folders(path: Path) -> Dataset:
    """DIR/<class>/<image>: one class per folder; three seeded held-out splits (numbered_splits)."""
    if not path.is_dir():
        raise DatasetError(f"{path}: no such folder (expected DIR/<class>/<image files>)")
    classes = tuple(sorted(p.name for p in path.iterdir() if p.is_dir()))
    ids, labels = [], []
    for c, cls in enumerate(classes):
        files = sorted(p.name for p in (path / cls).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        ids += [f"{cls}/{f}" for f in files]
        labels += [c] * len(files)
    if not ids:
        raise DatasetError(f"{path}: no images in class folders")
    labels = np.asarray(labels, dtype=np.int64)
    return Dataset(path.resolve().name, path, [str(path / i) for i in ids], ids, classes, "multiclass",
                   labels, numbered_splits(labels, classes, where=path), source=path,
                   cli=("--dataset", f"folder:{path.resolve()}"))


def load_csv(path: Path) -> Dataset:
    """CSV with header path,labels[,split]; labels separated by ';' (several: multi-label)."""
    if not path.is_file():
        raise DatasetError(f"{path}: no such CSV file")
    rows, first_line = [], {}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header[:2] != ["path", "labels"]:
                raise DatasetError(f"{path}:1: expected the header 'path,labels[,split]', got {','.join(header)!r}")
            for n, rec in enumerate(reader, 2):
                if not rec:
                    continue
                labels = [l.strip() for l in rec[1].split(";") if l.strip()] if len(rec) > 1 else []
                if len(rec) != len(header) or not labels or not rec[0].strip():
                    raise DatasetError(f"{path}:{n}: expected {len(header)} fields: a path and at least one "
                                       f"label (several separated by ';'), got {','.join(rec)[:200]!r}")
                if rec[0].strip() in first_line:
                    raise DatasetError(f"{path}:{n}: {rec[0].strip()!r} is listed already (line "
                                       f"{first_line[rec[0].strip()]}); give each image once")
                first_line[rec[0].strip()] = n
                rows.append((rec[0].strip(), labels, rec[2].strip() if len(header) > 2 else "all"))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start}: {e.object[e.start:e.start + 1]!r}); "
                           "save the CSV as UTF-8") from None
    except csv.Error as e:
        raise DatasetError(f"{path}:{reader.line_num}: not a valid CSV row ({e})") from None
    if not rows:
        raise DatasetError(f"{path}: no rows")
    classes = tuple(sorted({l for _, ls, _ in rows for l in ls}))
    multilabel = any(len(ls) > 1 for _, ls, _ in rows)
    index = {c: i for i, c in enumerate(classes)}
    if multilabel:
        labels = np.full((len(rows), len(classes)), -1, np.int8)
        for r, (_, ls, _) in enumerate(rows):
            labels[r, [index[l] for l in ls]] = 1
    else:
        labels = np.asarray([index[ls[0]] for _, ls, _ in rows])
    ids = [p for p, _, _ in rows]
    items = [str(Path(p) if Path(p).is_absolute() else path.parent / p) for p in ids]
    splits = {}
    for r, (_, _, s) in enumerate(rows):
        splits.setdefault(s, []).append(r)
    splits = {k: np.asarray(v, dtype=np.int64) for k, v in splits.items()}
    if set(splits) == {"all"}:  # no split column: held-out splits as for a class folder
        splits = numbered_splits(labels, classes, where=path)
    elif "train" not in splits or not ({"val", "test"} & set(splits)):
        raise DatasetError(f"{path}: the split column names {', '.join(sorted(splits))}; "
                           "use train and test (and optionally val), or leave the column out")
    return Dataset(path.stem, path.parent, items, ids, classes, "multilabel" if multilabel else "multiclass",
                   labels, splits, source=path, cli=("--dataset", f"csv:{path.resolve()}"))


# -- registry, download -------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetSpec:
    """What featx knows of one benchmark: how to read it, how big the official archives are,
    where they come from, and how it is scored."""

    name: str
    load: Callable[[Path], Dataset]
    metric: str  # a key of featx.evaluate.metrics.METRICS: "map" (VOC) or "mcr" (Caltech: mean class recall)
    images: int | None  # images in the official archives (None: not a fixed count)
    archives: tuple  # ((url, md5), ...)
    folder: str = ""  # under the data root [name]

    @property
    def dir(self) -> str:
        return self.folder or self.name


VOC_URL = "https://thor.robots.ox.ac.uk/pascal/VOC"
VOC2012_TAR = ((f"{VOC_URL}/voc2012/VOCtrainval_11-May-2012.tar", "6cd6e144f989b92b3379bac3b3de84fd"),)
# Image counts are those of the official archives (JPEGs only): Caltech-101 holds 9,144
# (8,677 in the 101 object classes + 467 BACKGROUND_Google); its web page says 9,146.
DATASETS = {s.name: s for s in (
    DatasetSpec("voc2007", lambda root: load_voc(root, "2007"), "map", 9963,
                ((f"{VOC_URL}/voc2007/VOCtrainval_06-Nov-2007.tar", "c52e279531787c972589f7e41ab4ae64"),
                 (f"{VOC_URL}/voc2007/VOCtest_06-Nov-2007.tar", "b6e924de25625d8de591ea690078ad9f"))),
    DatasetSpec("voc2012", lambda root: load_voc(root, "2012"), "map", 11540, VOC2012_TAR),
    DatasetSpec("voc2012-action", load_voc_action, "map", None, VOC2012_TAR, folder="voc2012"),
    DatasetSpec("caltech101", lambda root: load_caltech(root, "caltech101"), "mcr", 9144,
                (("https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                  "3138e1922a9193bfa496528edbbc45d0"),)),
    DatasetSpec("caltech256", lambda root: load_caltech(root, "caltech256"), "mcr", 30607,
                (("https://data.caltech.edu/records/nyy15-4j048/files/256_ObjectCategories.tar",
                  "67b4f42ca05d46448c6bb8ecd2220f6d"),)),
)}


def download(name: str, root=None, progress: bool = True) -> Path:
    """Fetch (resuming partial files), verify md5 and unpack a benchmark's official archives."""
    from torchvision.datasets.utils import extract_archive
    from tqdm.auto import tqdm

    spec = spec_of(name)
    root = data_root(root)
    target = root / spec.dir
    target.mkdir(parents=True, exist_ok=True)
    for url, md5 in spec.archives:
        archive = target / url.rsplit("/", 1)[1]
        if not (archive.is_file() and _md5(archive) == md5):
            _fetch_resumable(url, archive, progress, tqdm)
            if _md5(archive) != md5:
                archive.rename(archive.with_suffix(archive.suffix + ".bad"))
                raise DatasetError(f"{url}: downloaded file fails its md5 check (kept as {archive}.bad)")
        extract_archive(str(archive), str(target))
        if name == "caltech101":  # the zip holds 101_ObjectCategories.tar.gz
            inner = target / "caltech-101" / "101_ObjectCategories.tar.gz"
            if inner.is_file():
                extract_archive(str(inner), str(target))
    return target


def _fetch_resumable(url: str, dest: Path, progress: bool, tqdm):
    part = dest.with_suffix(dest.suffix + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except (urllib.error.URLError, OSError) as e:
        raise DatasetError(f"cannot download {url} ({getattr(e, 'reason', e)}). Download it by hand "
                           f"into {dest.parent}, or unpack the dataset there yourself "
                           f"(see `featx datasets ls` for the expected layout)") from None
    with response:
        if have and response.status != 206:  # the server ignored the range: start over
            have = 0
        total = int(response.headers.get("Content-Length", 0)) + have
        with open(part, "ab" if have else "wb") as f, tqdm(total=total or None, initial=have, unit="B",
                                                          unit_scale=True, desc=dest.name,
                                                          disable=not progress) as bar:
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    os.replace(part, dest)


def _md5(path: Path) -> str:
    return file_digest(path, "md5")
