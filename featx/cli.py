"""The `featx` command: a thin shell over the library (extract, info, ...)."""
from __future__ import annotations

from pathlib import Path

import click

from .errors import ConfigError, FeatxError
from .net.specs import NETS, label_of
from .options import (AGGREGATIONS, COMPUTE_TYPES, DEFAULT_BATCH_SIZE, DEFAULT_C_GRID, DEFAULT_NET,
                      ENGINES, PREPROCESS_NAMES, SETTINGS, SOLVERS)



class FeatxGroup(click.Group):
    """Prints featx errors as one line (no traceback) and exits 1."""

    def invoke(self, ctx):
        # File names that are not valid UTF-8 reach messages as surrogate escapes: print them
        # as \x.. rather than fail on them.
        import sys
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="backslashreplace")
        try:
            return super().invoke(ctx)
        except FeatxError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=FeatxGroup, context_settings={"help_option_names": ["-h", "--help"],
                                               "max_content_width": 100})
@click.version_option(package_name="featx")
def main():
    """Frozen VGG descriptors and linear SVMs (Simonyan & Zisserman 2015, Appendix B).

    \b
    Typical session:
      featx extract --images photos/ --net E --scales 256:512 --out photos-E.h5
      featx info photos-E.h5
    """


# -- option parsing -----------------------------------------------------------------------------

def parse_scales(text: str) -> tuple[int, ...]:
    """'256:768' -> 256..768 step 128; '256:768:64' sets the step; '256,384' is a list."""
    try:
        if ":" in text:
            parts = [int(p) for p in text.split(":")]
            if len(parts) not in (2, 3):
                raise ValueError
            lo, hi, step = parts[0], parts[1], parts[2] if len(parts) == 3 else 128
            if step <= 0 or hi < lo:
                raise ValueError
            return tuple(range(lo, hi + 1, step))
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r}: write LO:HI (step 128), LO:HI:STEP, or Q1,Q2,... "
                                 "e.g. 256:768 or 256,384,512") from None


def parse_nets(text: str) -> list[str]:
    from .net.specs import get_spec
    try:
        nets = [get_spec(n.strip()).name for n in text.split(",") if n.strip()]
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--net") from None
    if not nets:
        raise click.BadParameter("name at least one net: D, E, D,E or timm:MODEL", param_hint="--net")
    if len(set(nets)) != len(nets):
        raise click.BadParameter(f"{text!r} names a net twice", param_hint="--net")
    return nets


def parse_per_net(text: str | None, nets: list[str], default=None, option: str = "--weights") -> dict:
    """featx.config.parse_per_net, its errors as click's."""
    from .config import parse_per_net as parse
    try:
        return parse(text, nets, default, option)
    except ConfigError as e:
        raise click.BadParameter(str(e)) from None


def parse_preprocess(text: str | None, nets: list[str]) -> dict:
    """--preprocess per net; a net not named keeps its weights' own (None). The names are
    checked where the descriptor is (featx.config.DescriptorSpec)."""
    return parse_per_net(text, nets, lambda net: None, option="--preprocess")


def parse_weights(text: str | None, nets: list[str]) -> dict:
    """--weights per net; a net not named gets its backbone's default source."""
    from .net.specs import default_weights
    return parse_per_net(text, nets, default_weights)


def command_of(ctx: click.Context) -> str:
    """The command line that gave these parameters (defaults left out), for result files."""
    import shlex
    parts = ["featx", ctx.info_name]
    for p in ctx.command.params:
        value = ctx.params.get(p.name)
        if value is None or value is False or value == p.default or p.name == "help":
            continue
        values = value if isinstance(value, tuple) else (value,)
        if isinstance(p, click.Argument):
            parts += [str(v) for v in values]
        elif getattr(p, "is_flag", False):
            parts.append(p.opts[0])
        else:
            parts += [p.opts[0], str(value)]
    return shlex.join(parts)


# -- featx extract ------------------------------------------------------------------------------

@main.command()
@click.option("--images", "images", type=click.Path(path_type=Path),
              help="A folder of images (searched recursively) or a text file, one path per line.")
@click.option("--dataset", help="voc2007, voc2012, voc2012-action, caltech101, caltech256, folder:DIR or csv:FILE.")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--split", help="Dataset splits to compute, comma-separated (default: all images).")
@click.option("--net", "nets", default=DEFAULT_NET, show_default=True,
              help="D (VGG16), E (VGG19), D,E, or timm:MODEL (any timm model's pooled pre-logits "
                   "features, pip install 'featx[timm]'), e.g. E,timm:resnet50.")
@click.option("--scales", default="256:512", show_default=True,
              help="Short sides Q: 256:768 = 256..768 step 128; 256:768:64; or 256,384,512.")
@click.option("--weights", help="VGG: torchvision (default), caffe, a .pth / Keras .h5 file. timm:MODEL: timm "
                                "(default), a .pth / .safetensors file, random. Per net: D=a.pth,E=b.h5 "
                                "(a net not named gets its default).")
@click.option("--preprocess", help=f"Input convention of a bare .pth file: {', '.join(PREPROCESS_NAMES)} "
                                   "(named sources carry their own; timm: a timm:MODEL net's own mean and std, "
                                   "the default for its files). Per net: D=caffe,E=torchvision.")
@click.option("--out", type=click.Path(path_type=Path),
              help="Cache file (FILE.h5, one net) or folder (one <net>-<weights>.h5 per net).")
@click.option("--cache-dir", help="Where dataset caches go [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--device", default="auto", show_default=True, help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, ...")
@click.option("--dtype", type=click.Choice(COMPUTE_TYPES), default="float32",
              show_default=True, help="Compute type. float32: the paper's rows. bfloat16: GPUs, and CPUs "
              "with native bfloat16 (avx512_bf16 or AMX; its speed and accuracy: docs/speed.md), "
              "emulated and slower elsewhere (featx warns). float16: GPUs. "
              "Other types than float32 get their own cache file (<net>-<weights>-<dtype>.h5).")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True, help="Images per forward pass (each also mirrored).")
@click.option("--workers", type=click.IntRange(min=1), help="Threads decoding images ahead of the net [min(4, cores)].")
@click.option("--no-flip", is_flag=True, help="Do not average with the mirrored image.")
@click.option("--strict", is_flag=True, help="Stop at the first unreadable image (default: record it, go on).")
@click.option("--retry-failed", is_flag=True, help="Try every image that failed before again (by default "
              "only those whose file changed since, or whose failure may pass: not found, an I/O error).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
@click.option("--engine", type=click.Choice(ENGINES), default="local", show_default=True,
              help="local: this process. ray: shards of the same work on a Ray cluster's workers, "
                   "written into the same cache (needs pip install 'featx[ray]').")
@click.option("--address", help="[ray] Cluster to join: auto (the one this machine is in), "
                                "ray://HOST:10001 (Ray Client) [env RAY_ADDRESS; default: a new local instance].")
@click.option("--num-workers", type=int, help="[ray] Actors, each holding one net "
                                              "[GPUs / --gpus-per-worker, or CPUs / up to 8 per actor].")
@click.option("--gpus-per-worker", type=float, default=0, help="[ray] GPUs per actor (0: CPU actors).")
@click.option("--cpus-per-worker", type=int, help="[ray] CPU cores per actor (torch threads, decoding).")
def extract(images, dataset, root, split, nets, scales, weights, preprocess, out, cache_dir, device,
            dtype, batch_size, workers, no_flip, strict, retry_failed, quiet, engine, address, num_workers,
            gpus_per_worker, cpus_per_worker):
    """Compute dense VGG (or timm) descriptors into an HDF5 cache (resumable).

    Each image is rescaled so its short side is Q, run densely through the net, the fc7 map
    is average-pooled and averaged with the mirrored image's (a timm:MODEL net: its own
    pooled pre-logits features, see docs/cli.md). Results go to one HDF5 file
    per (image set, net, weights): by default CACHE_DIR/<set>/<net>-<weights>.h5, where <set>
    is a benchmark's name or, for a folder, list or CSV, its name and a digest of where it
    lives (featx svm, predict and info find the same file). Each row records the file it was
    computed from (size, times, SHA-256): a rerun computes only new images and images whose
    file changed, keeps rows of images that left the set (featx info --prune), and tries
    again images whose failure may pass. An interrupted run (even kill -9) resumes where it
    stopped; unreadable images are recorded and skipped.

    \b
    Examples:
      featx extract --images photos/ --net E --weights vgg19.pth --preprocess caffe --out e.h5
      featx extract --dataset voc2007 --net D,E --scales 256:768 --split trainval,test
      featx extract --images photos/ --net E,timm:convnext_tiny --weights E=caffe --scales 256
      featx extract --dataset caltech256 --net D,E --scales 256:512 --engine ray \\
          --address auto --gpus-per-worker 1
    """
    from .extract.cache import cache_file
    from .data.datasets import load_dataset, load_image_list
    from .paths import cache_path

    from .config import DescriptorSpec

    nets = parse_nets(nets)
    # the one validation of a descriptor (its scales, weights, preprocessing, compute type)
    spec = DescriptorSpec(nets=nets, scales=parse_scales(scales), weights=parse_weights(weights, nets),
                          preprocess=parse_preprocess(preprocess, nets), flip=not no_flip, dtype=dtype)
    scales, weights, preprocess = spec.scales, spec.weights, spec.preprocess
    if bool(images) == bool(dataset):
        raise click.UsageError("give either --images or --dataset")
    if images and split:
        raise click.UsageError("--split applies to --dataset only")
    data = load_image_list(images) if images else load_dataset(dataset, root)
    rows = data.rows_of(split.split(",")) if split else None
    single_file = out is not None and out.suffix.lower() in (".h5", ".hdf5")
    if single_file and len(nets) > 1:
        raise click.UsageError(f"--out {out} is one file but {len(nets)} nets were asked for; "
                               "give a folder (one file per net) or one net")
    if out is None:  # the one rule every command finds caches by
        path_for = lambda net: cache_path(data, net, weights[net], dtype, cache_dir, root)  # noqa: E731
    else:
        path_for = lambda net: out if single_file else cache_file(out, net, weights[net], dtype)  # noqa: E731
    ray_options = dict(address=address, num_workers=num_workers, gpus_per_worker=gpus_per_worker,
                       cpus_per_worker=cpus_per_worker)
    if engine == "local":
        given = [f"--{k.replace('_', '-')}" for k, v in ray_options.items() if v]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to --engine ray only")
        ray_options = {}
    update_and_report(nets, weights, data, path_for, rows=rows, strict=strict, progress=not quiet, scales=scales,
                      flip=not no_flip, preprocess=preprocess, device=device, dtype=dtype, batch_size=batch_size,
                      workers=workers, engine=engine, retry_failed=retry_failed, **ray_options)


def update_and_report(nets, weights, data, path_for, rows=None, strict=False, progress=True,
                      preprocess=None, engine="local", **extractor_options):
    """featx.extract.update.update_caches for an image set or dataset, then print each summary."""
    from .extract.update import update_caches

    summaries = update_caches(nets, data.items, data.ids, data.name, path_for, weights, preprocess, rows=rows,
                              strict=strict, progress=progress, engine=engine,
                              source=str(Path(data.source).resolve()) if data.source else "",
                              log=lambda m: click.echo(m, err=True), **extractor_options)
    for s in summaries:
        click.echo(str(s))
        for i, reason in list(s.failures.items())[:10]:
            click.echo(f"  failed: {reason}")
        if len(s.failures) > 10:
            click.echo(f"  ... and {len(s.failures) - 10} more (featx info {s.path} --failures)")
    return summaries


# -- featx info ---------------------------------------------------------------------------------

@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@click.option("--dataset", help="Show the caches of this image set (voc2007, ..., folder:DIR, csv:FILE) instead.")
@click.option("--images", type=click.Path(path_type=Path), help="Show the caches of this folder or list of images.")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--cache-dir", help="Where the caches are [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--failures", is_flag=True, help="List every image that failed, with the reason.")
@click.option("--verify", is_flag=True, help="Check every done row against its checksum (reads the "
              "whole file); exit 1 if any fails. featx extract recomputes the rows that do.")
@click.option("--prune", is_flag=True, help="Remove the rows of images whose file no longer exists "
              "(featx extract keeps them, unused, when images leave a set).")
def info(paths, dataset, images, root, cache_dir, failures, verify, prune):
    """Show what descriptor caches hold: nets, weights, scales, done / failed counts.

    PATHS are cache files or folders (searched for *.h5); without them, the caches of
    --dataset / --images (found as featx extract writes them), or every cache in CACHE_DIR.
    """
    from .extract.cache import DescriptorCache, being_written
    from .extract.cost import format_duration
    from .paths import cache_dir as resolve_cache_dir, image_set_dir, image_set_key, parse_image_set
    from .net.weights import describe_weights

    if dataset and images:
        raise click.UsageError("give --dataset or --images, not both")
    if paths and (dataset or images):
        raise click.UsageError("give cache PATHS or --dataset / --images, not both")
    if dataset or images:
        paths = (image_set_dir(image_set_key(*parse_image_set(dataset or images)), cache_dir, root),)
    elif not paths:
        paths = (resolve_cache_dir(cache_dir, root),)
    files = []
    for p in paths:
        files += sorted(p.rglob("*.h5")) if p.is_dir() else [p]
    if not files:
        raise ConfigError(f"no .h5 files under {', '.join(map(str, paths))}"
                          + ("" if all(p.exists() for p in paths) else " (no such folder: nothing extracted there yet)"))
    damaged = 0
    for path in files:
        c = DescriptorCache(path)
        m = c.made_with
        known = describe_weights(m.digest)
        click.echo(f"{path}  ({path.stat().st_size / 2**20:.1f} MiB)")
        click.echo(f"  image set   {m.image_set}: {len(c)} images")
        click.echo(f"  net         {label_of(m.net)} ({m.arch}), {m.dim}-D{' fc7' if m.net in NETS else ''}, {m.dtype}")
        click.echo(f"  weights     {m.weights} {m.weights_file} {m.digest_text}"
                   + (f"\n              = {known}" if known else ""))
        click.echo(f"  preprocess  {m.preprocess} ({m.channel_order}, mean {m.mean}, std {m.std})")
        click.echo(f"  flip        {m.flip}; resize {m.interpolation}")
        click.echo(f"  made by     featx {m.featx_version}, torch {m.torch_version}, {m.created}")
        if being_written(path):
            click.echo("  writing     now: a featx extraction holds this file's lock (the counts grow)")
        timing = c.timing()
        for q, n in c.counts().items():
            seconds, timed = timing[q]
            spent = (f"  {format_duration(seconds)} wall, {seconds / timed:.2f} s/image over {timed} timed rows"
                     if timed else "")
            click.echo(f"  Q={q:<5} done {n['done']:>7}  failed {n['failed']:>5}  to do {n['todo']:>7}{spent}")
        if not c.checksummed:
            click.echo("  checksums   none yet (written by featx 0.2.0; added when featx extract next writes to it)")
        if c.identified:
            gone = c.gone()
            click.echo("  images      each row records its file (size, times, SHA-256)"
                       + (f"; {len(gone)} row(s) of images whose file is gone (first: {gone[0]})"
                          + ("" if prune else ": --prune removes them") if gone else ""))
        else:
            click.echo(f"  images      rows record no image files yet (written by featx {m.featx_version}): "
                       "featx extract records them the next time it writes to the file, recomputing nothing")
        if verify:
            for q in c.scales:
                bad = c.corrupt(q)
                damaged += len(bad)
                click.echo(f"  verify Q={q:<5} {'ok' if not len(bad) else f'{len(bad)} row(s) FAIL their checksum'}"
                           + (f" (first: {c.ids[bad[0]]})" if len(bad) else ""))
        errs = c.errors()
        if failures:
            for id_, reason in errs.items():
                click.echo(f"  failed {id_}: {reason}")
        elif errs:
            click.echo(f"  {len(errs)} image(s) failed (--failures lists them)")
        if prune:
            from .extract.update import prune as prune_rows
            click.echo(f"  pruned      {prune_rows(path)} row(s) of images whose file is gone")
    if damaged:
        raise click.ClickException(f"{damaged} row(s) fail their checksum; run the featx extract command "
                                   "that made the file again: it recomputes exactly those rows")


@main.command("export")
@click.argument("caches", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path),
              help="FILE.parquet, or a folder for --format npy (descriptors .npy + metadata.csv + export.json).")
@click.option("--dataset", help="The image set whose caches to export: voc2007, ..., folder:DIR or csv:FILE "
              "(adds labels and splits).")
@click.option("--images", type=click.Path(path_type=Path), help="The folder or list of images whose caches to export.")
@click.option("--net", "nets", default=DEFAULT_NET, show_default=True, help="[--dataset/--images] D, E, D,E or timm:MODEL.")
@click.option("--weights", help="[--dataset/--images] Weight source the caches were computed with (as for extract).")
@click.option("--dtype", type=click.Choice(COMPUTE_TYPES), default="float32", show_default=True,
              help="[--dataset/--images] The type the descriptors were computed in.")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--cache-dir", help="Where the caches are [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--split", help="[--dataset] Export the images of these splits only, comma-separated [all].")
@click.option("--scales", help="Scales to export (as for extract) [every scale the caches share].")
@click.option("--aggregate", type=click.Choice(["none", *AGGREGATIONS]), default="none", show_default=True,
              help="none: one column per net and scale, as cached. mean/stack/max: one column 'descriptor', "
              "scales aggregated, nets fused, L2-normalised (what featx svm trains on).")
@click.option("--format", "fmt", type=click.Choice(["parquet", "npy"]), help="[from --out: .parquet, else npy]")
@click.option("--chunk-rows", default=1024, show_default=True, type=click.IntRange(min=1),
              help="Images read and written at a time (memory stays flat for any size).")
def export_command(caches, out, dataset, images, nets, weights, dtype, root, cache_dir, split, scales, aggregate,
                   fmt, chunk_rows):
    """Write descriptors to Parquet or NumPy, for pandas, DuckDB, FAISS or another language.

    CACHES are cache files (several: nets fused, in the order given); or name the image set
    with --dataset / --images (and --net, --weights) and its caches are found as featx
    extract writes them, checked against the images as they are now, with labels and splits.

    \b
    Examples:
      featx export --images photos/ --net E --weights caffe --out photos.parquet
      featx export --dataset folder:pets --net D,E --aggregate stack --out pets.parquet
      featx export datasets/featx-cache/voc2007/D-torchvision.h5 --format npy --out voc-D/

    \b
    Read back: pandas.read_parquet(FILE), or in Python featx.read_export(FILE) -> (ids, X).
    """
    from .extract.cache import DescriptorCache
    from .data.datasets import load_dataset, load_image_list
    from .descriptors.export import write_export
    from .extract.identity import check_current
    from .paths import cache_path
    from .extract.update import extract_command

    if bool(caches) + bool(dataset) + bool(images) != 1:
        raise click.UsageError("give cache files, or --dataset, or --images (one of them)")
    if split and not dataset:
        raise click.UsageError("--split applies to --dataset only")
    scales = parse_scales(scales) if scales else None
    data, hint, files = None, None, {}
    if caches:
        for path in caches:
            c = DescriptorCache(path)
            if c.attrs["net"] in files:
                raise click.UsageError(f"{path} and {files[c.attrs['net']].path} are both {label_of(c.attrs['net'])} caches")
            files[c.attrs["net"]] = c
    else:
        data = load_image_list(images) if images else load_dataset(dataset, root)
        nets = parse_nets(nets)
        weights = parse_weights(weights, nets)
        for net in nets:
            path = cache_path(data, net, weights[net], dtype, cache_dir, root)
            if path.is_file():
                files[net] = DescriptorCache(path)
        shared = sorted(set.intersection(*(set(c.scales) for c in files.values()))) if files else []
        hint = extract_command(data, nets, scales or shared or (256,), weights, None, dtype, cache_dir, root)
        for net in nets:
            if net not in files:
                raise ConfigError(f"no cached {label_of(net)} descriptors at "
                                  f"{cache_path(data, net, weights[net], dtype, cache_dir, root)}; compute them with:\n  {hint}")
        if split:
            hint += " --split " + split
    rows = data.rows_of(split.split(",")) if split else None
    for net, cache in files.items() if data is not None else ():
        check_current(cache, data.items, data.ids, rows, hint, log=lambda m: click.echo(m, err=True))
    summary = write_export(files, out, data, scales, None if aggregate == "none" else aggregate, fmt, chunk_rows,
                           hint, rows)
    click.echo(str(summary))


# -- featx datasets -----------------------------------------------------------------------------

@main.group()
def datasets():
    """List, check and download the benchmark datasets."""


@datasets.command("ls")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
def datasets_ls(root):
    """Which benchmarks are present under the data root, and are they complete?"""
    from .data.datasets import DATASETS, load_dataset
    from .paths import data_root

    root = data_root(root)
    click.echo(f"data root: {root.resolve()}")
    for name, spec in DATASETS.items():
        try:
            d = load_dataset(name, root)
        except FeatxError as e:
            click.echo(f"  {name:<15} missing   {e}")
            continue
        want = spec.images
        state = ("complete" if want is None or len(d.items) == want
                 else f"INCOMPLETE ({len(d.items):,} of the official archive's {want:,} images)")
        click.echo(f"  {name:<15} {state:<9} {d.describe()}")


@datasets.command("download")
@click.argument("name")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
def datasets_download(name, root):
    """Download, verify (md5) and unpack NAME's official archives; resumes partial downloads."""
    from .data.datasets import download, load_dataset

    path = download(name, root)
    click.echo(f"{name} unpacked in {path}")
    click.echo(load_dataset(name, root).describe())


# -- featx svm / predict ------------------------------------------------------------------------

@main.command()
@click.argument("dataset")
@click.option("--net", "nets", default=DEFAULT_NET, show_default=True, help="D, E, timm:MODEL, or several: D,E (late fusion).")
@click.option("--scales", default="256:512", show_default=True, help="Scales to use (as for extract).")
@click.option("--aggregate", type=click.Choice(AGGREGATIONS), default="mean", show_default=True,
              help="Across scales: mean (VOC's best), stack (Caltech's best) or max.")
@click.option("--weights", help="Weight source the caches were computed with (as for extract).")
@click.option("--preprocess", help="For --extract with a bare .pth (as for extract).")
@click.option("--setting", type=click.Choice(SETTINGS), default="image", show_default=True,
              help="voc2012-action: whole image only, or stacked with the person box.")
@click.option("--solver", type=click.Choice(SOLVERS), default="torch", show_default=True,
              help="torch: all classes at once (fast); liblinear: scikit-learn LinearSVC (reference).")
@click.option("--c-grid", default=",".join(f"{c:g}" for c in DEFAULT_C_GRID), show_default=True,
              help="Values of C tried on the validation data.")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--cache-dir", help="Where the caches are [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--extract", "do_extract", is_flag=True, help="Compute missing descriptors first.")
@click.option("--dtype", type=click.Choice(COMPUTE_TYPES), default="float32", show_default=True,
              help="Read (and with --extract, compute) descriptors computed in this type.")
@click.option("--device", default="auto", show_default=True, help="Device for the SVM solver and --extract.")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--run-name", help="Name of the result files [default: nets-scales-aggregate[-setting]].")
def svm(dataset, nets, scales, aggregate, weights, preprocess, setting, solver, c_grid, root, cache_dir,
        do_extract, dtype, device, results_dir, run_name):
    """Train one-vs-rest linear SVMs on cached descriptors and evaluate by the paper's protocol.

    \b
    Protocols (docs/protocol.md section 4):
      voc2007            C on train->val, refit trainval, test mAP (11-point AP; area AP too)
      voc2012            C inside train, refit train, VAL mAP (test labels are withheld)
      voc2012-action     as voc2012; --setting image or image+box
      caltech101/256     per split: C on its 20% validation part, refit, mean class recall
      folder:DIR         three seeded splits (half of each class trains), as Caltech
      csv:FILE           its train/val/test column (as VOC), or as folder: without one

    Writes RESULTS_DIR/<dataset>/<run-name>.{csv,md,json}, and the classifiers fit on every
    labelled image with the validated C (the median over splits): <run-name>.model.json/.npz
    for featx predict, and <run-name>.joblib, the same Pipeline pickled for Python.
    """
    train_and_evaluate(dataset, nets, scales, aggregate, weights, preprocess, setting, solver, c_grid, root,
                       cache_dir, do_extract, dtype, device, results_dir, run_name,
                       command=command_of(click.get_current_context()))


def train_and_evaluate(dataset, nets, scales, aggregate, weights, preprocess, setting, solver, c_grid, root,
                       cache_dir, do_extract, dtype, device, results_dir, run_name, command):
    """featx svm (and featx demo): the options as given, `command` what the results record."""
    from .data.datasets import load_dataset
    from dataclasses import replace

    from .config import Config, DescriptorSpec, ProtocolSpec
    from .evaluate.experiment import run
    from .extract.extractor import resolve_device
    from .evaluate.metrics import nanmean
    from .atomic import check_writable
    from .paths import pipelines_dir
    from .paper.pipeline import all_pipelines, matching_pipeline
    from .evaluate.model import write_run

    nets = parse_nets(nets)
    scales = parse_scales(scales)
    weights = parse_weights(weights, nets)
    preprocess = parse_preprocess(preprocess, nets)
    try:
        grid = tuple(float(c) for c in c_grid.split(","))
    except ValueError:
        raise click.BadParameter(f"{c_grid!r}: give numbers separated by commas", param_hint="--c-grid") from None
    device = str(resolve_device(device))
    data = load_dataset(dataset, root)
    cfg = Config(data.name, DescriptorSpec(nets=nets, scales=scales, aggregate=aggregate, weights=weights,
                                           preprocess=preprocess, setting=setting, dtype=dtype),
                 ProtocolSpec(solver=solver, c_grid=grid, device=device)).check(data)
    check_writable(results_dir / data.name, "--results-dir")  # before the work, not after it
    if do_extract:  # only the rows the protocol reads (Caltech-101: 7,107 of 9,144 images)
        update_and_report(cfg.nets, cfg.weights, data,
                          lambda net: cfg.descriptor.cache_path(net, data, cache_dir, root),
                          rows=data.protocol_rows(cfg.views), preprocess=cfg.preprocess, scales=cfg.scales,
                          device=device, dtype=dtype)
    result = run(data, cfg, cache_dir, root, log=lambda m: click.echo(m, err=True))
    # The paper's figure only where this is one of its configurations (the pipelines say which).
    match = matching_pipeline(cfg, all_pipelines(pipelines_dir()))
    result = replace(result, paper=match.paper if match else None, paper_pipeline=match.name if match else None,
                     command=command)
    run_name = run_name or cfg.run_name()
    paths = write_run(result, results_dir / data.name, run_name)
    metrics = list(result.runs[0].scores)
    click.echo(f"{'class':<20} " + "  ".join(f"{k:>7}" for k in metrics))
    for c, cls in enumerate(data.classes):
        vals = [nanmean([r.scores[k][c] for r in result.runs]) for k in metrics]
        click.echo(f"{cls:<20} " + "  ".join(f"{100 * v:7.1f}" for v in vals))
    click.echo(result.headline_text())
    click.echo(f"chosen C: {result.chosen_c_text}; wrote "
               + ", ".join(str(p) for p in paths))


@main.command()
@click.argument("model", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True)
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json"]), default="table", show_default=True,
              help="table: one line per image, its best classes. csv / json: one record per image (path, "
              "predicted label(s), the score of every class or of the --top best, error).")
@click.option("--top", "--top-k", "top", type=click.IntRange(min=1),
              help="Classes shown per image [table: 3; csv/json: every class].")
@click.option("--weights", help="A local copy of the weights the model was trained with: FILE, or "
              "per net E=FILE (checked against the model's digest). Needed where the model's weights "
              "came from a file featx has not loaded on this machine; named sources (torchvision, "
              "caffe) are found as featx extract finds them.")
@click.option("--device", default="auto", show_default=True)
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--cache-dir", help="Where a folder's caches go [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def predict(model, images, fmt, top, weights, device, root, cache_dir, quiet):
    """Apply classifiers saved by `featx svm` to new images.

    MODEL is RUN.model.json (or RUN.joblib / RUN.model.npz beside it) in the results folder:
    the classifiers fit on every labelled image of the run with the validated C, and the
    descriptor they were trained on (nets, weights by source and digest, scales, aggregation,
    compute type), read as JSON and plain arrays: nothing is unpickled, so a model file from
    elsewhere cannot run code. Scores are the SVMs' (positive: the class).

    IMAGES are image files, folders (searched recursively) and list files (one path per line).
    A folder's or list's images go through its descriptor caches (the files featx extract
    --images writes), so predicting on it again computes only its new or changed images. An
    image that cannot be read is a row with its error; the others are still predicted.

    \b
    Examples:
      featx predict results/pets/E-256-512x3-stack.model.json new_photos/ --format csv > out.csv
      featx predict RUN.model.json a.jpg b.jpg --top 1
      featx predict RUN.model.json photos/ --weights E=~/weights/vgg19_caffe.pth
    """
    import csv
    import json
    import sys

    from .evaluate.model import predict_images, read_model, read_model_record

    record = read_model_record(model)
    if record.setting == "image+box":
        raise ConfigError(f"{model}: this model needs person boxes (image+box); predict takes whole images only")
    local = parse_per_net(weights, list(record.nets)) if weights else None
    saved = read_model(model, device=device, weights=local)
    multilabel = saved.multilabel
    predictions = predict_images(saved, images, cache_dir, root, device, progress=not quiet,
                                 log=lambda m: click.echo(m, err=True))
    k = top or (3 if fmt == "table" else len(record.classes))
    if fmt == "table":
        for p in predictions:
            click.echo(f"{p.path}: " + (", ".join(f"{c} {v:+.2f}" for c, v in p.top(k)) if p.scores is not None
                                       else f"failed: {p.error}"))
    elif fmt == "json":
        click.echo(json.dumps([{"path": p.path, "predicted": p.labels(multilabel),
                                "scores": dict(p.top(k)) if p.scores is not None else None,
                                "error": p.error or None} for p in predictions], indent=1))
    else:
        w = csv.writer(sys.stdout, lineterminator="\n")
        if top:  # the k best: label and score of each
            w.writerow(["path", "predicted", *(f"{x}_{i + 1}" for i in range(k) for x in ("label", "score")), "error"])
            for p in predictions:
                best = p.top(k)
                w.writerow([p.path, ";".join(p.labels(multilabel)),
                            *(v for i in range(k) for v in (best[i] if i < len(best) else ("", ""))), p.error])
        else:  # every class's score, a column each
            w.writerow(["path", "predicted", *record.classes, "error"])
            for p in predictions:
                w.writerow([p.path, ";".join(p.labels(multilabel)),
                            *((p.scores[c] for c in record.classes) if p.scores is not None else [""] * len(record.classes)),
                            p.error])
    failed = sum(p.scores is None for p in predictions)
    if failed:
        click.echo(f"{failed} of {len(predictions)} image(s) could not be read (their rows say why)", err=True)


# -- featx demo ---------------------------------------------------------------------------------

@main.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("featx-demo"), show_default=True,
              help="Where the images, the descriptor cache and the results go.")
@click.option("--net", "nets", default=DEFAULT_NET, show_default=True, help="D, E, timm:MODEL or several: D,E.")
@click.option("--weights", help="torchvision (default: downloaded once, then cached) or a file, e.g. E=vgg19.pth.")
@click.option("--preprocess", help="Input convention of a bare .pth (as for extract).")
@click.option("--per-class", default=50, show_default=True, help="Images per class (4..100).")
@click.option("--scales", default="256", show_default=True, help="Short sides Q (as for extract).")
@click.option("--device", default="auto", show_default=True)
@click.option("--results-dir", type=click.Path(path_type=Path), help="Where the results go [default: OUT/results].")
@click.pass_context
def demo(ctx, out, nets, weights, preprocess, per_class, scales, device, results_dir):
    """A small real job out of the box: faces vs non-faces from real photographs.

    Writes scikit-image's lfw_subset (face crops from Labeled Faces in the Wild and patches
    of natural photographs, 25x25) as a folder per class, extracts frozen VGG descriptors
    into a cache, trains linear SVMs on three held-out splits (C chosen on validation data)
    and prints the per-split mean class recall. Net-D on 2 CPU cores: about a minute.

    \b
    Offline, point it at weights you have:
      featx demo --net E --weights E=vgg19_caffe.pth --preprocess caffe
    """
    from .data.demo import write_lfw_faces
    from .errors import WeightsError

    folder = write_lfw_faces(out / f"lfw-faces-{per_class}", per_class)
    click.echo(f"wrote {2 * per_class} real photographs (face, nonface) to {folder}", err=True)
    try:
        train_and_evaluate(f"folder:{folder}", nets, scales, "mean", weights, preprocess, "image", "torch",
                           "0.01,0.1,1,10", None, str(out / "cache"), True, "float32", device,
                           results_dir or out / "results", None, command=command_of(ctx))
    except WeightsError as e:
        raise WeightsError(f"{e} Offline, give featx demo a weights file: --net E --weights "
                           "E=/path/vgg19.pth --preprocess caffe (or D=/path/vgg16.pth).") from None


# -- featx reproduce / report -------------------------------------------------------------------

@main.command()
@click.argument("targets", nargs=-1)
@click.option("--dry-run", is_flag=True, help="Print what would be computed and what it costs; run nothing.")
@click.option("--root", type=click.Path(path_type=Path), help="Data root [env FEATX_DATA_ROOT, default ./datasets].")
@click.option("--cache-dir", help="Where the caches are [env FEATX_CACHE_DIR, default ROOT/featx-cache].")
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--pipelines", "pipelines_option", type=click.Path(path_type=Path),
              help="Folder of pipeline files [env FEATX_PIPELINES, default: the ones shipped with featx].")
@click.option("--device", default="auto", show_default=True, help="Device for extraction and the SVM solver.")
@click.option("--dtype", type=click.Choice(COMPUTE_TYPES), default="float32", show_default=True,
              help="Compute type of the descriptors (as for extract); the paper's rows are float32, and "
              "a run in another type never replaces a float32 result.")
@click.option("--batch-size", default=DEFAULT_BATCH_SIZE, show_default=True)
@click.option("--solver", type=click.Choice(SOLVERS), default="torch", show_default=True)
@click.option("--gflops", type=float, help="Throughput for --dry-run's time estimate [each cache's own "
              "measured rate, else this CPU model's bench figures, else a one-second measurement].")
@click.option("--local-weights", help="Read a net's weight source from a file you have instead of "
              "the hub cache: NET=SOURCE:FILE, e.g. E=caffe:vgg19_caffe.pth (offline copies of the authors' "
              "weights); comma-separated for both nets. Caches and results keep the source's name.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars.")
def reproduce(targets, dry_run, root, cache_dir, results_dir, pipelines_option, device, dtype, batch_size,
              solver, gflops, local_weights, quiet):
    """Reproduce the paper's tables: extract, train, evaluate, write the report.

    TARGETS: table11, table12, ablation, all, pipeline names (voc2007-DE, ...) or .toml
    files [default: table11 table12]. Every cached descriptor is reused, so an interrupted
    run continues where it stopped. Pipelines whose dataset is not on disk are skipped
    (and listed); the report (RESULTS_DIR/README.md) shows them as "not run".

    \b
    Examples:
      featx reproduce table11 --dry-run        what it would compute, and how long
      featx reproduce voc2007-D voc2007-E      two rows of Table 11
      featx reproduce all --device cuda
    """
    from .extract.extractor import resolve_device
    from .paths import cache_dir as resolve_cache_dir, pipelines_dir
    from .paper.pipeline import all_pipelines, select
    from .paper.report import write_report
    from .paper.reproduce import estimate, parse_local_weights, reproduce as run_pipelines

    folder = pipelines_dir(pipelines_option)
    chosen = select(targets or ("table11", "table12"), folder)
    cache = resolve_cache_dir(cache_dir, root)
    files = parse_local_weights(local_weights)
    device = str(resolve_device(device))
    if dry_run:
        for line in estimate(chosen, root, cache, device, dtype, gflops).lines():
            click.echo(line)
        return
    from .atomic import check_writable
    check_writable(results_dir, "--results-dir")  # before hours of extraction, not after them
    results, skipped = run_pipelines(chosen, root, cache, results_dir, solver=solver, device=device, dtype=dtype,
                                     batch_size=batch_size, progress=not quiet,
                                     command=command_of(click.get_current_context()),
                                     log=lambda m: click.echo(m, err=True), weight_files=files)
    for name, result in results.items():
        click.echo(f"{name}: {result.headline_text()}")
    report = write_report(results_dir, all_pipelines(folder), log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {report}")
    if skipped:
        for name, why in skipped.items():
            click.echo(f"skipped {name}: {why}", err=True)
        raise click.ClickException(f"{len(skipped)} of {len(chosen)} pipelines not run (datasets missing; "
                                   "featx datasets download NAME)")


@main.command()
@click.option("--results-dir", type=click.Path(path_type=Path), default=Path("results"), show_default=True)
@click.option("--pipelines", "pipelines_option", type=click.Path(path_type=Path),
              help="Folder of pipeline files [env FEATX_PIPELINES, default: the ones shipped with featx].")
def report(results_dir, pipelines_option):
    """Rewrite RESULTS_DIR/README.md and its figures from the result files there."""
    from .paths import pipelines_dir
    from .paper.pipeline import all_pipelines
    from .paper.report import write_report

    report = write_report(results_dir, all_pipelines(pipelines_dir(pipelines_option)),
                          log=lambda m: click.echo(m, err=True))
    click.echo(f"report: {report}")
