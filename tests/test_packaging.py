"""The wheel ships only the ``kernels`` and ``mim`` packages (every module of both) and the ``mim``
console script; ``bench/`` and ``tools/`` stay scripts run from the checkout."""

import configparser
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# what the copy leaves out: the environment, git, build output, the example media (not packaged)
_SKIP = {".venv", ".git", "build", "dist", ".eggs", "examples", ".pytest_cache", ".benchmarks", "runs"}


def _ignore(directory, names):
    return [name for name in names
            if name in _SKIP or name == "__pycache__" or name.endswith((".egg-info", ".pyc"))]


def test_wheel_holds_only_kernels_and_mim(tmp_path):
    # built from a copy, so no stale build/ of the checkout leaks into the wheel and the
    # checkout gets no build/ or egg-info; bench/ and tools/ are copied too, so a find_packages
    # that picked them up would show here
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=_ignore)
    out = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "--no-index", "-q", "-w", str(out)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, f"pip wheel failed:\n{build.stdout}\n{build.stderr}"
    wheels = list(out.glob("mim_engine-*.whl"))
    assert len(wheels) == 1, f"expected one mim_engine wheel in {out}, got {sorted(p.name for p in out.iterdir())}"
    with zipfile.ZipFile(wheels[0]) as wheel:
        names = wheel.namelist()
        dist_info = [name for name in names if name.split("/")[0].endswith(".dist-info")]
        top_level = {name.split("/")[0] for name in names} - {name.split("/")[0] for name in dist_info}
        assert top_level == {"kernels", "mim"}, f"the wheel's top-level entries are {sorted(top_level)}"
        # every module of both packages is shipped (a folder without __init__.py would be missed)
        shipped = {name for name in names if name.endswith(".py") and name not in dist_info}
        present = {path.relative_to(source).as_posix()
                   for package in ("kernels", "mim") for path in (source / package).rglob("*.py")}
        assert shipped == present, (f"modules missing from the wheel: {sorted(present - shipped)}; "
                                    f"unexpected: {sorted(shipped - present)}")
        entry_points = next(name for name in dist_info if name.endswith("/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(wheel.read(entry_points).decode())
    assert parser.has_section("console_scripts"), "the wheel declares no console script"
    assert dict(parser["console_scripts"]) == {"mim": "mim.cli:main"}
