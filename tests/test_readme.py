"""The README's Python examples run as written (in order, sharing one namespace)."""
import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace = {}
    cwd = os.getcwd()
    os.chdir(README.parent)   # the examples name files relative to the repository root
    try:
        for block in blocks:
            exec(compile(block, str(README), "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert tuple(namespace["video"].shape) == (100, 3, 64, 64)
    assert 0 <= float(namespace["video"].min()) and float(namespace["video"].max()) <= 1
    assert tuple(namespace["delta"].shape) == (4, 24, 10, 768)
    assert tuple(namespace["y"].shape) == (2, 400, 256)
