"""The package layout is the data flow (docs/design.md): each module sits in its stage, and the
imports at the top of a module point only back along the flow, in the order the design page
gives."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "featx"


def module_name(path: Path) -> str:
    """featx/net/vgg.py -> "net/vgg"; featx/net/__init__.py -> "net/"."""
    rel = path.relative_to(PACKAGE).with_suffix("").as_posix()
    return rel[: -len("__init__")] if rel.endswith("__init__") else rel


def layers() -> list[set[str]]:
    """The design page's order: each layer a set of modules ("config") or stages ("net/")."""
    page = (ROOT / "docs" / "design.md").read_text()
    line, = re.findall(r"```layers\n(.+)\n```", page)
    return [set(layer.split()) for layer in line.split(" -> ")]


def layer_of(module: str, order: list[set[str]]) -> int:
    for i, layer in enumerate(order):  # a module named on its own wins over its stage
        if module in layer:
            return i
    stage = module.split("/")[0] + "/" if "/" in module else None
    for i, layer in enumerate(order):
        if stage in layer:
            return i
    raise AssertionError(f"featx/{module}.py is in no layer of docs/design.md")


def top_level_imports(path: Path, source: str | None = None) -> set[str]:
    """The featx modules a module imports at its top (not inside functions or TYPE_CHECKING)."""
    package = module_name(path).split("/")[:-1]
    found = set()
    for node in ast.parse(path.read_text() if source is None else source).body:
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = package[: len(package) - (node.level - 1)] + (node.module.split(".") if node.module else [])
        for alias in node.names:
            candidate = "/".join(base + [alias.name])
            found.add(candidate if (PACKAGE / f"{candidate}.py").is_file() else "/".join(base))
    return {m if (PACKAGE / f"{m}.py").is_file() else m + "/" for m in found if m}


def modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__main__.py")


def test_every_module_is_in_a_layer():
    order = layers()
    placed = {module_name(p): layer_of(module_name(p), order) for p in modules() if module_name(p)}
    assert placed["errors"] == 0 and placed["net/specs"] == 1 and placed["cli"] == len(order) - 1
    assert placed["extract/cache"] == placed["extract/"] < placed["evaluate/model"]


def test_top_level_imports_point_back_along_the_data_flow():
    order = layers()
    wrong = []
    for path in modules():
        here = module_name(path)
        if here == "":  # featx/__init__.py: its names load lazily from every stage
            continue
        for target in top_level_imports(path):
            if target != "" and layer_of(target, order) > layer_of(here, order):
                wrong.append(f"featx/{here}.py imports featx/{target} at its top")
    assert not wrong, wrong


def test_the_rule_catches_a_forward_import():
    """The check itself: extract/ imported at the top of a data/ module is a later layer, the
    same import inside a function is not looked at."""
    order = layers()
    path = PACKAGE / "data" / "images.py"
    forward = "from ..errors import ImageError\nfrom ..extract.cache import DescriptorCache\n"
    assert top_level_imports(path, forward) == {"errors", "extract/cache"}
    assert layer_of("extract/cache", order) > layer_of("data/images", order)
    inside = "def f():\n    from ..extract.cache import DescriptorCache\n"
    assert top_level_imports(path, inside) == set()
    assert top_level_imports(PACKAGE / "extract" / "update.py", "from . import cache\nfrom .. import paths\n") == {
        "extract/cache", "paths"}
