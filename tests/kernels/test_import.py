"""Importing ``kernels``: no change to the process environment, and a clear warning when the
Hugging Face kernel hub's package (also imported as ``kernels``) is installed beside it."""
import json
import os
import subprocess
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter from the repository root, with the environment this
    test process has minus the variables the suite's conftest sets for Triton (so an import that
    set one again would show)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("TRITON_DEFAULT_FP_FUSION", "TRITON_INTERPRET")}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_import_changes_no_environment_variable():
    result = _run("import json, os\n"
                  "before = dict(os.environ)\n"
                  "import kernels\n"
                  "after = dict(os.environ)\n"
                  "print(json.dumps({'added': sorted(set(after) - set(before)),\n"
                  "                  'removed': sorted(set(before) - set(after)),\n"
                  "                  'changed': sorted(k for k in before if k in after\n"
                  "                                    and before[k] != after[k])}))\n")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {
        "added": [], "removed": [], "changed": []}


_FAKE_HUB = """
import importlib.metadata as metadata
import warnings

class FakeHub:
    version = "0.4.0"

real = metadata.distribution

def distribution(name):
    return FakeHub() if name == "kernels" else real(name)

metadata.distribution = distribution
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import kernels
print("WARNINGS:" + " || ".join(str(w.message) for w in caught if w.category is UserWarning))
"""


def test_the_kernel_hub_distribution_is_reported_on_import():
    result = _run(_FAKE_HUB)
    assert result.returncode == 0, result.stderr
    text = result.stdout.strip().splitlines()[-1]
    for words in ("'kernels' 0.4.0", "Hugging Face kernel hub", "mim-engine",
                  "overwrites the other's files", "separate virtual environment"):
        assert words in text, words


def test_no_warning_without_the_kernel_hub():
    result = _run(_FAKE_HUB.replace('name == "kernels"', "False"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "WARNINGS:"
