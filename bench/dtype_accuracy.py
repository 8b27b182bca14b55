"""What bfloat16 (or float16) extraction costs in accuracy, on real images: two caches of the same
images, weights and scale, one per dtype, and the protocol's result from each.

    featx reproduce caltech101-E-q256 --local-weights E=caffe:vgg19_caffe.pth            # float32
    featx reproduce caltech101-E-q256 --local-weights E=caffe:vgg19_caffe.pth --dtype bfloat16 \\
        --cache-dir bf16-cache --results-dir bf16-results                                 # bfloat16
    python bench/dtype_accuracy.py \\
        --reference datasets/featx-cache/caltech101/E-caffe.h5 \\
        --reference-result results/caltech101/caltech101-E-q256.json \\
        --candidate bf16-cache/caltech101/E-caffe.h5 \\
        --candidate-result bf16-results/caltech101/caltech101-E-q256.json --scale 256

Prints and writes (results/bench/<cpu model>-<dtype>-accuracy.json) the cosine similarity and
relative error of every descriptor both caches hold at that scale, and the protocol's figure
(mean class recall or mAP, per split) from each result.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from featx.extract.cache import DONE, DescriptorCache  # noqa: E402

from common import save_figures  # noqa: E402


def common_rows(ref: DescriptorCache, cand: DescriptorCache, q: int):
    """Row pairs (in ref, in cand) of the images both caches computed at Q = q."""
    done_ref = {ref.ids[i] for i in np.flatnonzero(ref.status(q) == DONE)}
    ids = [cand.ids[i] for i in np.flatnonzero(cand.status(q) == DONE) if cand.ids[i] in done_ref]
    return ref.rows(ids), cand.rows(ids)


def compare(ref_path, cand_path, q, chunk=1024):
    ref, cand = DescriptorCache(ref_path), DescriptorCache(cand_path)
    a_rows, b_rows = common_rows(ref, cand, q)
    if not len(a_rows):
        raise SystemExit(f"{ref_path} and {cand_path} have no image in common computed at Q={q}")
    cos, rel = [], []
    for k in range(0, len(a_rows), chunk):
        a = ref.load([q], rows=a_rows[k:k + chunk])[:, 0].astype(np.float64)
        b = cand.load([q], rows=b_rows[k:k + chunk])[:, 0].astype(np.float64)
        cos.append((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        rel.append(np.abs(a - b).max(1) / np.abs(a).max(1))
    cos, rel = np.concatenate(cos), np.concatenate(rel)
    return {"images": int(len(cos)), "dtype_reference": ref.attrs.get("dtype"),
            "dtype_candidate": cand.attrs.get("dtype"),
            "cosine": {"min": float(cos.min()), "p1": float(np.percentile(cos, 1)),
                       "median": float(np.median(cos)), "mean": float(cos.mean())},
            "max_relative_error": {"median": float(np.median(rel)), "p99": float(np.percentile(rel, 99)),
                                   "max": float(rel.max())}}


def protocol_figures(path):
    r = json.load(open(path))
    per_split = [100 * run["mean"][next(iter(run["mean"]))] for run in r["runs"]]
    return {"result": str(path), "metric": r["metric"], "headline": r["headline"],
            "std": r["headline_std"], "per_split": per_split, "C": [run["C"] for run in r["runs"]],
            "dtype": {net: d.get("dtype") for net, d in r["descriptors"].items()},
            "made_by": r.get("command", "")}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", required=True, help="the float32 cache")
    p.add_argument("--candidate", required=True, help="the same images in another dtype")
    p.add_argument("--reference-result", help="featx reproduce's JSON from the reference cache")
    p.add_argument("--candidate-result", help="... and from the candidate cache")
    p.add_argument("--scale", type=int, default=256)
    p.add_argument("--json")
    a = p.parse_args()
    t = time.perf_counter()
    descriptors = compare(a.reference, a.candidate, a.scale)
    out = {"scale": a.scale, "descriptors": descriptors}
    c, e = descriptors["cosine"], descriptors["max_relative_error"]
    print(f"{descriptors['images']} images at Q={a.scale}, {descriptors['dtype_candidate']} vs "
          f"{descriptors['dtype_reference']}: cosine min {c['min']:.6f}, 1st percentile {c['p1']:.6f}, "
          f"median {c['median']:.6f}; max relative error median {e['median']:.2e}, max {e['max']:.2e} "
          f"({time.perf_counter() - t:.0f} s)")
    if a.reference_result and a.candidate_result:
        out["reference"] = protocol_figures(a.reference_result)
        out["candidate"] = protocol_figures(a.candidate_result)
        for key in ("reference", "candidate"):
            r = out[key]
            print(f"{key:<10} {'/'.join(r['dtype'].values())}: {r['metric']} {r['headline']:.2f} ± {r['std']:.2f} "
                  f"(splits: {', '.join(f'{v:.2f}' for v in r['per_split'])}; C = {r['C']})")
        out["difference"] = out["candidate"]["headline"] - out["reference"]["headline"]
        print(f"difference: {out['difference']:+.2f} points")
    save_figures("dtype_accuracy", out, path=a.json, suffix=f"-{descriptors['dtype_candidate']}-accuracy")


if __name__ == "__main__":
    main()
