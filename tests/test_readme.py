"""The README's Python examples run as written (in order, sharing one namespace)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert tuple(namespace["delta"].shape) == (4, 24, 10, 768)
    assert tuple(namespace["y"].shape) == (2, 400, 256)
