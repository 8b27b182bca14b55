"""The README and docs/ stay true: every `featx ...` command line in them names commands,
options and choices that exist, every relative link leads to a file that exists, and the
README's Python example runs (on a tiny net standing in for Net-E)."""
import re
import shlex
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

from featx.cli import main

from conftest import make_image

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def fenced(lang: str | None = None, pages=PAGES) -> list[str]:
    """The pages' fenced code blocks (of one language, or those without a language or bash)."""
    blocks = [b for page in pages for b in re.findall(r"```(\w*)\n(.*?)```", page.read_text(), flags=re.S)]
    return [body for tag, body in blocks if (tag == lang if lang else tag in ("", "bash", "sh"))]


def links(page: Path) -> list[str]:
    """The relative link targets of a markdown page, outside its code blocks, anchors cut."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and t.split("#")[0]]


def test_the_readme_is_short_and_links_to_every_docs_page():
    assert len(README.read_text().splitlines()) <= 200
    linked = {(README.parent / t).resolve() for t in links(README)}
    assert set(PAGES[1:]) <= linked, [p.name for p in PAGES[1:] if p not in linked]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_leads_to_a_file(page):
    found = links(page)
    missing = [t for t in found if not (page.parent / t).exists()]
    assert not missing, f"{page.name}: {missing}"


def command_lines() -> list[list[str]]:
    out = []
    for block in fenced():
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"&&|\|\||;", line):
                words = shlex.split(part, comments=True)
                starts = [i for i, w in enumerate(words) if w == "featx" or w.endswith("/featx")]
                if starts:
                    words = words[starts[0] + 1:]
                    cut = [i for i, w in enumerate(words) if w in (">", ">>", "|", "2>")]
                    out.append(words[:cut[0]] if cut else words)
    return out


def test_the_readme_has_command_lines():
    lines = command_lines()
    assert len(lines) > 20 and {w[0] for w in lines} >= {"extract", "svm", "predict", "export", "reproduce", "info"}


@pytest.mark.parametrize("words", command_lines(), ids=lambda w: " ".join(w)[:60])
def test_every_readme_command_line_names_what_exists(words):
    command, rest = main, list(words)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        sub = command.get_command(click.Context(command), rest[0])
        assert sub is not None, f"featx {' '.join(words)}: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    options = {o: p for p in command.params if isinstance(p, click.Option) for o in p.opts + p.secondary_opts}
    options["--help"] = None
    for i, word in enumerate(rest):
        if not word.startswith("-") or word == "-":
            continue
        name = word.split("=")[0]
        assert name in options, f"featx {' '.join(words)}: {command.name} has no option {name}"
        param = options[name]
        if param is not None and isinstance(param.type, click.Choice) and "=" not in word and i + 1 < len(rest):
            assert rest[i + 1] in param.type.choices, f"featx {' '.join(words)}: {name} {rest[i + 1]!r}"


def test_the_readme_python_example_runs(tmp_path, monkeypatch):
    import torch

    from featx.net.specs import NETS, NetSpec

    from featx.net.vgg import random_state_dict
    tiny_e = NetSpec("E", "vgg19", (4, "M", 8, "M", 8, 8, "M", 8, "M", 8, "M"), fc_dim=16, num_classes=10)
    monkeypatch.setitem(NETS, "E", tiny_e)
    monkeypatch.chdir(tmp_path)
    torch.save(random_state_dict(tiny_e, seed=0), "vgg19_caffe.pth")
    for k, name in enumerate(["a.jpg", "b.jpg", "my_photos/cats/1.jpg", "my_photos/cats/2.jpg",
                              "my_photos/dogs/7.jpg", "my_photos/dogs/8.jpg"]):
        make_image(tmp_path / name, (300, 240) if k % 2 else (240, 300), seed=k, fmt="JPEG")
    for args in (["extract", "--images", "my_photos", "--net", "E", "--weights", "caffe:vgg19_caffe.pth",
                  "--scales", "256,384", "-q"],
                 ["export", "--images", "my_photos", "--net", "E", "--weights", "caffe:vgg19_caffe.pth",
                  "--out", "photos.parquet"]):
        r = CliRunner().invoke(main, args)
        assert r.exit_code == 0, r.output
    namespace = {"train_paths": [str(p) for p in sorted(tmp_path.glob("my_photos/*/*.jpg"))] * 2,
                 "train_labels": np.array([0, 0, 1, 1] * 2)}
    block, = fenced("python", [README])
    exec(compile(block, str(README), "exec"), namespace)
    assert namespace["per_scale"].shape == (2, 3, 16) and namespace["x"].shape == (2, 2, 16)
    assert namespace["X"].shape == (4, 16) and len(namespace["ids"]) == 4
    assert namespace["names"][0] == "E_Q256_0" and namespace["search"].best_params_["svm__C"] in (0.1, 1, 10)
    assert (tmp_path / "vgg-cache" / "E-vgg19_caffe.h5").is_file()


def test_the_design_page_places_every_module_in_a_stage():
    page = (ROOT / "docs" / "design.md").read_text()
    listed = set(re.findall(r"\| `([\w/]+)\.py` \|", page))
    modules = {p.relative_to(ROOT / "featx").with_suffix("").as_posix() for p in (ROOT / "featx").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert modules <= listed, sorted(modules - listed)
    assert listed <= modules, sorted(listed - modules)
