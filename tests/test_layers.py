"""Layers point down only: every import under kernels/, mim/, bench/ and tools/ is read with
``ast`` (imports at any depth, relative ones resolved, ``importlib.import_module("...")`` with a
literal name included) and checked against the layer table; tests never import ``bench``.

Layers, bottom up (a module may import its own layer or lower ones):

0. ``kernels``
1. ``mim.models``, ``mim.config``, ``mim.io``, ``mim.audio``, ``mim.diffusion``,
   ``mim.checkpoint``, ``mim.runinfo``, ``mim.face``, ``mim.portrait``
2. ``mim.train``, ``mim.losses``, ``mim.data``, ``mim.metrics``, ``mim.sync``, ``mim.evaluate``
3. the product: ``mim.animate``, ``mim.reenact``, ``mim.export``, ``mim.profile``, ``mim.cli``,
   ``mim`` (its ``__init__``), ``mim.__main__``
4. ``bench``, ``tools``

Beyond that: nothing in kernels/ or mim/ (what the wheel ships) imports bench or tools; inference
(``mim.animate``, ``mim.reenact``, ``mim.export``) never imports ``mim.train``; no module imports
another module's private (underscore) name, by ``from x import _y``, by ``x._y`` on an imported
module, or through a private module (``x._m``) of a package other than its own. A module the
table does not place fails, so every new module gets a layer.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE_TREES = ("kernels", "mim", "bench", "tools")

LAYERS = {
    "kernels": 0,
    "mim.models": 1, "mim.config": 1, "mim.io": 1, "mim.audio": 1, "mim.diffusion": 1,
    "mim.checkpoint": 1, "mim.graphs": 1, "mim.runinfo": 1, "mim.face": 1, "mim.portrait": 1, "mim.precision": 1,
    "mim.train": 2, "mim.losses": 2, "mim.data": 2, "mim.metrics": 2, "mim.sync": 2, "mim.evaluate": 2, "mim.video_metrics": 2, "mim.metric_nets": 2, "mim.video_eval": 2, "mim.headpose": 2, "mim.gesture_metrics": 2,
    "mim.animate": 3, "mim.stream": 3, "mim.reenact": 3, "mim.export": 3, "mim.profile": 3, "mim.cli": 3,
    "mim": 3, "mim.__main__": 3, "mim.prepare": 3, "mim.app": 3,
    "bench": 4, "tools": 4,
}
LAYER_NAMES = ("kernels", "mim models/config/io", "mim training", "product", "bench/tools")
# the top-level packages of this repository: imports of anything else (torch, numpy) are not ours
OURS = set(SOURCE_TREES)
SHIPPED = ("kernels", "mim")                       # what `pip install` installs
INFERENCE = ("mim.animate", "mim.reenact", "mim.export")


def _within(module, package):
    return module == package or module.startswith(package + ".")


def layer_of(module):
    """The layer of a dotted module name by its longest entry in LAYERS (``mim`` itself only for
    the package's own ``__init__``); None when the table does not place it."""
    best = None
    for prefix, layer in LAYERS.items():
        if prefix == "mim" and module != "mim":
            continue
        if _within(module, prefix) and (best is None or len(prefix) > len(best[0])):
            best = (prefix, layer)
    return None if best is None else best[1]


def _is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def module_name(path, root=ROOT):
    """``mim/models/renderer.py`` -> ``mim.models.renderer``; ``mim/__init__.py`` -> ``mim``."""
    parts = list(Path(path).relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _package_of(module, is_package):
    return module if is_package else module.rpartition(".")[0]


class Violation:
    def __init__(self, module, line, rule, message):
        self.module, self.line, self.rule, self.message = module, line, rule, message

    def __repr__(self):
        return f"{self.module}:{self.line}: [{self.rule}] {self.message}"


def _imports(tree, module, is_package):
    """Yield (line, target module, imported names or None, bound names -> module) for each import
    in ``tree``, at any depth. Relative imports are resolved against ``module``'s package."""
    package = _package_of(module, is_package)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = {alias.asname: alias.name} if alias.asname else {alias.name.split(".")[0]:
                                                                        alias.name.split(".")[0]}
                yield node.lineno, alias.name, None, bound
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                if node.level - 1 >= len(parts):
                    raise ValueError(f"{module}:{node.lineno}: relative import beyond the top-level package")
                base = parts[:len(parts) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            names = [alias.name for alias in node.names]
            bound = {alias.asname or alias.name: f"{target}.{alias.name}" for alias in node.names}
            yield node.lineno, target, names, bound
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and ((isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                   or (isinstance(node.func, ast.Name) and node.func.id in ("import_module", "__import__")))):
            yield node.lineno, node.args[0].value, None, {}


def check_source(source, module, modules, is_package=False):
    """Every violation of the layer rules in one module's ``source``. ``modules``: the dotted names
    of all modules of the repository (to tell ``from pkg import submodule`` from a name)."""
    tree = ast.parse(source)
    violations = []
    own_layer = layer_of(module)
    if own_layer is None:
        violations.append(Violation(module, 0, "unplaced", "the layer table does not place this module: "
                                    "add it to LAYERS in tests/test_layers.py (and docs/architecture.md)"))
    shipped = any(_within(module, top) for top in SHIPPED)
    own_package = _package_of(module, is_package)
    aliases = {}                                    # a name bound by an import -> the module it names
    for line, target, names, bound in _imports(tree, module, is_package):
        if target.split(".")[0] not in OURS:
            continue
        for name, dotted in bound.items():
            if dotted in modules:
                aliases[name] = dotted
        # what is really imported: `from pkg import sub` imports the module pkg.sub
        targets = [f"{target}.{name}" if f"{target}.{name}" in modules else target for name in names or [None]]
        for imported in dict.fromkeys(targets):
            layer = layer_of(imported)
            if layer is None:
                violations.append(Violation(module, line, "unplaced", f"imports {imported}, which the layer "
                                            f"table does not place"))
            elif own_layer is not None and layer > own_layer:
                violations.append(Violation(module, line, "upward", f"layer {own_layer} "
                                            f"({LAYER_NAMES[own_layer]}) imports {imported}, layer {layer} "
                                            f"({LAYER_NAMES[layer]})"))
            if shipped and imported.split(".")[0] in ("bench", "tools"):
                violations.append(Violation(module, line, "shipped-imports-script",
                                            f"installed code imports {imported}, which the wheel does not ship"))
            if module in INFERENCE and _within(imported, "mim.train"):
                violations.append(Violation(module, line, "inference-imports-training",
                                            f"inference imports {imported}"))
            private = [part for part in imported.split(".") if _is_private(part)]
            if private:
                owner = imported[:imported.index(private[0])].rstrip(".")
                if not _within(own_package, owner) and not _within(module, imported):
                    violations.append(Violation(module, line, "private", f"imports {imported}, a private "
                                                f"module of {owner}"))
        for name in names or []:
            if _is_private(name) and f"{target}.{name}" not in modules and target != module:
                violations.append(Violation(module, line, "private", f"imports the private name {name} "
                                            f"of {target}"))
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute):
            continue
        chain = []
        base = node
        while isinstance(base, ast.Attribute):
            chain.append(base.attr)
            base = base.value
        if not isinstance(base, ast.Name) or base.id not in aliases:
            continue
        owner = aliases[base.id]
        for attr in reversed(chain):
            if f"{owner}.{attr}" in modules:
                owner = f"{owner}.{attr}"
                continue
            if _is_private(attr) and owner != module:
                violations.append(Violation(module, node.lineno, "private", f"reads the private name "
                                            f"{attr} of {owner}"))
            break
    return violations


def _unique(violations):
    seen, out = set(), []
    for violation in violations:
        key = repr(violation)
        if key not in seen:
            seen.add(key)
            out.append(violation)
    return out


def repository_modules(root=ROOT):
    """{dotted name: (path, is_package)} of every module under the source trees."""
    found = {}
    for tree in SOURCE_TREES:
        for path in sorted((root / tree).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            found[module_name(path, root)] = (path, path.name == "__init__.py")
    return found


def test_every_module_imports_only_its_layer_or_lower():
    modules = repository_modules()
    assert "mim.models" in modules and "kernels" in modules, f"no source found under {ROOT}"
    violations = []
    for module, (path, is_package) in modules.items():
        violations += check_source(path.read_text(encoding="utf-8"), module, set(modules), is_package)
    violations = _unique(violations)
    assert not violations, f"{len(violations)} layer violation(s):\n" + "\n".join(map(repr, violations))


def check_test_source(source, module):
    """Violations of 'tests never import bench' in one test file (run bench as a subprocess)."""
    violations = []
    for line, target, names, _ in _imports(ast.parse(source), module, False):
        if target.split(".")[0] == "bench":
            violations.append(Violation(module, line, "test-imports-bench", f"imports {target}"))
    return violations


def test_tests_do_not_import_bench():
    violations = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        if "__pycache__" not in path.parts:
            violations += check_test_source(path.read_text(encoding="utf-8"), module_name(path))
    assert not violations, "tests import bench (run it as a subprocess):\n" + "\n".join(map(repr, violations))


# The checker itself, on planted violations.

_MODULES = {"kernels", "kernels.cost", "kernels._dispatch", "kernels.selective_scan",
            "kernels.selective_scan.op", "kernels.selective_scan.triton_kernels",
            "mim", "mim.models", "mim.models.renderer", "mim.config", "mim.io", "mim.audio",
            "mim.train", "mim.train.stage1", "mim.data", "mim.animate", "mim.reenact", "mim.export",
            "mim.profile", "mim.profile.stages", "mim.cli", "bench", "bench.traffic", "tools", "tools.aot"}


def _rules(source, module, is_package=False):
    return sorted({v.rule for v in check_source(source, module, _MODULES, is_package)})


def test_checker_accepts_downward_and_same_layer_imports():
    source = """
import torch
import kernels
from kernels.cost import Traffic
from mim.io import read_image
from mim import config
import mim.models.renderer as renderer
from . import stages
from .stages import time_stage
def later():
    from mim.train.stage1 import train
    import bench.traffic
"""
    assert check_source(source, "tools.aot", _MODULES) == []
    assert check_source("from mim.models import renderer\nfrom mim.animate import Animator\n"
                        "from .stages import run", "mim.profile", _MODULES, is_package=True) == []


@pytest.mark.parametrize("module, source, rule", [
    # (a) upward, at any depth, relative imports resolved, `from pkg import sub` seen as pkg.sub
    ("mim.models.renderer", "from mim.animate import Animator", "upward"),
    ("mim.models.renderer", "def f():\n    if True:\n        from ..train import stage1", "upward"),
    ("mim.models.renderer", "from mim import animate", "upward"),
    ("mim.models.renderer", "from mim import Animator", "upward"),
    ("kernels.cost", "import mim.io", "upward"),
    ("kernels.cost", "import importlib\nimportlib.import_module('mim.config')", "upward"),
    ("mim.data", "try:\n    import mim.cli\nexcept ImportError:\n    pass", "upward"),
    # (b) installed code importing bench or tools
    ("mim.profile.stages", "from bench.traffic import CASES", "shipped-imports-script"),
    ("kernels.selective_scan.op", "import tools.aot", "shipped-imports-script"),
    # (c) inference importing training (same layer order allows it otherwise)
    ("mim.reenact", "from mim.train.stage1 import renderer_from_checkpoint", "inference-imports-training"),
    ("mim.export", "import mim.train", "inference-imports-training"),
    # (d) private names: from-import, attribute on an imported module, a private module
    ("mim.profile", "from mim.animate import _MIN_SAMPLES", "private"),
    ("mim.data", "import mim.io\nmim.io._size_hw(3)", "private"),
    ("mim.data", "from mim import io\nio._size_hw(3)", "private"),
    ("mim.data", "import mim.io as media\nx = media._size_hw", "private"),
    ("mim.profile.stages", "from kernels._dispatch import resolve_backend", "private"),
    ("mim.profile.stages", "from kernels import _dispatch", "private"),
    ("mim.cli", "from .models.renderer import _Window", "private"),
    # a module the table does not place, importer or imported
    ("mim.newthing", "import torch", "unplaced"),
    ("mim.models.renderer", "import mim.newthing", "unplaced"),
])
def test_checker_catches_planted_violations(module, source, rule):
    assert rule in _rules(source, module), f"{rule!r} not found in {module} for:\n{source}"


def test_checker_allows_a_package_its_own_private_modules():
    assert _rules("from kernels._dispatch import resolve_backend", "kernels.cost") == []
    assert _rules("from .._dispatch import resolve_backend", "kernels.selective_scan.op") == []


def test_checker_catches_tests_importing_bench():
    assert [v.rule for v in check_test_source("from bench.traffic import CASES", "tests.bench.t")] == \
        ["test-imports-bench"]
    assert [v.rule for v in check_test_source("import bench", "tests.t")] == ["test-imports-bench"]
    assert check_test_source("import subprocess\nfrom kernels.cost import Traffic", "tests.t") == []


# What is loaded at run time, transitively (the static check reads one file at a time).

_PROBE = """
import json, os, sys
before = dict(os.environ)
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps({"modules": sorted(m for m in sys.modules if m.split(".")[0] in ("kernels", "mim", "bench", "tools")),
                  "environ_changed": sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))}))
"""


def _loaded(*names):
    result = subprocess.run([sys.executable, "-c", _PROBE, *names], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, f"importing {names} failed:\n{result.stderr}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_lower_layers_load_no_higher_module():
    lower = ["mim.models", "mim.config", "mim.io", "mim.audio", "mim.diffusion", "mim.checkpoint", "mim.runinfo"]
    loaded = _loaded(*lower)["modules"]
    higher = [m for m in loaded if m != "mim" and (layer_of(m) is None or layer_of(m) > 1)]
    assert not higher, f"importing {lower} loads {higher}"


def test_inference_loads_no_training():
    loaded = _loaded(*INFERENCE)["modules"]
    training = [m for m in loaded if _within(m, "mim.train")]
    assert not training, f"importing {INFERENCE} loads {training}"


def test_importing_kernels_changes_no_environment():
    probe = _loaded("kernels")
    assert not [m for m in probe["modules"] if not _within(m, "kernels")], probe["modules"]
    assert probe["environ_changed"] == [], f"importing kernels changes os.environ: {probe['environ_changed']}"
