"""Imports only go down the layers listed in DEVELOPERS.md ("Layers").

Every first-party module of the repository (tests aside) belongs to one layer; a module may
import from its own package and from lower layers, never from a higher layer nor from another
package of its own layer. Imports inside functions count the same as module-level ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# lowest first; a layer is a set of peer packages that must not import each other
LAYERS: list[tuple[str, ...]] = [
    ("utils.common",),
    ("utils.geometry",),
    ("utils.colmap",),
    ("networks", "utils.datasets"),
    ("utils.eval",),
    ("utils.train",),
    ("train_patch2pix", "train_ncnet", "data_pairs", "examples"),
    # the learning run drives the whole chain: data commands and both trainers
    ("benchmarks",),
]
FIRST_PARTY = {
    "networks",
    "utils",
    "data_pairs",
    "examples",
    "benchmarks",
    "train_patch2pix",
    "train_ncnet",
}
TOP_SCRIPTS = ("train_patch2pix", "train_ncnet")
# package markers: `utils` itself is only a namespace for the layers above
NAMESPACES = {"utils"}


def _package_of(module: str) -> str | None:
    """The LAYERS entry a dotted module name belongs to (longest prefix), or None."""
    best = None
    for layer in LAYERS:
        for pkg in layer:
            if (module == pkg or module.startswith(pkg + ".")) and (
                best is None or len(pkg) > len(best)
            ):
                best = pkg
    return best


def _rank(pkg: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if pkg in layer)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _source_files() -> list[Path]:
    files = [ROOT / f"{name}.py" for name in TOP_SCRIPTS]
    for top in sorted(FIRST_PARTY - set(TOP_SCRIPTS)):
        files += sorted((ROOT / top).rglob("*.py"))
    return files


def imported_modules(module: str, source: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, absolute dotted name) of every import in `source`, relative ones resolved.

    ``from pkg import name`` yields ``pkg.name`` when that is a module of the tree, else
    ``pkg``; so importing a submodule through its package counts as importing the submodule.
    """
    package = module.split(".") if is_package else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for a in node.names:
                rel = Path(*target.split("."), a.name)
                is_module = (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel).is_dir()
                out.append((node.lineno, f"{target}.{a.name}" if is_module else target))
    return out


def check_module(module: str, source: str, is_package: bool = False) -> list[str]:
    """The layer violations of one module's imports (one line each)."""
    src_pkg = _package_of(module)
    if src_pkg is None:
        return [] if module in NAMESPACES else [f"{module}: in no layer of LAYERS"]
    bad = []
    for line, target in imported_modules(module, source, is_package):
        if target.split(".")[0] not in FIRST_PARTY or target in NAMESPACES:
            continue
        dst_pkg = _package_of(target)
        if dst_pkg is None:
            bad.append(f"{module}:{line} imports {target}, which is in no layer")
        elif dst_pkg != src_pkg and _rank(dst_pkg) >= _rank(src_pkg):
            bad.append(f"{module}:{line} ({src_pkg}) imports {target} ({dst_pkg})")
    return bad


def test_no_import_climbs_a_layer():
    bad = []
    for path in _source_files():
        bad += check_module(_module_name(path), path.read_text(), path.name == "__init__.py")
    assert bad == []


def test_every_first_party_file_is_in_a_layer():
    names = {_module_name(p) for p in _source_files()}
    for mod in ("networks.optim", "utils.common.plotting", "utils.train.visdom_helper"):
        assert mod in names
    assert [n for n in names if _package_of(n) is None and n not in NAMESPACES] == []


@pytest.mark.parametrize(
    "module, code, expect_bad",
    [
        ("networks.fake", "from utils.train.cli import build_parser\n", True),
        ("utils.common.fake", "import utils.eval.measure\n", True),
        ("utils.common.fake", "def f():\n    from utils.datasets import preprocess\n", True),
        ("networks.fake", "from utils.datasets.preprocess import load_im_tensor\n", True),
        ("utils.datasets.fake", "from utils import eval\n", True),
        ("examples.fake", "from data_pairs import make_synthetic\n", True),
        ("utils.eval.fake", "from networks.utils import filter_coarse\n", False),
        ("networks.ncn.fake", "from ..utils import filter_coarse\n", False),
        ("networks.ncn.fake", "from ..optim import parse_lr_decay\n", False),
        ("utils.train.fake", "import numpy\nfrom utils.common import cli\n", False),
    ],
)
def test_checker_catches_climbs(module, code, expect_bad):
    """The checker itself: upward, peer, lazy, package-level and relative imports."""
    bad = check_module(module, code)
    assert bool(bad) == expect_bad, bad
