import socket

import h5py
import numpy as np
import pytest
import torch

from featx import CAFFE, TORCHVISION, Extractor, WeightsError
from featx.net.specs import NETS
from featx.net.vgg import random_state_dict
from featx.net.weights import convert_keras_h5, keras_layer_names, load_weights


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network unreachable (test)")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_torchvision_weights_come_from_the_hub_cache_offline(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    state = random_state_dict(NETS["D"], seed=5)
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(state, ckpt / "vgg16-397923af.pth")
    ex = Extractor("D", scales=(224,), weights="torchvision", device="cpu")
    assert ex.preprocess == TORCHVISION and ex.weights.source == "torchvision"
    assert ex.weights.path == ckpt / "vgg16-397923af.pth"
    assert torch.equal(ex.model.fc6.weight, state["classifier.0.weight"])
    assert torch.equal(ex.model.features[0].weight, state["features.0.weight"])


@pytest.mark.parametrize("source,name", [("torchvision", "vgg19-dcbb9e9d.pth"), ("caffe", "vgg19-d01eb7cb.pth")])
def test_missing_hub_file_offline_names_the_path(tmp_path, monkeypatch, no_network, source, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError) as err:
        load_weights(NETS["E"], source, progress=False)
    msg = str(err.value)
    assert str(tmp_path / "hub" / "checkpoints" / name) in msg
    assert "weights=FILE" in msg and "cannot download" in msg


def test_named_sources_carry_their_preprocessing(tmp_path, monkeypatch, tiny_net):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(WeightsError, match="caffe weights are trained with caffe preprocessing"):
        load_weights(NETS["D"], "caffe", preprocess="torchvision")
    torch.save(random_state_dict(tiny_net), tmp_path / "t.pth")
    with pytest.raises(WeightsError, match="does not say how images must be prepared"):
        load_weights(tiny_net, str(tmp_path / "t.pth"))
    assert load_weights(tiny_net, tmp_path / "t.pth", "caffe").preprocess == CAFFE
    with pytest.raises(WeightsError, match="unknown preprocess 'bgr'"):
        load_weights(tiny_net, tmp_path / "t.pth", "bgr")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tiny_net, tmp_path / "nope.pth", "caffe")


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_loading_never_unpickles_arbitrary_objects(tmp_path, tiny_net):
    torch.save({"features.0.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(WeightsError, match="holds pickled Python objects besides tensors, which featx "
                                           "refuses to load") as err:
        load_weights(tiny_net, tmp_path / "evil.pth", "caffe")
    assert "weights_only" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("damage,message", [
    (lambda s: s["features.0.weight"].view(-1).__setitem__(3, float("nan")), "tensor features.0.weight holds NaN"),
    (lambda s: s["classifier.3.bias"].__setitem__(0, float("inf")), "tensor classifier.3.bias holds NaN or infinite"),
    (lambda s: s["classifier.0.weight"].zero_(), "tensor classifier.0.weight is all zeros"),
])
def test_broken_weights_are_refused_with_the_tensor_name(tmp_path, tiny_net, damage, message):
    state = random_state_dict(tiny_net)
    damage(state)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(WeightsError, match=f"broken.pth: {message}"):
        load_weights(tiny_net, tmp_path / "broken.pth", "caffe")


def test_a_named_source_from_a_local_copy(tmp_path, tiny_net):
    torch.save(random_state_dict(tiny_net, seed=2), tmp_path / "copy.pth")
    w = load_weights(tiny_net, f"caffe:{tmp_path / 'copy.pth'}")
    assert (w.source, w.preprocess, w.path, w.tag) == ("caffe", CAFFE, tmp_path / "copy.pth", "caffe")
    assert w.digest == load_weights(tiny_net, tmp_path / "copy.pth", "caffe").digest
    with pytest.raises(WeightsError, match="caffe weights are trained with caffe preprocessing"):
        load_weights(tiny_net, f"caffe:{tmp_path / 'copy.pth'}", "torchvision")
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tiny_net, "torchvision:/no/such.pth")
    with pytest.raises(WeightsError, match="write random or random:SEED with an integer SEED"):
        load_weights(tiny_net, "random:abc")


def test_the_shared_packed_vgg19_is_recognised(real_weights_e):
    from featx.net.weights import PACKED_VGG19, describe_weights, file_sha256
    w = load_weights(NETS["E"], f"caffe:{real_weights_e}")
    assert w.known_as == PACKED_VGG19
    assert describe_weights(file_sha256(real_weights_e)) == PACKED_VGG19  # as 0.2.0 caches recorded it


def test_preprocessing_values():
    x = torch.tensor([10, 20, 30], dtype=torch.uint8).view(1, 3, 1, 1)
    caffe = CAFFE(x)[0, :, 0, 0]  # BGR, 0..255, mean subtracted
    assert torch.allclose(caffe, torch.tensor([30 - 103.939, 20 - 116.779, 10 - 123.68]))
    tv = TORCHVISION(x)[0, :, 0, 0]
    want = [(v / 255 - m) / s for v, m, s in zip((10, 20, 30), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    assert torch.allclose(tv, torch.tensor(want, dtype=torch.float32), atol=1e-6)


def write_keras_h5(path, spec, rng, drop=(), bad_shape=None):
    """A weight file in Keras' layout: a group per layer, kernel then bias (weight_names)."""
    kernels = {}
    with h5py.File(path, "w") as f:
        c_in = 3
        convs = [v for v in spec.layers if v != "M"]
        layers = list(zip(keras_layer_names(spec), [(3, 3, None, c) for c in convs]))
        shapes = []
        for name, (_, _, _, c) in layers:
            shapes.append((name, (3, 3, c_in, c), (c,)))
            c_in = c
        shapes += [("fc1", (7 * 7 * c_in, spec.fc_dim), (spec.fc_dim,)),
                   ("fc2", (spec.fc_dim, spec.fc_dim), (spec.fc_dim,)),
                   ("predictions", (spec.fc_dim, spec.num_classes), (spec.num_classes,))]
        f.attrs["layer_names"] = [n.encode() for n, _, _ in shapes]
        for name, kshape, bshape in shapes:
            if name in drop:
                continue
            if name == bad_shape:
                kshape = kshape[:-1] + (kshape[-1] + 1,)
            g = f.create_group(name)
            k = rng.standard_normal(kshape).astype(np.float32)
            b = rng.standard_normal(bshape).astype(np.float32)
            g[f"{name}_W_1:0"], g[f"{name}_b_1:0"] = k, b
            g.attrs["weight_names"] = [f"{name}_W_1:0".encode(), f"{name}_b_1:0".encode()]
            kernels[name] = (k, b)
    return kernels


def test_keras_conversion_places_known_entries(tmp_path, tiny_net):
    # TINY = (4, M, 8, M, 8, 8, M, 8, M, 8, M): block3 has two convs.
    assert keras_layer_names(tiny_net) == ["block1_conv1", "block2_conv1", "block3_conv1",
                                           "block3_conv2", "block4_conv1", "block5_conv1"]
    k = write_keras_h5(tmp_path / "k.h5", tiny_net, np.random.default_rng(0))
    state = convert_keras_h5(tmp_path / "k.h5", tiny_net)
    # block1_conv1 kernel[ky=2, kx=0, in=1, out=3] -> features.0.weight[out=3, in=1, ky=2, kx=0]
    assert state["features.0.weight"][3, 1, 2, 0] == k["block1_conv1"][0][2, 0, 1, 3]
    # layers: 0 conv,1 relu,2 M,3 conv,4 relu,5 M,6 conv,7 relu,8 conv: block3_conv2 is features.8
    assert state["features.8.weight"][5, 7, 0, 1] == k["block3_conv2"][0][0, 1, 7, 5]
    assert torch.equal(state["features.8.bias"], torch.from_numpy(k["block3_conv2"][1]))
    # fc1: Keras row (h*7 + w)*C + c  ->  torch column c*49 + h*7 + w; C = 8 here
    h, w, c, o = 2, 5, 6, 11
    assert state["classifier.0.weight"][o, c * 49 + h * 7 + w] == k["fc1"][0][(h * 7 + w) * 8 + c, o]
    assert state["classifier.0.weight"][o, c * 49 + h * 7 + w] != k["fc1"][0][c * 49 + h * 7 + w, o]
    assert state["classifier.3.weight"][4, 9] == k["fc2"][0][9, 4]
    assert state["classifier.6.weight"][7, 3] == k["predictions"][0][3, 7]
    # the whole file loads through the public path, with Caffe preprocessing by default
    ex = Extractor("T", scales=(224,), weights=tmp_path / "k.h5", device="cpu")
    assert ex.preprocess == CAFFE and ex.weights.source == "file"


def test_keras_errors_name_the_tensor(tmp_path, tiny_net):
    write_keras_h5(tmp_path / "bad.h5", tiny_net, np.random.default_rng(0), bad_shape="block2_conv1")
    with pytest.raises(WeightsError, match=r"block2_conv1 kernel has shape \(3, 3, 4, 9\), expected \(3, 3, 4, 8\)"):
        convert_keras_h5(tmp_path / "bad.h5", tiny_net)
    write_keras_h5(tmp_path / "notop.h5", tiny_net, np.random.default_rng(0), drop=("fc1", "fc2", "predictions"))
    with pytest.raises(WeightsError, match="no layer fc1.*_notop"):
        convert_keras_h5(tmp_path / "notop.h5", tiny_net)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(WeightsError, match="cannot read .*junk.h5 as HDF5"):
        convert_keras_h5(tmp_path / "junk.h5", tiny_net)


def test_a_files_tensor_digest_is_remembered_and_recomputed_when_the_file_changes(tmp_path, monkeypatch):
    import featx.net.weights as fw
    path = tmp_path / "t.pth"
    torch.save(random_state_dict(NETS["T"], seed=3), path)
    hashed = []
    real = fw.state_digest
    monkeypatch.setattr(fw, "state_digest", lambda state, origin="": hashed.append(origin) or real(state, origin))
    first = load_weights(NETS["T"], path, "caffe")
    assert len(hashed) == 1 and first.digest.startswith("tensors:")
    # a later process: resolved without reading the file, then loaded without hashing it
    assert load_weights(NETS["T"], path, "caffe", tensors=False).digest == first.digest
    assert load_weights(NETS["T"], path, "caffe").digest == first.digest and len(hashed) == 1
    assert fw.find_file(first.digest, "tiny") == path.resolve()
    # other tensors in the same file: size and times differ, so it is hashed again
    torch.save(random_state_dict(NETS["T"], seed=4), path)
    assert load_weights(NETS["T"], path, "caffe", tensors=False).digest == ""
    second = load_weights(NETS["T"], path, "caffe")
    assert len(hashed) == 2 and second.digest != first.digest and fw.find_file(first.digest, "tiny") is None
    # a damaged memo is only a cache: ignored, and rewritten
    fw._digest_memo().write_text("{not json")
    assert load_weights(NETS["T"], path, "caffe").digest == second.digest and len(hashed) == 3
    assert fw.remembered_digest(path, "tiny") == second.digest


def test_extractors_of_the_same_weights_share_one_net_and_lazy_ones_read_nothing(tmp_path, monkeypatch):
    import featx.net.weights as fw
    path = tmp_path / "t.pth"
    torch.save(random_state_dict(NETS["T"], seed=5), path)
    reads = []
    real = fw.load_pth
    monkeypatch.setattr(fw, "load_pth", lambda p: reads.append(p) or real(p))
    lazy = Extractor("T", scales=(224,), weights=path, preprocess="caffe", device="cpu", lazy=True)
    assert reads == [] and not lazy.loaded and lazy.provenance()["weights_file"] == str(path)
    a = Extractor("T", scales=(224,), weights=path, preprocess="caffe", device="cpu")
    b = Extractor("T", scales=(224, 256), weights=path, preprocess="caffe", device="cpu", batch_size=2)
    assert len(reads) == 1 and a.model is b.model and lazy.model is a.model
    assert lazy.weights.digest == a.weights.digest


def test_one_record_per_published_weight_source():
    from featx.net.specs import NETS
    from featx.net.weights import CAFFE, NAMED_SOURCES, PREPROCESS, WEIGHT_SOURCES, weight_source
    assert set(WEIGHT_SOURCES) == {(s, n.arch) for s in ("torchvision", "caffe") for n in NETS.values()
                                   if n.arch in ("vgg16", "vgg19")}
    for (source, arch), w in WEIGHT_SOURCES.items():
        assert (w.source, w.arch) == (source, arch) and w.preprocess is PREPROCESS[source] is NAMED_SOURCES[source]
        assert w.url.startswith("https://") and arch in w.url and w.licence and w.origin
        assert w.file.name == w.url.rsplit("/", 1)[1] and w.file.parent.name == "checkpoints"
        # torch.hub checks a download against the sha256 prefix in the name: torchvision's only
        assert w.hash_checked == (source == "torchvision")
    assert weight_source("caffe", "vgg19").preprocess == CAFFE
    with pytest.raises(WeightsError, match="no caffe weights are published for tiny"):
        weight_source("caffe", "tiny")
