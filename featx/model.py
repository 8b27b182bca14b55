"""Saved classifiers, in a form whose loading runs no code.

`featx svm` writes, beside its results, RUN.model.json (what the descriptor is: nets, weights
and their digest, preprocessing, flip, scales, aggregation; the classes; the featx version) and
RUN.model.npz (the SVMs' coefficients, plain arrays). `load_model` reads them with json and
numpy (allow_pickle=False) and rebuilds a scikit-learn Pipeline:

    Pipeline([("vgg", VGGDescriptor(...)), ("svm", OneVsRestSVM(...) fitted)])

so `featx predict` never unpickles anything: a model file from someone else cannot run code.
(RUN.joblib, the same Pipeline pickled for Python users, is never read by featx.)
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError

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
    cfg, made = result.config, result.descriptors
    flips = {bool(m.get("flip", True)) for m in made.values()}
    if len(flips) > 1:
        raise ConfigError("the nets' caches differ in flipping; one descriptor cannot match both")
    weights = {}
    for net, m in made.items():
        file = str(m.get("weights_file") or "")
        weights[net] = {"source": m.get("weights") or "torchvision", "file": Path(file).name if file else None,
                        "digest": m.get("weights_digest") or None}
    final = result.final
    return {"descriptor": {"nets": list(cfg["nets"]), "scales": list(cfg["scales"]), "aggregate": cfg["aggregate"],
                           "setting": cfg["setting"], "weights": weights, "preprocess": dict(cfg["preprocess"]),
                           "flip": flips.pop(), "dtype": result.compute_dtype},
            "classes": list(result.classes), "dataset": result.dataset, "trained_on": trained_on,
            "samples": final.samples if final else None, "C": final.C if final else result.runs[0].C,
            "C_chosen_by": final.chosen_by if final else "validation of the first split"}


def save_model(path, record: dict, svm) -> tuple[Path, Path]:
    """Write the model's JSON record and arrays. record: descriptor and classes (see module doc)."""
    from . import __version__
    json_path, npz_path = model_paths(path)
    meta = dict(record, format=FORMAT, format_version=FORMAT_VERSION, featx_version=__version__,
                classifier={"kind": "OneVsRestSVM", "C": float(svm.C), "solver": svm.solver,
                            "multilabel": bool(svm.multilabel_), "n_features": int(svm.n_features_in_)},
                arrays=npz_path.name)
    np.savez(npz_path, coef=svm.coef_, intercept=svm.intercept_, classes=np.asarray(svm.classes_))
    json_path.write_text(json.dumps(meta, indent=2, default=str))
    return json_path, npz_path


def read_model_record(path) -> dict:
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
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise ConfigError(f"{json_path}: a featx model of format {meta.get('format_version')} (written by "
                          f"featx {meta.get('featx_version')}); this featx reads formats 1 and {FORMAT_VERSION}. "
                          "Train it again with this version (featx svm)")
    if meta["format_version"] == 1:  # weights as the source string they were given as
        d = meta["descriptor"]
        d["weights"] = {n: {"source": w, "file": None, "digest": (d.get("weights_digest") or {}).get(n), "given": w}
                        for n, w in d["weights"].items()}
    return meta


def weights_for(record: dict, local: dict | None = None) -> dict:
    """Per net, what to load the record's weights from: `local[net]` (a copy the user points
    at: FILE, checked by digest after loading) for any source; a named source (torchvision,
    caffe, random:N) as itself; weights that came from a file, a file featx has seen on this
    machine with the same tensors (featx.weights.find_file). Otherwise a ConfigError saying
    which weights to give."""
    from .weights import describe_weights, find_file
    out = {}
    for net, w in record["descriptor"]["weights"].items():
        source, digest = w["source"], w.get("digest")
        if (local or {}).get(net):
            given = str(local[net])
            out[net] = f"{source}:{given}" if source in ("torchvision", "caffe") else given
        elif "given" in w:  # format 1
            out[net] = w["given"]
        elif source != "file":
            out[net] = source
        else:
            found = find_file(digest, record_arch(net)) if digest else None
            if found is None:
                known = describe_weights(digest)
                raise ConfigError(
                    f"this model's Net-{net} weights came from a file ({w.get('file') or 'unnamed'}, tensors "
                    f"{str(digest)[8:20]}...{f': {known}' if known else ''}) that featx has not seen on this "
                    f"machine; point at a copy: featx predict MODEL --weights {net}=FILE "
                    f"(in Python: load_model(MODEL, weights={{{net!r}: FILE}}))")
            out[net] = str(found)
    return out


def record_arch(net: str) -> str:
    from .specs import get_spec
    return get_spec(net).arch


def load_model(path, device="auto", weights: dict | None = None):
    """The fitted scikit-learn Pipeline (VGGDescriptor -> OneVsRestSVM) saved at path.

    weights: {net: FILE}, local copies of the weights the model was trained with (featx
    predict --weights); checked against the record's digest when they are first used."""
    from sklearn.pipeline import Pipeline

    from .classifiers import OneVsRestSVM
    from .transform import VGGDescriptor

    meta = read_model_record(path)
    _, npz_path = model_paths(path)
    try:
        with np.load(npz_path, allow_pickle=False) as z:
            coef, intercept, classes = z["coef"], z["intercept"], z["classes"]
    except (OSError, KeyError, ValueError) as e:
        raise ConfigError(f"{npz_path}: cannot read the model's arrays ({e})") from None
    c, d = meta["descriptor"], meta["classifier"]
    if coef.shape != (len(intercept), d["n_features"]):
        raise ConfigError(f"{npz_path}: coefficients of shape {coef.shape} do not fit the record "
                          f"({len(intercept)} classes x {d['n_features']} features)")
    svm = OneVsRestSVM(C=d["C"], solver=d["solver"])
    svm.coef_, svm.intercept_, svm.classes_ = coef, intercept, classes
    svm.multilabel_, svm.n_features_in_ = d["multilabel"], d["n_features"]
    vgg = VGGDescriptor(nets=tuple(c["nets"]), scales=tuple(c["scales"]), aggregate=c["aggregate"],
                        weights=weights_for(meta, weights), preprocess=c.get("preprocess") or None, flip=c["flip"],
                        device=device, dtype=c.get("dtype", "float32"))
    return Pipeline([("vgg", vgg), ("svm", svm)])


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


def _by_class(record: dict, svm, scores: np.ndarray) -> list[dict]:
    """SVM scores (n, n_svm_classes), or (n,) for two classes, as {class name: score} per image."""
    if scores.ndim == 1:  # two classes: one score, positive for the second
        scores = np.stack([-scores, scores], axis=1)
    names = [record["classes"][int(c)] if np.asarray(svm.classes_).dtype.kind in "iu" else str(c)
             for c in svm.classes_]
    return [dict(zip(names, map(float, row))) for row in np.atleast_2d(scores)]


def predict_images(record: dict, pipeline, inputs, cache_dir=None, root=None, device="auto",
                   progress: bool = True, log=print) -> list[Prediction]:
    """A saved model applied to image files, folders (searched recursively) and list files
    (one path per line); one Prediction per image, in the order given, failures included.

    A folder's or list's images go through that set's descriptor caches (featx.paths.cache_path,
    as featx extract --images writes them): what they lack is computed first, and a second run
    computes only new or changed images. Loose image files are computed directly."""
    from .datasets import load_image_list
    from .images import IMAGE_EXTENSIONS
    svm = pipeline.named_steps["svm"]
    out, files = [], []

    def flush():
        if not files:
            return
        check_weights(pipeline, record)
        X, ok, failed = pipeline.named_steps["vgg"].transform_readable(files)
        scores = iter(_by_class(record, svm, svm.decision_function(X)) if len(ok) else [])
        out.extend(Prediction(f, None, failed[i]) if i in failed else Prediction(f, next(scores))
                   for i, f in enumerate(files))
        files.clear()

    for item in map(Path, inputs):
        if item.is_file() and item.suffix.lower() in IMAGE_EXTENSIONS or not item.exists():
            files.append(str(item))  # a missing file is that image's failure
            continue
        flush()
        data = load_image_list(item)
        ids, scores, failed = scores_of_image_set(record, pipeline, data, cache_dir, root, device, progress, log)
        scored = dict(zip(ids, _by_class(record, svm, scores) if len(ids) else []))
        out.extend(Prediction(p, scored[i]) if i in scored else Prediction(p, None, failed[i])
                   for i, p in zip(data.ids, data.items))
    flush()
    return out


def scores_of_image_set(record: dict, pipeline, images, cache_dir=None, root=None, device="auto",
                        progress: bool = True, log=print):
    """A saved model's scores for every image of an image set (featx.datasets.ImageSet), through
    the set's own caches (featx.paths.cache_path, as featx extract writes them): what they lack
    is extracted first, so a second run on the same folder computes only new or changed images.

    Returns (ids, scores (n, n_classes) or (n,) for two classes, {id: reason} for the images
    that could not be read)."""
    from .aggregate import combine
    from .cache import DescriptorCache, usable_rows
    from .paths import cache_path
    from .update import update_caches

    d = record["descriptor"]
    nets, scales, dtype = list(d["nets"]), tuple(d["scales"]), d.get("dtype", "float32")
    weights = dict(pipeline.named_steps["vgg"].weights)  # where load_model found them
    path_for = {net: cache_path(images, net, weights[net], dtype, cache_dir, root) for net in nets}
    for summary in update_caches(nets, images.items, images.ids, images.name, path_for.get, weights,
                                 d.get("preprocess") or None, progress=progress, log=log,
                                 source=str(images.source.resolve()) if images.source else "",
                                 scales=scales, flip=d["flip"], device=device, dtype=dtype):
        log(str(summary))
    caches = {net: DescriptorCache(p) for net, p in path_for.items()}
    for net, want in weights_digests(record).items():
        if want and caches[net].attrs.get("weights_digest") != want:
            raise ConfigError(f"{path_for[net]} was computed with other Net-{net} weights than this "
                              "classifier was trained on (their tensors differ)")
    rows, ok, failed = usable_rows(caches, images.ids, scales)
    if not ok.any():
        return [], np.empty((0, len(record["classes"]))), failed
    X = combine((caches[net].load(scales, rows=rows[net][ok]) for net in nets), d["aggregate"])
    return [i for i, good in zip(images.ids, ok) if good], pipeline.named_steps["svm"].decision_function(X), failed


def weights_digests(record: dict) -> dict:
    """{net: the tensor digest of the weights the classifier was trained on (None: unknown)}."""
    return {net: w.get("digest") for net, w in record["descriptor"]["weights"].items()}


def check_weights(pipeline, record: dict) -> None:
    """Refuse to predict with weights other than those the classifier was trained on."""
    vgg = pipeline.named_steps["vgg"]
    for net, want in weights_digests(record).items():
        got = vgg.weights_digest(net)
        if want and got != want:
            source = vgg.weights.get(net) if isinstance(vgg.weights, dict) else vgg.weights
            raise ConfigError(f"the Net-{net} weights found now ({source}) are not the ones this classifier was "
                              "trained on (their tensors differ); give the same weights")
