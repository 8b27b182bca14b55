"""Saved classifiers, in a form whose loading runs no code.

`featx svm` writes, beside its results, RUN.model.json (what the descriptor is: nets, weights
by source, file name and digest, preprocessing, flip, scales, aggregation, compute type; the
classes; what the final fit used; checksums of itself and of the arrays) and RUN.model.npz
(the SVMs' coefficients, plain arrays). `read_model` reads them with json and numpy
(allow_pickle=False), checking every field (ModelRecord), for featx predict; `load_model`
rebuilds a scikit-learn Pipeline from them:

    Pipeline([("vgg", VGGDescriptor(...)), ("svm", OneVsRestSVM(...) fitted)])

so `featx predict` never unpickles anything: a model file from someone else cannot run code.
(RUN.joblib, the same Pipeline pickled for Python users, is never read by featx.)
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..atomic import check_writable, replacing, write_bytes, write_text
from ..config import DescriptorSpec, FieldError, ReadsDescriptor
from ..descriptors.descriptor import Descriptor
from ..descriptors.fusion import combine
from ..errors import ConfigError
from ..net.specs import default_weights, get_spec, label_of
from ..net.weights import NAMED_SOURCES, WEIGHT_SOURCES, describe_weights, find_file
from ..paths import cache_path
from .results import write_result

FORMAT = "featx-model"
FORMAT_VERSION = 2  # 2 (featx 0.7): weights by source and digest, the final fit; 1 is read too


def model_paths(path) -> tuple[Path, Path]:
    """RUN.model.json and RUN.model.npz from any of RUN, RUN.joblib, RUN.model.json/.npz."""
    path = Path(path)
    name = path.name
    for suffix in (".model.json", ".model.npz", ".joblib", ".json", ".md", ".csv"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.with_name(f"{name}.model.json"), path.with_name(f"{name}.model.npz")


def model_record(result, trained_on: str) -> dict:
    """What a saved classifier needs besides its arrays, from a protocol's Result: the
    descriptor (nets, scales, aggregation, flip, compute type, and per net the weights by source,
    file name and tensor digest: never a path of the machine that trained it), the classes,
    and what it was fit on with which C."""
    cfg, made = result.config, result.caches  # cfg.flip: the caches' (experiment.CachedDescriptors)
    weights = {}
    for net, m in made.items():
        file = str(m.get("weights_file") or "")
        weights[net] = {"source": m.get("weights") or default_weights(net), "file": Path(file).name if file else None,
                        "digest": m.get("weights_digest") or None}
    final = result.final
    return {"descriptor": {"nets": list(cfg.nets), "scales": list(cfg.scales), "aggregate": cfg.aggregate,
                           "setting": cfg.setting, "weights": weights, "preprocess": dict(cfg.preprocess),
                           "flip": cfg.flip, "dtype": result.compute_dtype},
            "classes": list(result.classes), "dataset": result.dataset, "trained_on": trained_on,
            "samples": final.samples if final else None, "C": final.C if final else result.runs[0].C,
            "C_chosen_by": final.chosen_by if final else "validation of the first split"}


def write_run(result, out_dir: Path, run_name: str) -> list[Path]:
    """A protocol run's files: the results (featx.evaluate.results.write_result: .csv, .md, .json) and
    the classifier to deploy (Result.final: fit on every labelled image with the validated C)
    as <run>.model.json/.npz, which featx predict reads without unpickling, and <run>.joblib,
    the same scikit-learn Pipeline pickled. The result's .json, written last, holds every
    other file's SHA-256."""
    import joblib
    out_dir = Path(out_dir)
    check_writable(out_dir, "--results-dir")
    final = result.final
    record = model_record(result, trained_on=final.trained_on if final else result.runs[0].trained_on)
    model_json, model_npz = save_model(out_dir / run_name, record, final.model if final else result.runs[0].model)
    model_path = out_dir / f"{run_name}.joblib"
    buffer = io.BytesIO()
    joblib.dump(load_model(model_json, device="cpu"), buffer)
    with replacing(model_path) as tmp:
        tmp.write_bytes(buffer.getvalue())
    return write_result(result, out_dir, run_name, beside=(model_json, model_npz, model_path))


def save_model(path, record: dict, svm) -> tuple[Path, Path]:
    """Write the model's arrays, then its JSON record holding their SHA-256 and its own
    (featx.atomic: a kill leaves the old pair or a record that refuses the new arrays).
    record: descriptor and classes (see module doc)."""
    json_path, npz_path = model_paths(path)
    buffer = io.BytesIO()
    np.savez(buffer, coef=svm.coef_, intercept=svm.intercept_, classes=np.asarray(svm.classes_))
    arrays = buffer.getvalue()
    meta = dict(record, format=FORMAT, format_version=FORMAT_VERSION, featx_version=__version__,
                classifier={"kind": "OneVsRestSVM", "C": float(svm.C), "solver": svm.solver,
                            "multilabel": bool(svm.multilabel_), "n_features": int(svm.n_features_in_)},
                arrays=npz_path.name, arrays_sha256=hashlib.sha256(arrays).hexdigest())
    meta = json.loads(json.dumps(meta, default=str))  # as it will read back
    meta["record_sha256"] = record_checksum(meta)
    write_bytes(npz_path, arrays)
    write_text(json_path, json.dumps(meta, indent=2))
    return json_path, npz_path


def record_checksum(meta: dict) -> str:
    """SHA-256 of a record's content (every field but this checksum, keys sorted): a record
    edited by hand no longer matches it."""
    body = {k: v for k, v in meta.items() if k != "record_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class WeightsRef:
    """The weights a classifier was trained on: their source, the file's name, the tensor digest."""

    source: str  # torchvision, caffe, random:N, or file
    file: str | None
    digest: str
    given: str | None = None  # format 1 records: the source as it was given (maybe a path)


@dataclass(frozen=True)
class ModelRecord(ReadsDescriptor):
    """A saved classifier's RUN.model.json, every field checked (read_model_record)."""

    path: Path
    format_version: int
    descriptor: DescriptorSpec  # its weights: each net's source name (the refs below say which tensors)
    weights: dict  # net -> WeightsRef
    classes: tuple  # class names, in the order the scores are reported
    multilabel: bool
    C: float
    solver: str
    n_features: int
    trained_on: str
    arrays: str  # the .npz file's name
    arrays_sha256: str | None  # None: format 1 (unchecked)
    featx_version: str

    @property
    def digests(self) -> dict:
        return {net: w.digest for net, w in self.weights.items()}


def read_model_record(path) -> ModelRecord:
    """RUN.model.json as a ModelRecord; anything featx svm would not have written (a field
    missing or of the wrong type or value, a record changed since, an unknown format) is one
    ConfigError naming the file and the field."""
    json_path, _ = model_paths(path)
    if not json_path.is_file():
        raise ConfigError(f"{path}: no featx model record at {json_path} (featx svm writes "
                          "RUN.model.json and RUN.model.npz beside its results)")
    try:
        meta = json.loads(json_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"{json_path}: not a featx model record (not JSON: {e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ConfigError(f"{json_path}: not a featx model record")
    version = meta.get("format_version")
    if version not in (1, FORMAT_VERSION):
        raise ConfigError(f"{json_path}: a featx model of format {version!r} (written by featx "
                          f"{meta.get('featx_version')}); this featx reads formats 1 and {FORMAT_VERSION}. "
                          "Train it again with this version (featx svm)")
    if version >= 2 and meta.get("record_sha256") != record_checksum(meta):
        raise ConfigError(f"{json_path}: the record was changed after featx svm wrote it (its checksum "
                          "does not match); train again, or use the record as it was written")

    def bad(key, why):
        return ConfigError(f"{json_path}: {key} {why}")

    def get(obj, key, kind, where=""):
        name = f"{where}{key}"
        if not isinstance(obj, dict) or key not in obj:
            raise bad(name, "is missing")
        value = obj[key]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise bad(name, f"must be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    d = get(meta, "descriptor", dict)
    flip = get(d, "flip", bool, "descriptor.")
    try:  # the one validation of a descriptor (featx.config), each field named as in the file
        spec = DescriptorSpec(nets=tuple(get(d, "nets", list, "descriptor.")),
                              scales=tuple(get(d, "scales", list, "descriptor.")),
                              aggregate=get(d, "aggregate", str, "descriptor."),
                              setting=get(d, "setting", str, "descriptor."), flip=flip,
                              dtype=d.get("dtype", "float32") if version == 1 else get(d, "dtype", str, "descriptor."),
                              preprocess=d.get("preprocess") or {})
    except FieldError as e:
        raise bad(f"descriptor.{e.field}", f"is not valid: {e}") from None
    nets, scales, aggregate, setting = spec.nets, spec.scales, spec.aggregate, spec.setting
    given = get(d, "weights", dict, "descriptor.")
    if set(given) != set(nets):
        raise bad("descriptor.weights", f"must name the weights of each net {nets}, got {sorted(given)}")
    weights = {}
    for net in nets:
        if version == 1:  # the source as given, the digest beside it
            source = get(given, net, str, "descriptor.weights.")
            digest = (d.get("weights_digest") or {}).get(net)
            ref = WeightsRef(source, None, digest, given=source)
        else:
            w = get(given, net, dict, "descriptor.weights.")
            file = w.get("file")
            if file is not None and not isinstance(file, str):
                raise bad(f"descriptor.weights.{net}.file", f"must be a file name or null, got {file!r}")
            ref = WeightsRef(get(w, "source", str, f"descriptor.weights.{net}."), file, w.get("digest"))
        if not (isinstance(ref.digest, str) and re.fullmatch(r"tensors:[0-9a-f]{64}", ref.digest)):
            raise bad(f"descriptor.weights.{net}.digest", "must be the weights' tensor digest (tensors:<64 hex>), "
                      f"got {ref.digest!r}: without it the weights cannot be checked")
        weights[net] = ref
    classes = get(meta, "classes", list)
    if len(classes) < 2 or not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise bad("classes", f"must be at least two distinct class names, got {classes!r}")
    c = get(meta, "classifier", dict)
    if get(c, "kind", str, "classifier.") != "OneVsRestSVM":
        raise bad("classifier.kind", f"must be OneVsRestSVM, got {c['kind']!r}")
    C = get(c, "C", float, "classifier.")
    if not (math.isfinite(C) and C > 0):
        raise bad("classifier.C", f"must be a positive number, got {C!r}")
    n_features = get(c, "n_features", int, "classifier.")
    views = 2 if setting == "image+box" else 1
    want = views * sum(get_spec(n).dim * (len(scales) if aggregate == "stack" else 1) for n in nets)
    if n_features != want:
        raise bad("classifier.n_features", f"is {n_features}, but the descriptor has {want} features")
    arrays_sha256 = None if version == 1 else get(meta, "arrays_sha256", str)
    trained_on = meta.get("trained_on", "")
    return ModelRecord(json_path, version, spec.replace(weights={n: w.source for n, w in weights.items()}), weights,
                       tuple(classes), get(c, "multilabel", bool, "classifier."), C,
                       get(c, "solver", str, "classifier."), n_features, str(trained_on),
                       meta.get("arrays") or model_paths(path)[1].name, arrays_sha256, str(meta.get("featx_version")))


def read_arrays(record: ModelRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(coef, intercept, classes) from the record's .npz, checked against the record: its
    checksum, shapes, finite float coefficients, class indices into the record's classes."""
    npz_path = record.path.with_name(record.arrays)
    try:
        data = npz_path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{npz_path}: cannot read the model's arrays ({e.strerror or e})") from None
    if record.arrays_sha256 is not None and hashlib.sha256(data).hexdigest() != record.arrays_sha256:
        raise ConfigError(f"{npz_path}: not the arrays {record.path.name} was written with (its checksum differs: "
                          "changed since, or a later featx svm run was interrupted); train again")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            coef, intercept, classes = z["coef"], z["intercept"], z["classes"]
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{npz_path}: cannot read the model's arrays ({e})") from None
    k = len(intercept)
    if coef.dtype.kind != "f" or intercept.dtype.kind != "f" or not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ConfigError(f"{npz_path}: coefficients must be finite floating-point numbers")
    if coef.shape != (k, record.n_features) or intercept.shape != (k,):
        raise ConfigError(f"{npz_path}: coefficients of shape {coef.shape} do not fit the record "
                          f"({k} classes x {record.n_features} features)")
    binary = k == 1 and len(record.classes) == 2 and not record.multilabel
    if classes.dtype.kind in "iu":
        if len(classes) != (2 if binary else k) or len(set(classes.tolist())) != len(classes) or \
                not all(0 <= int(i) < len(record.classes) for i in classes):
            raise ConfigError(f"{npz_path}: the SVMs' classes {classes.tolist()} do not index the record's "
                              f"{len(record.classes)} classes")
    else:
        raise ConfigError(f"{npz_path}: the SVMs' classes must be indices into the record's class list")
    return coef, intercept, classes


def weights_for(record: ModelRecord, local: dict | None = None) -> dict:
    """Per net, what to load the record's weights from: `local[net]` (a copy the user points
    at: FILE, checked by digest after loading) for any source; a named source (torchvision,
    caffe) from torch's hub cache, or else from a file featx has loaded on this machine with the
    same tensors (featx.net.weights.find_file); random:N as itself; weights that came from a file,
    such a file. Otherwise a ConfigError saying which weights to give."""
    out = {}
    for net, w in record.weights.items():
        source, digest = w.source, w.digest
        if (local or {}).get(net):
            given = str(local[net])
            out[net] = f"{source}:{given}" if source in NAMED_SOURCES else given
        elif w.given is not None:  # format 1
            out[net] = w.given
        elif source in NAMED_SOURCES:
            published = WEIGHT_SOURCES.get((source, record_arch(net)))
            found = None if published and published.file.is_file() or not digest else find_file(digest, record_arch(net))
            out[net] = f"{source}:{found}" if found else source
        elif source != "file":
            out[net] = source
        else:
            found = find_file(digest, record_arch(net)) if digest else None
            if found is None:
                known = describe_weights(digest)
                raise ConfigError(
                    f"this model's {label_of(net)} weights came from a file ({w.file or 'unnamed'}, tensors "
                    f"{str(digest)[8:20]}...{f': {known}' if known else ''}) that featx has not seen on this "
                    f"machine; point at a copy: featx predict MODEL --weights {net}=FILE "
                    f"(in Python: load_model(MODEL, weights={{{net!r}: FILE}}))")
            out[net] = str(found)
    return out


def record_arch(net: str) -> str:
    return get_spec(net).arch


@dataclass
class SavedModel:
    """A saved classifier as featx predict uses it, without scikit-learn: the record, the SVMs'
    arrays, and the Descriptor (featx.descriptors.descriptor) that makes what they score."""

    record: ModelRecord
    coef: np.ndarray  # (n_svms, n_features)
    intercept: np.ndarray
    classes: np.ndarray  # the SVMs' classes: indices into record.classes
    descriptor: object  # featx.descriptors.descriptor.Descriptor

    @property
    def multilabel(self) -> bool:
        return self.record.multilabel

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """As OneVsRestSVM.decision_function: (n, n_classes), or (n,) for two classes."""
        scores = np.asarray(X, np.float64) @ self.coef.T + self.intercept
        return scores[:, 0] if scores.shape[1] == 1 and not self.multilabel else scores

    def by_class(self, scores: np.ndarray) -> list[dict]:
        """Scores (n, n_svms), or (n,) for two classes, as {class name: score} per image."""
        if scores.ndim == 1:  # two classes: one score, positive for the second
            scores = np.stack([-scores, scores], axis=1)
        names = [self.record.classes[int(c)] for c in self.classes]
        return [dict(zip(names, map(float, row))) for row in np.atleast_2d(scores)]

    def check_weights(self) -> None:
        """Refuse to predict with weights other than those the classifier was trained on."""
        for net, want in self.record.digests.items():
            got = self.descriptor.extractor(net).weights.digest
            if want and got != want:
                raise ConfigError(f"the {label_of(net)} weights found now ({self.descriptor.weights_of(net)}) are not the "
                                  "ones this classifier was trained on (their tensors differ); give the same weights")


def read_model(path, device="auto", weights: dict | None = None) -> SavedModel:
    """The classifier saved at path, ready to score images (featx predict).

    weights: {net: FILE}, local copies of the weights the model was trained with (featx
    predict --weights); checked against the record's digest when they are first used."""
    record = read_model_record(path)
    coef, intercept, classes = read_arrays(record)
    descriptor = Descriptor(nets=record.nets, scales=record.scales, aggregate=record.aggregate,
                            weights=weights_for(record, weights), preprocess=record.preprocess or None,
                            flip=record.flip, device=device, dtype=record.dtype)
    return SavedModel(record, coef, intercept, classes, descriptor)


def load_model(path, device="auto", weights: dict | None = None):
    """The fitted scikit-learn Pipeline (VGGDescriptor -> OneVsRestSVM) saved at path; weights
    as for read_model."""
    from sklearn.pipeline import Pipeline

    from .classifiers import OneVsRestSVM
    from ..descriptors.transform import VGGDescriptor
    model = read_model(path, device, weights)
    r = model.record
    svm = OneVsRestSVM(C=r.C, solver=r.solver)
    svm.coef_, svm.intercept_, svm.classes_ = model.coef, model.intercept, model.classes
    svm.multilabel_, svm.n_features_in_ = r.multilabel, r.n_features
    return Pipeline([("vgg", VGGDescriptor(**asdict(model.descriptor))), ("svm", svm)])


@dataclass
class Prediction:
    """One image under a saved model: its SVM score per class (in the record's class order), or
    why it could not be read."""

    path: str
    scores: dict | None  # class name -> score; None where the image failed
    error: str = ""

    def labels(self, multilabel: bool) -> list[str]:
        """The predicted class (the best score), or for a multi-label model every class whose
        score is positive."""
        if self.scores is None:
            return []
        if multilabel:
            return [c for c, v in self.scores.items() if v > 0]
        return [max(self.scores, key=self.scores.get)]

    def top(self, k: int) -> list[tuple[str, float]]:
        return sorted(((c, v) for c, v in (self.scores or {}).items()), key=lambda cv: -cv[1])[:k]


def predict_images(model: SavedModel, inputs, cache_dir=None, root=None, device="auto",
                   progress: bool = True, log=print) -> list[Prediction]:
    """A saved model applied to image files, folders (searched recursively) and list files
    (one path per line); one Prediction per image, in the order given, failures included.

    A folder's or list's images go through that set's descriptor caches (featx.paths.cache_path,
    as featx extract --images writes them): what they lack is computed first, and a second run
    computes only new or changed images. Loose image files are computed directly."""
    from ..data.datasets import load_image_list
    from ..data.images import IMAGE_EXTENSIONS
    out, files = [], []

    def flush():
        if not files:
            return
        model.check_weights()
        X, ok, failed = model.descriptor.readable(files)
        scores = iter(model.by_class(model.decision_function(X)) if len(ok) else [])
        out.extend(Prediction(f, None, failed[i]) if i in failed else Prediction(f, next(scores))
                   for i, f in enumerate(files))
        files.clear()

    for item in map(Path, inputs):
        if item.is_file() and item.suffix.lower() in IMAGE_EXTENSIONS or not item.exists():
            files.append(str(item))  # a missing file is that image's failure
            continue
        flush()
        data = load_image_list(item)
        ids, scores, failed = scores_of_image_set(model, data, cache_dir, root, device, progress, log)
        scored = dict(zip(ids, model.by_class(scores) if len(ids) else []))
        out.extend(Prediction(p, scored[i]) if i in scored else Prediction(p, None, failed[i])
                   for i, p in zip(data.ids, data.items))
    flush()
    return out


def scores_of_image_set(model: SavedModel, images, cache_dir=None, root=None, device="auto",
                        progress: bool = True, log=print):
    """A saved model's scores for every image of an image set (featx.data.datasets.ImageSet), through
    the set's own caches (featx.paths.cache_path, as featx extract writes them): what they lack
    is extracted first, so a second run on the same folder computes only new or changed images.

    Returns (ids, scores (n, n_classes) or (n,) for two classes, {id: reason} for the images
    that could not be read)."""
    from ..extract.cache import DescriptorCache, usable_rows
    from ..extract.update import update_caches

    r = model.record
    nets, scales, dtype = list(r.nets), r.scales, r.dtype
    weights = dict(model.descriptor.weights)  # where read_model found them
    model.check_weights()  # before anything is computed into a cache
    path_for = {net: cache_path(images, net, weights[net], dtype, cache_dir, root) for net in nets}
    for summary in update_caches(nets, images.items, images.ids, images.name, path_for.get, weights,
                                 r.preprocess or None, progress=progress, log=log,
                                 source=str(images.source.resolve()) if images.source else "",
                                 scales=scales, flip=r.flip, device=device, dtype=dtype):
        log(str(summary))
    caches = {net: DescriptorCache(p) for net, p in path_for.items()}
    for net, want in r.digests.items():
        if want and caches[net].attrs.get("weights_digest") != want:
            raise ConfigError(f"{path_for[net]} was computed with other {label_of(net)} weights than this "
                              "classifier was trained on (their tensors differ)")
    rows, ok, failed = usable_rows(caches, images.ids, scales)
    if not ok.any():
        return [], np.empty((0, len(r.classes))), failed
    X = combine((caches[net].load(scales, rows=rows[net][ok]) for net in nets), r.aggregate)
    return [i for i, good in zip(images.ids, ok) if good], model.decision_function(X), failed
