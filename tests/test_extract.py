import numpy as np
import pytest
from PIL import Image

from featx import Extractor, ImageError, aggregate, fuse, l2_normalize
from featx.extract.cost import descriptor_flops
from featx.extract.engine import plan_batches
from featx.extract.extractor import Batch, WorkBar

from conftest import make_image


def tiny(**kw):
    kw.setdefault("scales", (224, 256))
    return Extractor("T", weights="random:0", device="cpu", **kw)


def test_shape_and_inputs_of_every_kind(images):
    ex = tiny()
    from_paths = ex.extract(images)
    assert from_paths.shape == (6, 2, 16) and from_paths.dtype == np.float32
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images]
    pils = [Image.open(p) for p in images]
    assert np.array_equal(ex.extract(arrays), from_paths)
    assert np.array_equal(ex.extract(pils), from_paths)
    assert (from_paths >= 0).all() and (from_paths > 0).mean() > 0.3  # post-ReLU averages


def test_flip_is_the_mean_of_image_and_mirror(images):
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in images[:3]]
    mirrored = [a[:, ::-1].copy() for a in arrays]
    plain = tiny(flip=False)
    both = tiny(flip=True).extract(arrays)
    assert np.allclose(both, (plain.extract(arrays) + plain.extract(mirrored)) / 2, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both, plain.extract(arrays), rtol=1e-3)


def test_scales_are_computed_independently_and_in_order(images):
    both = tiny(scales=(224, 256)).extract(images)
    assert np.allclose(both[:, 1], tiny(scales=(256,)).extract(images)[:, 0], rtol=1e-5, atol=1e-7)
    assert np.allclose(tiny(scales=(256, 224)).extract(images)[:, 0], both[:, 1], rtol=1e-5, atol=1e-7)


def test_batch_size_does_not_change_results(images):
    a = tiny(batch_size=1).extract(images)
    b = tiny(batch_size=4).extract(images)
    assert np.allclose(a, b, rtol=1e-5, atol=1e-7)


def test_upsampling_small_images_and_non_square(tmp_path):
    small = np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8)
    tall = np.random.default_rng(1).integers(0, 256, (700, 300, 3), dtype=np.uint8)
    out = tiny(scales=(224, 512)).extract([small, tall])
    assert out.shape == (2, 2, 16) and np.isfinite(out).all()


def test_scale_below_224_is_refused():
    with pytest.raises(ValueError, match="Q=200 is too small.*at least 224 px"):
        tiny(scales=(200, 256))
    with pytest.raises(ValueError, match="repeat"):
        tiny(scales=(256, 256))


def test_bad_image_is_named(images, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_text("no")
    with pytest.raises(ImageError, match="broken.jpg: not an image"):
        tiny().extract([images[0], bad])


def test_plan_groups_by_shape_and_cuts_batches():
    sizes = [(375, 500), (500, 375), (375, 500), None, (375, 500), (333, 500)]
    batches = plan_batches(sizes, 256, batch_size=2)
    # shapes at Q=256: (256,341) x3 [0,2,4], (341,256) [1], (256,384) [5]; None left out
    assert [b.tolist() for b in batches] == [[0, 2], [4], [5], [1]]


def test_progress_is_counted_in_flops_across_scales_and_images_per_scale():
    ex = tiny(batch_size=2)
    sizes = [(375, 500), (500, 375), (375, 500), None, (900, 600)]
    skip = {224: np.array([True, False, False, False, False]), 256: np.zeros(5, bool)}
    plan = ex.plan(sizes, skip=skip)
    with WorkBar(ex.spec, plan, sizes, flip=True, label="Net-T", enabled=False) as bar:
        want = {224: [descriptor_flops(ex.spec, sizes[i], 224) for i in (1, 2, 4)],
                256: [descriptor_flops(ex.spec, sizes[i], 256) for i in (0, 1, 2, 4)]}
        assert bar.total == sum(want[224]) + sum(want[256])
        assert bar.text() == "Net-T Q=224 0/3, Q=256 0/4 images"
        # the big image (900x600) costs more than the others: the bar moves by work, not count
        bar.update(Batch(224, np.array([4]), np.zeros((1, 16), np.float32)))
        bar.update(Batch(256, np.array([1]), np.zeros((0, 16), np.float32), {2: "cannot decode"}))
        assert bar.text() == "Net-T Q=224 1/3, Q=256 2/4 images"
        assert bar.done_flops == want[224][2] + want[256][1] + want[256][2]
        assert want[224][2] > want[224][0]


def test_aggregations_exact():
    per_scale = np.array([[[1., 2.], [3., 6.], [2., -1.]]], np.float32)  # 1 image, 3 scales, d=2
    assert np.array_equal(aggregate(per_scale, "mean"), np.array([[2., 7 / 3]], np.float32))
    assert np.array_equal(aggregate(per_scale, "max"), [[3., 6.]])
    assert np.array_equal(aggregate(per_scale, "stack"), [[1., 2., 3., 6., 2., -1.]])
    with pytest.raises(ValueError, match="unknown aggregation 'sum'"):
        aggregate(per_scale, "sum")
    assert np.array_equal(fuse(np.ones((2, 2)), np.zeros((2, 3))), [[1, 1, 0, 0, 0]] * 2)
    x = l2_normalize(np.array([[3., 4.], [0., 0.]]))
    assert np.array_equal(x, np.array([[0.6, 0.8], [0., 0.]], np.float32))


def test_featx_aggregate_is_the_function():
    """featx.aggregate, fuse and l2_normalize are the functions of featx.descriptors.fusion (the module's
    own name differs, so importing every module leaves them so)."""
    import featx
    import featx.evaluate.experiment
    import featx.descriptors.transform  # noqa: F401
    from featx import aggregate
    from featx.descriptors import fusion
    assert aggregate is fusion.aggregate and featx.fuse is fusion.fuse and featx.l2_normalize is fusion.l2_normalize


def test_the_work_bar_counts_a_scale_planned_in_several_shards_once():
    from featx.extract.extractor import WorkBar
    from featx.net.specs import NETS
    sizes = [(240, 300)] * 12
    shards = [(224, [np.arange(0, 4), np.arange(4, 8)]), (224, [np.arange(8, 12)])]  # as the Ray engine cuts them
    with WorkBar(NETS["T"], shards, sizes, flip=True, label="Net-T", enabled=False) as bar:
        assert bar.text() == "Net-T Q=224 0/12 images"


def test_the_three_engines_are_one_engine_class(tmp_path):
    """featx.extract.engine.Engine is what extract_to_cache reads: the local engine, the Ray engine
    and Planned are all Engines, so what they compute, their plan and provenance are the same code."""
    from featx.extract.distributed import RayExtractor
    from featx.extract.engine import Engine
    from featx.extract.update import Planned, as_engine
    assert issubclass(Extractor, Engine) and issubclass(RayExtractor, Engine) and issubclass(Planned, Engine)
    local = Extractor("T", scales=(224,), weights="random:0", device="cpu", batch_size=2)
    built = []
    lazy = Planned(lambda: built.append(1) or local, "T", scales=(224,), weights="random:0", batch_size=2)
    assert as_engine(local) is local and as_engine(lambda: local) is local
    assert as_engine(lazy) is lazy and not built  # telling an engine from a factory builds nothing
    sizes = [(300, 400), (224, 224), (300, 400), (300, 400)]
    assert lazy.provenance() == local.provenance() and lazy.dim == local.dim == 16 and not built
    assert [(q, [b.tolist() for b in bs]) for q, bs in lazy.plan(sizes)] == [(224, [[1], [0, 2], [3]])]
    assert [(q, [b.tolist() for b in bs]) for q, bs in local.plan(sizes)] == [(224, [[1], [0, 2], [3]])]
    with pytest.raises(NotImplementedError, match="an engine implements iter_batches"):
        next(iter(Engine("T", scales=(224,), weights="random:0").iter_batches([], [])))
    assert lazy.weights.digest == local.weights.digest
    images = [str(make_image(tmp_path / "a.png", (224, 224)))]
    batch, = lazy.iter_batches(images, [(224, 224)])
    assert built == [1] and np.array_equal(batch.descriptors, local.extract(images)[:, 0])