"""The op-folder contract: every folder in ``kernels.OPS`` holds the same files, one autograd
Function in op.py, a fast path that names what it runs, one input builder whose result runs
through the op, an AOT spec (or None with its reason), a cost model with traffic cases, and every
Triton launch passes its floating-point fusion explicitly."""
import ast
import importlib
import inspect
from pathlib import Path

import pytest
import torch

import kernels
from kernels.aot_spec import AotOp
from kernels.cost import TrafficCase

TENSORS_ON_CPU = True  # the folders' contract and the fast backend; no Triton kernel runs here
KERNELS_DIR = Path(kernels.__file__).resolve().parent
CONTRACT_FILES = {"__init__.py", "README.md", "reference.py", "fast_path.py", "triton_kernels.py",
                  "op.py", "module.py", "cost.py", "aot.py", "inputs.py"}
# The one op without an autograd Function: a streaming inference step whose fast and reference
# paths autograd differentiates through their torch ops (see its README, "Saved for backward").
WITHOUT_FUNCTION = {"selective_state_update"}


def _tree(op: str, name: str) -> ast.Module:
    return ast.parse((KERNELS_DIR / op / name).read_text())


def test_ops_are_the_op_folders():
    folders = {p.name for p in KERNELS_DIR.iterdir() if (p / "op.py").is_file()}
    assert folders == set(kernels.OPS) and len(kernels.OPS) == 6


@pytest.mark.parametrize("op", kernels.OPS)
def test_folder_holds_exactly_the_contract_files(op):
    files = {p.name for p in (KERNELS_DIR / op).iterdir() if p.name != "__pycache__"}
    assert files == CONTRACT_FILES, (f"missing {sorted(CONTRACT_FILES - files)}, "
                                     f"extra {sorted(files - CONTRACT_FILES)}")
    assert len((KERNELS_DIR / op / "__init__.py").read_text().splitlines()) <= 20


def _function_classes(tree: ast.Module) -> list:
    def is_function_base(base):
        text = ast.unparse(base)
        return text in ("torch.autograd.Function", "autograd.Function", "Function")
    return [node.name for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(map(is_function_base, node.bases))]


@pytest.mark.parametrize("op", kernels.OPS)
def test_op_py_holds_the_one_autograd_function(op):
    expected = 0 if op in WITHOUT_FUNCTION else 1
    assert len(_function_classes(_tree(op, "op.py"))) == expected
    for other in sorted(CONTRACT_FILES - {"op.py", "README.md"}):
        assert _function_classes(_tree(op, other)) == [], f"{op}/{other} defines a Function"


@pytest.mark.parametrize("op", kernels.OPS)
def test_fast_path_names_what_it_runs(op):
    fast_path = importlib.import_module(f"kernels.{op}.fast_path")
    assert fast_path.FAST_PATH in ("torch", "numba")
    assert fast_path.FAST_PATH in fast_path.__doc__.lower()  # "PyTorch ops", "numba loops"


@pytest.mark.parametrize("op", kernels.OPS)
def test_make_inputs_runs_through_the_op_on_the_fast_backend(op):
    make_inputs = importlib.import_module(f"kernels.{op}.inputs").make_inputs
    parameters = inspect.signature(make_inputs).parameters
    for keyword in ("dtype", "device", "requires_grad", "seed"):
        assert parameters[keyword].kind is inspect.Parameter.KEYWORD_ONLY, keyword
    first, again = make_inputs(seed=3), make_inputs(seed=3)
    assert isinstance(first, tuple)
    for a, b in zip(first, again):
        assert (a is None) == (b is None)
        if a is not None:
            assert torch.equal(a, b)
    public = getattr(importlib.import_module(f"kernels.{op}.op"), op)
    out = public(*make_inputs(seed=3), backend="fast")
    out = out[0] if isinstance(out, tuple) else out
    assert isinstance(out, torch.Tensor) and torch.isfinite(out).all()
    leaves = make_inputs(seed=4, requires_grad=True)
    assert all(t.requires_grad for t in leaves if t is not None and t.is_floating_point())


@pytest.mark.parametrize("op", kernels.OPS)
def test_aot_spec_is_an_aot_op_or_none_with_its_reason(op):
    aot = importlib.import_module(f"kernels.{op}.aot")
    assert aot.AOT_OP is None or isinstance(aot.AOT_OP, AotOp)
    if aot.AOT_OP is None:
        assert aot.__doc__ and len(aot.__doc__.split()) >= 8
    else:
        assert aot.AOT_OP.op == op


@pytest.mark.parametrize("op", kernels.OPS)
def test_cost_model_has_traffic_cases(op):
    cost = importlib.import_module(f"kernels.{op}.cost")
    for name in ("fused_traffic", "minimum_traffic", "traffic_cases"):
        assert callable(getattr(cost, name, None)), name
    assert all(isinstance(case, TrafficCase) for case in cost.traffic_cases())


@pytest.mark.parametrize("op", kernels.OPS)
def test_every_triton_launch_passes_fp_fusion(op):
    """``kernel[grid](...)`` calls: each passes enable_fp_fusion=True (importing kernels sets no
    environment variable, so Triton's own default would otherwise apply)."""
    launches = [node for node in ast.walk(_tree(op, "triton_kernels.py"))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Subscript)]
    assert launches, f"{op}: no kernel launch found"
    for call in launches:
        fusion = [k for k in call.keywords if k.arg == "enable_fp_fusion"]
        assert len(fusion) == 1 and ast.literal_eval(fusion[0].value) is True, \
            f"{op}/triton_kernels.py line {call.lineno}: launch without enable_fp_fusion=True"
