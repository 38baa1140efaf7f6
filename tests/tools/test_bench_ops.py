"""``python -m bench.ops``, run as a subprocess (tests never import bench) with ``--smoke``: every op
and every column in ops.csv and ops.json, the two files agreeing, ops.png a PNG, the derived
columns (GB/s, % of copy bandwidth, speedup) consistent with the times and counted bytes, the
providers not run carrying a reason; one op's script run alone with all four providers,
torch.compile included; a bad ``--ops`` name or a missing CUDA device refused by name."""
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OPS = ("grid_sample_3d", "region_softmax_warp", "deviation_adanorm", "selective_scan",
       "selective_state_update", "causal_conv1d")
COLUMNS = ["op", "shape", "params", "dtype", "provider", "mode", "time_ms", "counted_bytes",
           "gb_per_s", "pct_of_copy_bw", "speedup_vs_reference", "device", "note"]
MODES = ("fwd", "fwd+bwd")
NUMERIC = ("time_ms", "counted_bytes", "gb_per_s", "pct_of_copy_bw", "speedup_vs_reference")


def _run(*args, timeout=300, **env_vars):
    env = {**os.environ, "MPLBACKEND": "Agg", **env_vars}
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _read(out_dir):
    document = json.loads((out_dir / "ops.json").read_text(encoding="utf-8"))
    with open(out_dir / "ops.csv", newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        csv_rows = [dict(zip(header, line)) for line in reader]
    return document, header, csv_rows


def _check_files(out_dir, ops, providers):
    document, header, csv_rows = _read(out_dir)
    assert header == COLUMNS
    assert document["columns"] == COLUMNS
    rows = document["rows"]
    assert all(list(row) == COLUMNS for row in rows)
    assert {row["op"] for row in rows} == set(ops)
    for op in ops:
        for provider in providers:
            for mode in MODES:
                assert any(r["op"] == op and r["provider"] == provider and r["mode"] == mode
                           for r in rows), (op, provider, mode)
    # the CSV and the JSON hold the same rows (the CSV's numbers to 6 significant digits)
    assert len(csv_rows) == len(rows)
    for text_row, row in zip(csv_rows, rows):
        for column in COLUMNS:
            value = row[column]
            if value is None:
                assert text_row[column] == "", (column, row)
            elif column in NUMERIC:
                assert math.isclose(float(text_row[column]), value, rel_tol=1e-5), (column, row)
            else:
                assert text_row[column] == str(value), (column, row)
    # derived columns follow from the time, the counted bytes and the measured copy bandwidth
    copy = document["metadata"]["copy_bandwidth"]
    assert copy["gb_per_s"] > 0
    assert math.isclose(copy["gb_per_s"], 2 * copy["tensor_bytes"] / (copy["time_ms"] * 1e-3) / 1e9,
                        rel_tol=1e-9)
    for row in rows:
        if row["time_ms"] is None:
            assert row["note"], row
            assert row["gb_per_s"] is None and row["speedup_vs_reference"] is None
            continue
        assert row["time_ms"] > 0 and row["counted_bytes"] > 0
        gbps = row["counted_bytes"] / (row["time_ms"] * 1e-3) / 1e9
        assert math.isclose(row["gb_per_s"], gbps, rel_tol=1e-9), row
        assert math.isclose(row["pct_of_copy_bw"], 100 * gbps / copy["gb_per_s"], rel_tol=1e-9)
        reference = next(r for r in rows if r["provider"] == "reference" and
                         all(r[k] == row[k] for k in ("op", "shape", "dtype", "mode")))
        assert math.isclose(row["speedup_vs_reference"], reference["time_ms"] / row["time_ms"],
                            rel_tol=1e-9)
    with open(out_dir / "ops.png", "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")]  # no temporary left
    return document


def test_every_op_every_column(tmp_path):
    providers = ("reference", "fast", "triton")
    result = _run("bench.ops", "--device", "cpu", "--smoke", "--providers", ",".join(providers),
                  "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    for op in OPS:
        assert f"[bench.ops] {op}:" in result.stdout
    document = _check_files(tmp_path, OPS, providers)
    rows = document["rows"]
    metadata = document["metadata"]
    assert metadata["device_type"] == "cpu" and metadata["smoke"] is True
    assert "minimum" in metadata["bytes_basis"]
    assert {"date", "machine", "versions"} <= set(metadata)
    # every provider ran forward on CPU (Triton through the interpreter)
    assert all(r["time_ms"] is not None for r in rows if r["mode"] == "fwd")
    # the state update has no autograd: its fwd+bwd rows say so instead of a time
    step = [r for r in rows if r["op"] == "selective_state_update" and r["mode"] == "fwd+bwd"]
    assert step and all(r["time_ms"] is None and "no autograd" in r["note"] for r in step)
    others = [r for r in rows if r["op"] != "selective_state_update" and r["mode"] == "fwd+bwd"]
    assert all(r["time_ms"] is not None for r in others)


def test_one_op_alone_with_all_four_providers(tmp_path):
    providers = ("reference", "fast", "triton", "compile")
    result = _run("bench.ops.deviation_adanorm", "--device", "cpu", "--smoke", "--out-dir",
                  str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    document = _check_files(tmp_path, ("deviation_adanorm",), providers)
    assert all(r["time_ms"] is not None for r in document["rows"])


def test_bad_op_name_is_refused_by_name(tmp_path):
    result = _run("bench.ops", "--device", "cpu", "--smoke", "--ops", "causal_conv1d,no_such_op",
                  "--out-dir", str(tmp_path), timeout=120)
    assert result.returncode != 0
    assert "no_such_op" in result.stderr
    assert not (tmp_path / "ops.csv").exists()


def test_cuda_without_a_device_is_refused(tmp_path):
    # CUDA hidden from the child, so the refusal is what runs on a GPU machine too
    result = _run("bench.ops", "--device", "cuda", "--smoke", "--out-dir", str(tmp_path),
                  timeout=120, CUDA_VISIBLE_DEVICES="")
    assert result.returncode == 2
    assert "no CUDA device" in result.stderr
