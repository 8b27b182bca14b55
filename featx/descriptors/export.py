"""Descriptors out of featx, for pandas, Polars, DuckDB, FAISS or another language.

    featx export --images photos/ --net E --weights caffe --scales 256,384 --out photos.parquet
    featx export datasets/featx-cache/voc2007/D-torchvision.h5 --aggregate mean --out voc.parquet

Parquet (pyarrow): one row per image: `id`, `path`, and where the image set is labelled
`label` (class names, ';'-joined for several) and `splits` (the splits it is in, ';'-joined);
then the descriptors, either raw, one column per net and scale (`E@256`: the cached vector,
flip-averaged, not normalised), or with an aggregation one column `descriptor`: the scales
aggregated per net, the nets fused, L2-normalised, which is exactly what `featx svm` trains on.
Each is a fixed-size list of float32. The file's metadata holds what made the descriptors
(featx.descriptors.export.read_export gives it back).

NumPy (`--out DIR` with `--format npy`): DIR/descriptors.npy (n, dim) with an aggregation, or
DIR/<net>.npy (n, n_scales, dim) per net raw; DIR/metadata.csv (the same columns as above);
DIR/export.json (what made them, and which array is which).

Rows are written in chunks (`chunk_rows` images at a time), so memory stays flat for any size;
the file appears (renamed into place) only once complete. Images without a descriptor at every
scale asked (failed, or not computed yet) are left out and counted.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import atomic
from ..errors import CacheError, ConfigError
from ..extract.cache import DescriptorCache, usable_rows
from ..options import AGGREGATIONS
from .fusion import combine

FORMATS = ("parquet", "npy")
PROVENANCE_KEYS = ("net", "arch", "dim", "weights", "weights_digest", "preprocess", "flip", "dtype",
                   "interpolation", "featx_version")


@dataclass
class ExportSummary:
    path: Path
    rows: int
    columns: list
    skipped: dict = field(default_factory=dict)  # id -> why it has no row

    def __str__(self):
        left = (f"; left out {len(self.skipped)} image(s) without descriptors (first: "
                f"{next(iter(self.skipped))}: {next(iter(self.skipped.values()))})" if self.skipped else "")
        return f"{self.path}: {self.rows} images, columns {', '.join(self.columns)}{left}"


def _labels_and_splits(data, n_items):
    """Per item: its label text and splits, where each item is one labelled sample (VOC action's
    person boxes are not: there the item rows carry neither)."""
    labels = getattr(data, "labels", None)
    views = getattr(data, "views", {"image": None})
    if labels is None or set(views) != {"image"} or len(labels) != n_items:
        return None, None
    classes = data.classes
    if labels.ndim == 1:
        text = [classes[c] for c in labels]
    else:  # multilabel: positives (1); 0 is VOC's 'difficult', -1 absent
        text = [";".join(classes[c] for c in np.flatnonzero(row == 1)) for row in labels]
    member = [[] for _ in range(n_items)]
    for name, rows in data.splits.items():
        for r in rows:
            member[r].append(name)
    return text, [";".join(m) for m in member]


def write_export(caches: dict, out, images=None, scales=None, aggregate: str | None = None,
                 format: str | None = None, chunk_rows: int = 1024, hint: str | None = None,
                 rows=None) -> ExportSummary:
    """Write the descriptors of `caches` ({net: DescriptorCache or path}, fused in this order).

    images: an ImageSet or Dataset (featx.data.datasets): its images, in its order, with labels and
        splits where it has them; None: every image the (first) cache holds.
    scales: the scales to write [all the caches share]; aggregate: None (raw, per net and
        scale), "mean", "stack" or "max". format: "parquet" or "npy" [from out's suffix:
        .parquet, else a folder of .npy files].
    rows: export only these of the images (e.g. the rows of some splits: Dataset.rows_of).
    hint: the command that computes what the caches lack; given, images not computed yet (as
        opposed to failed) are an error that says it, before anything is written.
    """
    caches = {net: c if isinstance(c, DescriptorCache) else DescriptorCache(c) for net, c in caches.items()}
    if not caches:
        raise ConfigError("export needs at least one cache")
    out = Path(out)
    format = format or ("parquet" if out.suffix.lower() in (".parquet", ".pq") else "npy")
    if format not in FORMATS:
        raise ConfigError(f"format {format!r}: choose one of {', '.join(FORMATS)}")
    if aggregate is not None and aggregate not in AGGREGATIONS:
        raise ConfigError(f"aggregate {aggregate!r}: choose one of {', '.join(AGGREGATIONS)}, or none")
    common = sorted(set.intersection(*(set(c.scales) for c in caches.values())))
    scales = common if scales is None else [int(q) for q in scales]
    absent = [(net, q) for q in scales for net, c in caches.items() if q not in c.scales]
    if absent or not scales:
        net, q = absent[0] if absent else (next(iter(caches)), None)
        raise CacheError(f"{caches[net].path} holds no descriptors at Q={q} (it has {caches[net].scales})"
                         if absent else "the caches share no scale")
    first = next(iter(caches.values()))
    ids = list(images.ids) if images is not None else list(first.ids)
    paths = list(images.items) if images is not None else first.record().paths
    label, splits = _labels_and_splits(images, len(ids)) if images is not None else (None, None)
    asked = np.zeros(len(ids), bool)
    asked[np.arange(len(ids)) if rows is None else np.asarray(rows, dtype=np.int64)] = True
    where, ok, skipped = usable_rows(caches, ids, scales, asked)  # each image's row in each cache
    todo = [i for i, why in skipped.items() if why == "not computed"]
    if hint and todo:
        raise CacheError(f"{len(todo)} image(s) have no descriptor yet (first: {todo[0]}); compute them "
                         f"with:\n  {hint}")
    keep = np.flatnonzero(ok)
    meta = {"id": [ids[i] for i in keep], "path": [str(getattr(paths[i], "path", paths[i])) for i in keep]}
    if label is not None:
        meta["label"] = [label[i] for i in keep]
        meta["splits"] = [splits[i] for i in keep]
    provenance = {"featx_export": 1, "scales": scales, "aggregate": aggregate, "nets": list(caches),
                  "descriptors": {net: {k: c.attrs.get(k) for k in PROVENANCE_KEYS} for net, c in caches.items()}}

    def chunks():
        """(chunk of kept rows, {column: (rows, dim) float32}) in order."""
        for k in range(0, len(keep), chunk_rows):
            sel = keep[k:k + chunk_rows]
            per_net = {net: c.load(scales, rows=where[net][sel]) for net, c in caches.items()}
            if aggregate is None:
                yield sel, {f"{net}@{q}": x[:, j] for net, x in per_net.items() for j, q in enumerate(scales)}
            else:
                yield sel, {"descriptor": combine(per_net.values(), aggregate)}

    dims = ({f"{net}@{q}": c.dim for net, c in caches.items() for q in scales} if aggregate is None else
            {"descriptor": sum(c.dim * (len(scales) if aggregate == "stack" else 1) for c in caches.values())})
    writer = _write_parquet if format == "parquet" else _write_npy
    try:
        writer(out, meta, dims, chunks(), provenance, keep, caches)
    except OSError as e:  # a full disk, a read-only folder: the temporaries are gone
        raise atomic.write_error(out, e) from None
    return ExportSummary(out, len(keep), list(meta) + list(dims), skipped)


def _tmp(path: Path) -> Path:
    return atomic.temporary(path)


def _replace(tmp: Path, path: Path) -> None:
    """fsync and rename into place (featx.atomic): a reader sees the old file or the whole new one."""
    atomic.commit(tmp, path)


def _write_parquet(out, meta, dims, chunks, provenance, keep, caches):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([pa.field(k, pa.string()) for k in meta]
                       + [pa.field(c, pa.list_(pa.float32(), d)) for c, d in dims.items()],
                       metadata={"featx": json.dumps(provenance)})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(out)
    try:
        with pq.ParquetWriter(tmp, schema) as w:
            start = 0
            for sel, arrays in chunks:
                n = len(sel)
                cols = [pa.array(v[start:start + n], pa.string()) for v in meta.values()]
                cols += [pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(x, np.float32).ravel()),
                                                          dims[c]) for c, x in arrays.items()]
                w.write_table(pa.Table.from_arrays(cols, schema=schema))
                start += n
            if not len(keep):
                w.write_table(schema.empty_table())
        _replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _write_npy(out, meta, dims, chunks, provenance, keep, caches):
    out.mkdir(parents=True, exist_ok=True)
    n = len(keep)
    if "descriptor" in dims:
        arrays = {"descriptors.npy": ("descriptor", (n, dims["descriptor"]))}
    else:
        scales = provenance["scales"]
        arrays = {f"{net}.npy": (net, (n, len(scales), c.dim)) for net, c in caches.items()}
    tmps = {name: _tmp(out / name) for name in [*arrays, "metadata.csv", "export.json"]}
    try:
        maps = {name: np.lib.format.open_memmap(tmps[name], mode="w+", dtype=np.float32, shape=shape)
                for name, (_, shape) in arrays.items()}
        start = 0
        for sel, cols in chunks:
            for name, (what, _) in arrays.items():
                if what == "descriptor":
                    maps[name][start:start + len(sel)] = cols["descriptor"]
                else:
                    maps[name][start:start + len(sel)] = np.stack(
                        [cols[f"{what}@{q}"] for q in provenance["scales"]], axis=1)
            start += len(sel)
        for m in maps.values():
            m.flush()
        del maps
        with open(tmps["metadata.csv"], "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(list(meta))
            w.writerows(zip(*meta.values()))
        tmps["export.json"].write_text(json.dumps(dict(provenance, arrays={
            name: {"shape": list(shape), "axes": ["image", "net features"] if what == "descriptor"
                   else ["image", "scale", "feature"]} for name, (what, shape) in arrays.items()}), indent=2))
        for name, tmp in tmps.items():  # the metadata last: its presence says the export is whole
            if name != "export.json":
                _replace(tmp, out / name)
        _replace(tmps["export.json"], out / "export.json")
    finally:
        for tmp in tmps.values():
            tmp.unlink(missing_ok=True)


def read_export(path, column: str | None = None, as_frame: bool = False):
    """Read what `export` wrote: (ids, X) with X the (n, dim) float32 array of one descriptor
    column (the only one, or `column`: "descriptor", "E@256", ... or a .npy name's stem), or with
    as_frame a pandas DataFrame: the metadata columns and every descriptor column (one numpy
    array per row). The provenance is in DataFrame.attrs["featx"]."""
    path = Path(path)
    if path.is_dir():
        import pandas as pd
        info = json.loads((path / "export.json").read_text())
        meta = pd.read_csv(path / "metadata.csv", dtype=str, keep_default_na=False)
        arrays = {Path(name).stem: np.load(path / name, mmap_mode="r") for name in info["arrays"]}
        if as_frame:
            for name, a in arrays.items():
                meta[name] = list(np.asarray(a))
            meta.attrs["featx"] = info
            return meta
        name = _pick(column, list(arrays), path)
        return list(meta["id"]), np.asarray(arrays[name])
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    provenance = json.loads((table.schema.metadata or {}).get(b"featx", b"{}"))
    vectors = [f.name for f in table.schema if str(f.type).startswith("fixed_size_list")]
    if as_frame:
        frame = table.drop(vectors).to_pandas()
        for name in vectors:
            frame[name] = list(_matrix(table[name]))
        frame.attrs["featx"] = provenance
        return frame
    name = _pick(column, vectors, path)
    return table["id"].to_pylist(), _matrix(table[name])


def _pick(column, names, path):
    if column is None:
        if len(names) != 1:
            raise ConfigError(f"{path} holds {len(names)} descriptor columns ({', '.join(names)}): name one")
        return names[0]
    if column not in names:
        raise ConfigError(f"{path} has no descriptor column {column!r}; it has {', '.join(names)}")
    return column


def _matrix(chunked) -> np.ndarray:
    import pyarrow as pa
    arr = pa.concat_arrays(chunked.chunks) if chunked.num_chunks else pa.array([], chunked.type)
    return arr.flatten().to_numpy(zero_copy_only=False).reshape(len(arr), arr.type.list_size).astype(np.float32, copy=False)
