"""tools.gpu_check (``make gpu-check``) on a machine without CUDA: the dry run prints the plan and
writes nothing; the report renders every status and figure; the junit counter counts; a part
that overruns its limit is killed, with its whole process group, and the report is still written."""
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

from tools import gpu_check
from tools.gpu_check import PARTS, Part, PartResult

ROOT = Path(__file__).resolve().parents[2]


def _tree(path: Path) -> set:
    return {str(p.relative_to(path)) for p in path.rglob("*")} if path.exists() else set()


def test_dry_run_without_cuda_prints_every_command_and_writes_nothing():
    assert not torch.cuda.is_available(), "this test checks the machine-without-CUDA path"
    results = ROOT / "bench" / "results"
    before = _tree(results)
    run = subprocess.run([sys.executable, "-m", "tools.gpu_check"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    out = run.stdout
    for part in PARTS:
        command = gpu_check.scrub(shlex.join(part.command(gpu_check.default_out_dir(None))))
        assert command in out, f"the plan lacks the command of part {part.key}"
        assert f"[{part.key}]" in out and f"limit {part.limit_s} s" in out
    assert "no CUDA device" in out and "nothing written" in out
    assert _tree(results) == before


def test_dry_run_on_a_cuda_machine_names_the_device_folder_and_writes_nothing(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    assert gpu_check.main(["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "bench/results/gpu/NVIDIA_H100_80GB_HBM3/REPORT.md" in out
    assert "--dry-run: nothing run, nothing written" in out
    assert not (ROOT / "bench" / "results" / "gpu" / "NVIDIA_H100_80GB_HBM3").exists()
    target = tmp_path / "report"
    assert gpu_check.main(["--dry-run", "--out-dir", str(target)]) == 0
    assert str(target / "REPORT.md") in capsys.readouterr().out
    assert not target.exists()


def test_the_limits_and_fixed_costs_fit_in_eight_minutes():
    worst = sum(p.limit_s + gpu_check.GRACE_S for p in PARTS) + gpu_check.STARTUP_S
    assert worst < 8 * 60 and gpu_check.DEFAULT_BUDGET_S <= 8 * 60
    assert len({p.key for p in PARTS}) == len(PARTS)
    for letter in "abcdefg":
        assert any(p.title.startswith(f"({letter})") for p in PARTS), letter


def test_device_dir_name():
    assert gpu_check.device_dir_name("NVIDIA H100 80GB HBM3") == "NVIDIA_H100_80GB_HBM3"
    assert gpu_check.device_dir_name("NVIDIA GeForce RTX 5090 (x/y)") == "NVIDIA_GeForce_RTX_5090_x_y"


JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites name="pytest tests">
  <testsuite name="pytest" errors="1" failures="1" skipped="2" tests="6">
    <testcase classname="tests.kernels.test_a" name="test_ok[fp32]" time="0.1"/>
    <testcase classname="tests.kernels.test_a" name="test_ok[bf16]" time="0.1"/>
    <testcase classname="tests.kernels.test_a" name="test_bad" time="0.2">
      <failure message="assert 1 == 2">trace</failure>
    </testcase>
    <testcase classname="tests.kernels.test_b" name="test_setup" time="0.0">
      <error message="fixture failed">trace</error>
    </testcase>
    <testcase classname="tests.gpu.test_c" name="test_skip" time="0.0">
      <skipped type="pytest.skip" message="no CUDA device">why</skipped>
    </testcase>
    <testcase classname="tests.gpu.test_c" name="test_xfail" time="0.0">
      <skipped type="pytest.xfail" message="known"/>
    </testcase>
    <testcase time="0.000" />
  </testsuite>
</testsuites>
"""


def test_junit_counts(tmp_path):
    """Each named testcase once; the nameless one of a test cut short by SIGINT not at all."""
    path = tmp_path / "junit.xml"
    path.write_text(JUNIT)
    counts = gpu_check.junit_counts(path)
    assert counts == {"passed": 2, "failed": 1, "errors": 1, "skipped": 2,
                      "failing": ["tests.kernels.test_a::test_bad",
                                  "tests.kernels.test_b::test_setup"]}


def _profile_json() -> dict:
    def entry(measured, modeled):
        return {"measured_s": measured, "modeled_h100_s": modeled}
    stages = [{"stage": "LMDD", "engine": entry(0.004, 0.0005), "reference": entry(0.008, 0.001)},
              {"stage": "video writing", "engine": entry(0.02, None), "reference": entry(0.02, None)}]
    total = {"engine": entry(0.024, 0.0005), "reference": entry(0.028, 0.001)}
    run = {"config": "tiny", "frames": 25, "image_size": 64, "device": "cuda:0", "dtype": "float32",
           "backends": {"engine": "triton", "reference": "reference"}, "repeats": 3, "warmup": 1,
           "sample_steps": 20, "scenarios": {"img2img": {"stages": stages, "total": total}}}
    return {"metadata": {}, "runs": [run]}


def test_report_renders_every_status_and_figure(tmp_path):
    (tmp_path / "profile-tiny.json").write_text(json.dumps(_profile_json()))
    (tmp_path / "junit-kernels.xml").write_text(JUNIT)
    (tmp_path / "training_step.json").write_text(json.dumps({
        "config": "base", "batch": 2, "device": "cuda", "variants": {
            "reference": {"step_seconds_median": 0.5, "saved_activations_bytes": 3e9,
                          "peak_memory_bytes": 6 * 2**30},
            "engine": {"step_seconds_median": 0.25, "saved_activations_bytes": 1.5e9,
                       "peak_memory_bytes": 3 * 2**30}}}))
    by_key = {p.key: p for p in PARTS}
    parts = [by_key["tests-kernels"], by_key["profile-tiny"], by_key["training-step"],
             by_key["animate"], by_key["tune"]]
    results = [
        PartResult("tests-kernels", ["pytest", "tests/kernels"], 110, status="timed out",
                   returncode=-9, wall_s=115.2, tail="tests/kernels/test_a.py ....\nKeyboardInterrupt"),
        PartResult("profile-tiny", ["mim", "profile"], 30, status="ok", returncode=0, wall_s=12.0),
        PartResult("training-step", ["bench.training_step"], 45, status="failed", returncode=3,
                   wall_s=4.0, tail="RuntimeError: CUDA out of memory"),
        PartResult("animate", ["mim", "animate"], 30, status="not run: budget"),
        PartResult("tune", ["tools.tune"], 40),
    ]
    for part, result in zip(parts, results):
        if result.wall_s is not None:
            result.figures = part.figures(result, tmp_path)
    text = gpu_check.format_report({"device": "NVIDIA H100 80GB HBM3", "git commit": "abc"},
                                   results, parts)
    assert "- device: NVIDIA H100 80GB HBM3" in text and "- git commit: abc" in text
    assert "| tests-kernels | timed out after 110 s | 115.2 | 110 |" in text
    assert "Status: **failed rc 3**" in text and "RuntimeError: CUDA out of memory" in text
    assert "Status: **ok** (12.0 s)" in text
    assert "Status: **not run: budget**" in text
    assert "Status: **not run yet**" in text
    # the timed-out pytest: its counts (from the junit xml SIGINT let it write) and its tail
    assert "passed 2, failed 1, errors 1, skipped 2 (the tests that finished" in text
    assert "- `tests.kernels.test_a::test_bad`" in text and "KeyboardInterrupt" in text
    # profile: measured beside modeled, the ratio, host stages unmodeled
    assert "| LMDD | 4.00 | 0.50 | 8.0 | 8.00 | 1.00 | 8.0 |" in text
    assert "| video writing | 20.00 | - | - | 20.00 | - | - |" in text
    assert "| **total** | 24.00 | 0.50 | 48.0 | 28.00 | 1.00 | 28.0 |" in text
    # training step: step time, speedup, peak memory; read although the part failed (it wrote it)
    assert "| engine | 250.0 | 2.00x | 3072 | 1500.0 |" in text
    # the tail of an ok part is not shown
    assert text.count("Output tail:") == 2


def _ops_row(provider, mode, time_ms, speedup, shape="base render window", counted=8e6):
    return {"op": "deviation_adanorm", "shape": shape, "params": "B=1 T=17", "dtype": "float32",
            "provider": provider, "mode": mode, "time_ms": time_ms, "counted_bytes": counted,
            "gb_per_s": None if time_ms is None else counted / (time_ms * 1e-3) / 1e9,
            "pct_of_copy_bw": None if time_ms is None else 40.0, "speedup_vs_reference": speedup,
            "device": "NVIDIA H100 80GB HBM3", "note": "" if time_ms else "not run: reason"}


def test_ops_and_tuner_figures(tmp_path):
    rows = [_ops_row("reference", "fwd", 0.04, 1.0), _ops_row("fast", "fwd", 0.02, 2.0),
            _ops_row("triton", "fwd", 0.01, 4.0), _ops_row("compile", "fwd", None, None),
            _ops_row("triton", "fwd", 0.005, 3.0, shape="tiny render window", counted=1e6),
            {**_ops_row("triton", "fwd", None, None), "op": "selective_state_update"}]
    (tmp_path / "ops.json").write_text(json.dumps({
        "metadata": {"copy_bandwidth": {"gb_per_s": 2900.0}, "bytes_basis": "minimum traffic",
                     "timer": "triton.testing.do_bench, median"}, "rows": rows}))
    text = "\n".join(gpu_check.ops_figures(PartResult("bench-ops", [], 55), tmp_path))
    assert "copy bandwidth 2900 GB/s" in text
    # the larger shape first; the fast path's and compile's speedups beside triton's
    assert text.index("base render window") < text.index("tiny render window")
    assert ("| deviation_adanorm | base render window | float32 | fwd | 0.010 | 800 | 40.0 | "
            "4.00 | 2.00 | - |") in text
    assert "| selective_state_update | no triton row timed: not run: reason |" in text

    assert gpu_check.tune_figures(PartResult("tune", [], 40), tmp_path) == [
        "(the tuner wrote no tuned/sm_*.json)"]
    (tmp_path / "tuned").mkdir()
    (tmp_path / "tuned" / "sm_90.json").write_text(json.dumps({
        "format": 1, "arch": "sm_90", "winners": {"selective_scan/_selective_scan_fwd_kernel": {
            "N_PAD=16,fp32,programs=512": {"config": "BLOCK_D=8,warps=4,stages=1", "time_ms": 0.0123,
                                           "timings": {"BLOCK_D=8,warps=4,stages=1": 0.0123,
                                                       "BLOCK_D=16,warps=8,stages=1": 0.02}}}}}))
    text = "\n".join(gpu_check.tune_figures(PartResult("tune", [], 40), tmp_path))
    assert "`tuned/sm_90.json` (1 winners" in text
    assert ("| selective_scan/_selective_scan_fwd_kernel | N_PAD=16,fp32,programs=512 | "
            "BLOCK_D=8,warps=4,stages=1 | 0.0123 | 2 | 0.0200 |") in text


def test_figures_of_a_missing_or_malformed_file_say_so(tmp_path):
    result = PartResult("profile-base", [], 40, status="failed", returncode=1, wall_s=1.0)
    assert gpu_check.profile_figures(result, tmp_path) == ["(no profile-base.json was written)"]
    (tmp_path / "profile-base.json").write_text("{not json")
    (line,) = gpu_check.profile_figures(result, tmp_path)
    assert line.startswith("(could not read profile-base.json: JSONDecodeError")


def test_scrub_hides_the_checkout_and_home_paths():
    home = os.path.expanduser("~")
    text = gpu_check.scrub(f"{gpu_check.ROOT}/tools/x.py and {home}/.cache/y")
    assert str(gpu_check.ROOT) not in text and "./tools/x.py" in text
    if home not in ("", "/"):
        assert home not in text


def _python(code: str) -> list:
    return [sys.executable, "-c", code]


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as handle:
            return not any(line.startswith("State:") and "Z" in line.split()[1] for line in handle)
    except FileNotFoundError:
        return False


def test_a_part_over_its_limit_is_killed_with_its_group_and_the_report_written(
        tmp_path, monkeypatch):
    monkeypatch.setattr(gpu_check, "GRACE_S", 0.5)
    pid_file = tmp_path / "grandchild.pid"
    # the part and the process it starts both ignore SIGINT: only the group's SIGKILL ends them
    stubborn = ("import signal, subprocess, sys, time\n"
                "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
                "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                "signal.signal(signal.SIGINT, signal.SIG_IGN); time.sleep(60)'])\n"
                f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                "print('started', flush=True)\n"
                "time.sleep(60)\n")
    parts = (
        Part("sleeper", "(x) sleeps past its limit", 1, lambda out: _python(stubborn),
             lambda result, out: gpu_check.tests_figures("x")(result, out), ("junit-x.xml",)),
        Part("quick", "(y) prints", 2, lambda out: _python("print('hello from quick')"),
             lambda result, out: [f"figure read from {out.name}"]),
        Part("late", "(z) never starts", 30, lambda out: _python("print('late')"),
             lambda result, out: []),
    )
    # files of an earlier run: removed, never read as this run's
    (tmp_path / "out" / "logs").mkdir(parents=True)
    (tmp_path / "out" / "junit-x.xml").write_text(JUNIT)
    (tmp_path / "out" / "logs" / "late.log").write_text("an earlier run's output")
    began = time.monotonic()
    results = gpu_check.run_check(tmp_path / "out", budget_s=6.0, header={"device": "test"},
                                  parts=parts, log=lambda text: None)
    assert time.monotonic() - began < 10
    sleeper, quick, late = results
    assert sleeper.status == "timed out" and sleeper.returncode == -9
    assert 1.0 <= sleeper.wall_s < 5 and "started" in sleeper.tail
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(grandchild), "the part's own child survived the group kill"
    assert quick.status == "ok" and "hello from quick" in quick.tail
    assert late.status == "not run: budget" and late.wall_s is None
    report = (tmp_path / "out" / "REPORT.md").read_text()
    assert "Status: **timed out after 1 s**" in report and "started" in report
    assert "(no junit-x.xml was written)" in report and "passed 2" not in report
    assert not (tmp_path / "out" / "logs" / "late.log").exists()
    assert "Status: **ok**" in report and "figure read from out" in report
    assert "Status: **not run: budget**" in report
    assert (tmp_path / "out" / "logs" / "quick.log").read_text().strip() == "hello from quick"


def test_a_timed_out_pytest_still_leaves_its_counts(tmp_path, monkeypatch):
    """SIGINT first: pytest stops at the running test and still writes its junit xml, so a test
    part cut at its limit reports the tests that finished."""
    monkeypatch.setattr(gpu_check, "GRACE_S", 5)
    (tmp_path / "test_slow.py").write_text(
        "import time\n\ndef test_passes():\n    pass\n\ndef test_fails():\n    assert 1 == 2\n\n"
        "def test_hangs():\n    time.sleep(60)\n")
    xml = tmp_path / "junit.xml"
    result = PartResult("tests-x", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                    "test_slow.py", f"--junitxml={xml}"], 8)
    gpu_check.run_part(result, tmp_path / "log.txt", cwd=tmp_path)
    assert result.status == "timed out" and "KeyboardInterrupt" in result.tail
    counts = gpu_check.junit_counts(xml)
    assert (counts["passed"], counts["failed"]) == (1, 1)
    assert counts["failing"] == ["test_slow::test_fails"]


NVIDIA_SMI = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 570.86.15              Driver Version: 570.86.15      CUDA Version: 12.8     |
|=========================================+========================+======================|
|   0  NVIDIA H100 80GB HBM3          On  |   00000000:19:00.0 Off |                    0 |
+-----------------------------------------+------------------------+----------------------+

+-----------------------------------------------------------------------------------------+
| Processes:                                                                              |
|  GPU   GI   CI              PID   Type   Process name                        GPU Memory |
|    0   N/A  N/A           12345      C   /home/someone/private_job.py            1024MiB |
+-----------------------------------------------------------------------------------------+
"""


def test_the_report_leaves_out_the_processes_on_the_gpu():
    text = gpu_check.without_processes(NVIDIA_SMI)
    assert "Driver Version: 570.86.15" in text and "NVIDIA H100 80GB HBM3" in text
    assert "private_job" not in text and "12345" not in text and "Processes:" not in text
    assert "(the Processes section is left out)" in text
    assert gpu_check.without_processes("no table") == "no table"


def test_docs_list_every_part_with_its_limit():
    """docs/gpu.md's table of parts says what PARTS does: each key with its limit, the sum."""
    text = (ROOT / "docs" / "gpu.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| \([a-g]\) `([a-z-]+)` \| (\d+) s \|", text, re.M))
    assert listed == {p.key: str(p.limit_s) for p in PARTS}
    assert f"add up to {sum(p.limit_s for p in PARTS)} s" in text


def test_main_on_a_cuda_machine_writes_the_report_with_its_header(tmp_path, monkeypatch, capsys):
    """The whole command with CUDA faked and stand-in parts (the real ones need a GPU): the report
    lands in --out-dir with the device, date, commit and budget, and every part's section."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H100 80GB HBM3")
    monkeypatch.setattr(gpu_check, "PARTS", (
        Part("first", "(x) prints", 20, lambda out: _python("print('one')"),
             lambda result, out: ["figure one"]),
        Part("second", "(y) fails", 20, lambda out: _python("import sys; sys.exit(3)"),
             lambda result, out: []),
    ))
    assert gpu_check.main(["--out-dir", str(tmp_path / "report")]) == 0
    assert "report written to" in capsys.readouterr().out
    report = (tmp_path / "report" / "REPORT.md").read_text()
    assert "- device: NVIDIA H100 80GB HBM3" in report and "- budget: 480 s" in report
    assert re.search(r"^- git commit: [0-9a-f]{40}( \(with uncommitted changes\))?$", report, re.M)
    assert re.search(r"^- date: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00$", report, re.M)
    assert "## (x) prints" in report and "figure one" in report
    assert "| second | failed rc 3 |" in report
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == ["REPORT.md", "logs"]
