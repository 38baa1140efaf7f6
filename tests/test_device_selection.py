"""Where the suite runs the kernels: Triton's interpreter only without CUDA (or with
MIM_TEST_INTERPRET=1), the compiled kernels on CUDA; and the ``gpu`` marker: deselected by
default, skipped with the reason "no CUDA device" when asked for without one."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from kernels import registered_kernels
from kernels._dispatch import triton_interpreting
from kernels.testing import device_under_test, use_interpreter

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("environ,cuda,interpreter", [
    ({}, False, True),
    ({}, True, False),
    ({"MIM_TEST_INTERPRET": "1"}, True, True),
    ({"MIM_TEST_INTERPRET": "1"}, False, True),
    ({"MIM_TEST_INTERPRET": "0"}, True, False),
    ({"MIM_TEST_INTERPRET": "0"}, False, True),
    ({"MIM_TEST_INTERPRET": ""}, True, False),
    ({"MIM_TEST_INTERPRET": " True "}, True, True),
], ids=["no-cuda", "cuda", "cuda-forced", "no-cuda-forced", "cuda-0", "no-cuda-0", "cuda-empty",
        "cuda-true"])
def test_decision_table(environ, cuda, interpreter):
    assert use_interpreter(environ, cuda) is interpreter
    assert device_under_test(environ, cuda) == ("cpu" if interpreter else "cuda")


def test_unknown_force_value_is_a_clear_error():
    with pytest.raises(ValueError, match="MIM_TEST_INTERPRET must be 1 .* or 0, got 'maybe'"):
        use_interpreter({"MIM_TEST_INTERPRET": "maybe"}, True)


def _environment(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_INTERPRET", "MIM_TEST_INTERPRET", "PYTEST_ADDOPTS")}
    env["TRITON_INTERPRET"] = "1"  # inherited from a shell: the suite's decision overrides it
    env.update(extra)
    return env


# Loads tests/conftest.py as pytest would, with torch.cuda.is_available() answering ``{cuda}``,
# then imports the kernels and reports what the suite would run on.
PROBE = textwrap.dedent("""
    import importlib.util, os, sys
    import torch
    torch.cuda.is_available = lambda: {cuda}
    spec = importlib.util.spec_from_file_location("suite_conftest", {conftest!r})
    conftest = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conftest)
    import kernels
    kernel = kernels.registered_kernels()[0].kernel
    print(os.environ.get("TRITON_INTERPRET"), conftest.DEVICE, type(kernel).__name__)
""")


def _probe(cuda, **env):
    code = PROBE.format(cuda=cuda, conftest=str(ROOT / "tests" / "conftest.py"))
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_environment(**env),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_with_cuda_the_suite_runs_the_compiled_kernels():
    """CUDA faked available: TRITON_INTERPRET is removed before triton is imported (so the
    kernels are JIT functions that compile, not interpreted ones) and tensors go to CUDA."""
    assert _probe(True) == ["None", "cuda", "JITFunction"]


def test_forced_interpreter_runs_the_interpreter_even_with_cuda():
    assert _probe(True, MIM_TEST_INTERPRET="1") == ["1", "cpu", "InterpretedFunction"]


def test_this_run_follows_the_decision():
    """The running suite: interpreted kernels exactly when the decision says so (the CPU here)."""
    interpreter = use_interpreter(os.environ, torch.cuda.is_available())
    assert triton_interpreting() is interpreter
    kernel = registered_kernels()[0].kernel
    assert type(kernel).__name__ == ("InterpretedFunction" if interpreter else "JITFunction")


GPU_TEST = textwrap.dedent("""
    import pytest

    pytestmark = pytest.mark.gpu


    def test_needs_a_gpu():
        assert False, "a gpu test ran without a CUDA device"
""")

# The suite's collection hook, loaded from tests/conftest.py by its path.
HOOK_CONFTEST = textwrap.dedent("""
    import importlib.util

    spec = importlib.util.spec_from_file_location("suite_conftest", {conftest!r})
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    pytest_collection_modifyitems = suite.pytest_collection_modifyitems
""")


def _run_gpu_test(tmp_path, *args):
    """pytest on one gpu-marked test with the project's settings (pyproject.toml) and the
    suite's hook, without a CUDA device (CUDA_VISIBLE_DEVICES empty)."""
    (tmp_path / "test_tiny_gpu.py").write_text(GPU_TEST)
    (tmp_path / "conftest.py").write_text(HOOK_CONFTEST.format(conftest=str(ROOT / "tests" / "conftest.py")))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(tmp_path),
         "-p", "no:cacheprovider", "-rs", str(tmp_path / "test_tiny_gpu.py"), *args],
        cwd=tmp_path, env=_environment(CUDA_VISIBLE_DEVICES=""), capture_output=True, text=True,
        timeout=120)
    return result.returncode, result.stdout + result.stderr


def test_gpu_tests_are_deselected_by_default(tmp_path):
    code, output = _run_gpu_test(tmp_path)
    assert code == pytest.ExitCode.NO_TESTS_COLLECTED, output
    assert "1 deselected" in output and "passed" not in output, output


def test_gpu_tests_asked_for_without_cuda_are_skipped_as_no_cuda_device(tmp_path):
    code, output = _run_gpu_test(tmp_path, "-m", "gpu")
    assert code == pytest.ExitCode.OK, output
    assert "1 skipped" in output and "SKIPPED" in output and "no CUDA device" in output, output
    assert "passed" not in output and "failed" not in output, output
