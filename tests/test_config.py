"""featx.config: the typed descriptor and protocol specs, validated once, stored and read back
as the same objects."""
import json
from pathlib import Path

import pytest

from featx.config import Config, DescriptorSpec, FieldError, ProtocolSpec
from featx.errors import ConfigError
from featx.paper.pipeline import all_pipelines
from featx.paths import pipelines_dir
from featx.evaluate.results import read_result

ROOT = Path(__file__).resolve().parent.parent


def test_a_descriptor_spec_is_normalised_when_made():
    d = DescriptorSpec(nets=("e", "D"), scales=[512, 256], weights={"E": "caffe"}, preprocess="caffe")
    assert d.nets == ("E", "D") and d.scales == (512, 256)
    assert d.weights == {"E": "caffe", "D": "torchvision"}  # a net given none: its default
    assert d.preprocess == {"E": "caffe", "D": "caffe"}
    assert DescriptorSpec(nets="D,E").nets == ("D", "E")
    assert DescriptorSpec(weights=Path("w/vgg16.pth")).weights == {"D": "w/vgg16.pth"}
    assert d.views == ("image",) and DescriptorSpec(setting="image+box").views == ("image", "box")
    assert d.nets_name() == "ED" and DescriptorSpec(nets=("T",)).nets_name() == "T"
    with pytest.raises(AttributeError):
        d.nets = ("D",)  # frozen: what was checked stays as checked


@pytest.mark.parametrize("fields, field, message", [
    (dict(nets=()), "nets", r"name at least one net, each once"),
    (dict(nets=("D", "d")), "nets", r"name at least one net, each once"),
    (dict(nets=("F",)), "nets", r"unknown net 'F'"),
    (dict(nets=("D", 5)), "nets", r"nets \('D', 5\): give net names"),
    (dict(nets=5), "nets", r"nets 5: give net names"),
    (dict(scales=(200,)), "scales", r"scale Q=200 is too small: Net-D needs"),
    (dict(scales="256"), "scales", r"scales"),
    (dict(aggregate="median"), "aggregate", r"aggregate 'median': choose one of mean, stack, max"),
    (dict(weights={"E": "caffe"}), "weights", r"weights names E, which is not among the nets \['D'\]"),
    (dict(weights=3), "weights", r"weights of D: 3 is not a name or a file path"),
    (dict(preprocess="bgr"), "preprocess", r"preprocess of D: 'bgr': choose one of caffe, torchvision, timm"),
    (dict(preprocess="timm"), "preprocess", r"preprocess of D: 'timm' is a timm model's own preprocessing; Net-D"),
    (dict(flip="yes"), "flip", r"flip 'yes': give True or False"),
    (dict(dtype="int8"), "dtype", r"dtype 'int8': choose one of float32, bfloat16, float16"),
    (dict(setting="box"), "setting", r"setting 'box': choose one of image, image\+box"),
])
def test_each_field_has_one_validator_that_names_it(fields, field, message):
    with pytest.raises(FieldError, match=message) as e:
        DescriptorSpec(**fields)
    assert e.value.field == field and isinstance(e.value, ConfigError)


def test_a_protocol_spec():
    assert ProtocolSpec(c_grid=[1, 10]).c_grid == (1.0, 10.0)
    for fields, message in ((dict(solver="sgd"), "solver 'sgd': choose one of torch, liblinear"),
                            (dict(c_grid=[0]), r"c_grid \[0\]: C must be a finite positive number, not 0"),
                            (dict(device=""), "device ''")):
        with pytest.raises(FieldError, match=message):
            ProtocolSpec(**fields)


def test_a_config_is_stored_flat_and_read_back_as_itself():
    cfg = Config.of("caltech101", nets=("D", "E"), scales=(256, 384), aggregate="stack",
                    weights={"E": "caffe"}, solver="liblinear", c_grid=(0.1, 1), device="cuda")
    flat = json.loads(json.dumps(cfg.to_json()))
    assert flat == {"dataset": "caltech101", "nets": ["D", "E"], "scales": [256, 384], "aggregate": "stack",
                    "weights": {"D": "torchvision", "E": "caffe"}, "preprocess": {"D": None, "E": None},
                    "flip": True, "dtype": "float32", "setting": "image", "solver": "liblinear",
                    "c_grid": [0.1, 1.0], "device": "cuda"}
    assert Config.from_json(flat) == cfg
    assert cfg.aggregate == "stack" and cfg.solver == "liblinear" and cfg.run_name() == "DE-256-384x2-stack"
    assert cfg.replace(aggregate="max", device="cpu") == Config.of(
        "caltech101", nets=("D", "E"), scales=(256, 384), aggregate="max", weights={"E": "caffe"},
        solver="liblinear", c_grid=(0.1, 1), device="cpu")
    # what featx 0.5-0.7 wrote (no flip field): read, with the default
    old = {k: v for k, v in flat.items() if k != "flip"}
    assert Config.from_json(old).flip is True
    with pytest.raises(ConfigError, match="unknown configuration field 'colour'"):
        Config.of("caltech101", colour="red")
    with pytest.raises(FieldError, match="aggregate 'mode'"):
        cfg.replace(aggregate="mode")
    with pytest.raises(ConfigError, match="unknown configuration field 'colour'"):
        cfg.replace(colour="red")
    # other nets: the ones kept keep their weights, a new one gets its default
    assert cfg.replace(nets=("E", "T")).weights == {"E": "caffe", "T": "torchvision"}
    assert cfg.replace(nets=("E",), weights="random").weights == {"E": "random"}


def test_every_committed_result_and_shipped_pipeline_reads_as_typed_specs():
    results = [p for p in (ROOT / "results").glob("*/*.json")
               if not p.name.endswith(".model.json") and p.parent.name != "bench"]
    assert results
    for path in results:
        r = read_result(path)
        assert isinstance(r.config, Config) and isinstance(r.config.descriptor, DescriptorSpec)
        assert Config.from_json(r.config.to_json()) == r.config
        raw = json.loads(path.read_text())["config"]
        assert r.config.aggregate == raw["aggregate"] and list(r.config.scales) == raw["scales"]
    for p in all_pipelines(pipelines_dir()):
        cfg = p.config(solver="liblinear")
        assert cfg.descriptor == p.descriptor and cfg.c_grid == p.c_grid and cfg.solver == "liblinear"


def test_a_bad_configuration_in_a_result_file_names_the_file(tmp_path):
    path = next(p for p in (ROOT / "results").glob("*/*.json")
                if not p.name.endswith(".model.json") and p.parent.name != "bench")
    d = json.loads(path.read_text())
    d["config"]["aggregate"] = "median"
    (tmp_path / "r.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=r"r.json: its configuration is not valid: aggregate 'median'"):
        read_result(tmp_path / "r.json")


def test_per_net_options_as_written_on_the_command_line():
    from featx.config import parse_per_net
    from featx.net.specs import default_weights
    nets = ["D", "E"]
    assert parse_per_net("caffe", nets) == {"D": "caffe", "E": "caffe"}
    assert parse_per_net(None, nets, default_weights) == {"D": "torchvision", "E": "torchvision"}
    assert parse_per_net("e=caffe:w/vgg19.pth", nets, default_weights) == {"D": "torchvision", "E": "caffe:w/vgg19.pth"}
    assert parse_per_net("D=a.pth,E=b.h5", nets) == {"D": "a.pth", "E": "b.h5"}
    with pytest.raises(ConfigError, match=r"--preprocess 'E=caffe': no value given for Net-D"):
        parse_per_net("E=caffe", nets, option="--preprocess")
    with pytest.raises(ConfigError, match=r"--weights 'T=random' names Net-T, which is not among the nets \(Net-D, Net-E\)"):
        parse_per_net("T=random", nets, default_weights)
    with pytest.raises(ConfigError, match="unknown net 'X'"):
        parse_per_net("X=a.pth", nets)
    assert parse_per_net("E=caffe:w.pth", option="--local-weights") == {"E": "caffe:w.pth"}
    with pytest.raises(ConfigError, match="--local-weights 'E': write NET=VALUE"):
        parse_per_net("E", option="--local-weights")
