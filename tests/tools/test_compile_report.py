"""The compile report (tools/compile_report.py): its parsers on hand-written tool output, and the
tool itself run end to end in a subprocess (Triton's interpreter off, so kernels really compile)."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import kernels
from tools.compile_report import count_sass, parse_ptxas_log, parse_resource_usage

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("sm_80", "sm_90a")

SASS = """\
\t.section\t.text.demo_kernel,"ax",@progbits
        .global         demo_kernel
demo_kernel:
.text.demo_kernel:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/              @!P6 LDG.E R10, desc[UR8][R4.64+0x8] ;
        /*0020*/                   LDG.E.64 R2, desc[UR8][R4.64] ;
        /*0030*/               @P0 LDG.E.128.CONSTANT R12, desc[UR8][R6.64] ;
        /*0040*/                   LDG.E.U16 R9, desc[UR8][R6.64+0x2] ;
        /*0050*/                   LDG.E.EF.64 R20, desc[UR8][R6.64+0x100] ;
        /*0060*/                   HFMA2.MMA R16, -RZ, RZ, 0, 0 ;
        /*0070*/                   FFMA R3, R20, R20, R3 ;
        /*0080*/                   FFMA R3, -R21, 0.5, R3 ;
        /*0090*/                   HFMA2 R5, R6, R7, -RZ ;
        /*00a0*/                   MUFU.RSQ R3, R3 ;
        /*00b0*/                   MUFU.EX2 R4, R4 ;
        /*00c0*/                   MUFU.EX2 R5, R5 ;
        /*00d0*/                   STS [R0], R3 ;
        /*00e0*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*00f0*/                   LDS.64 R6, [R0+0x8] ;
        /*0100*/                   LDSM.16.M88.4 R8, [R0] ;
        /*0110*/              @!PT RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR8][R4.64], R3 ;
        /*0120*/                   ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, R7, desc[UR8][R4.64], R3 ;
        /*0130*/                   STG.E.U16 desc[UR8][R4.64], R9 ;
        /*0140*/                   STG.E.128 desc[UR8][R4.64], R12 ;
        /*0150*/              @!P1 STG.E desc[UR8][R4.64], R3 ;
        /*0160*/             @!UP0 LDGSTS.E.BYPASS.128 [R2], desc[UR8][R4.64] ;
        /*0170*/                   EXIT ;
.L_x_0:
        /*0180*/                   BRA `(.L_x_0) ;
        /*0190*/                   NOP;
        /*01a0*/                   NOP;
.L_x_1:
"""


def test_count_sass_counts_each_kind_exactly():
    counts = count_sass(SASS)
    assert counts["total"] == 25  # 27 instructions, NOPs left out
    assert counts["ldg"] == {"32": 1, "64": 2, "128": 1, "16": 1}
    assert counts["stg"] == {"16": 1, "128": 1, "32": 1}
    assert counts["ldgsts"] == {"128": 1}
    assert (counts["lds"], counts["sts"], counts["bar"]) == (2, 1, 1)
    assert counts["atomics"] == {"ATOMG": 1, "RED": 1}
    assert counts["fma"] == {"FFMA": 2, "HFMA2": 1}  # HFMA2.MMA by RZ is a move
    assert counts["mufu"] == {"EX2": 2, "RSQ": 1}
    assert counts["opcodes"]["HFMA2"] == 2 and counts["opcodes"]["NOP"] == 2


def test_parse_resource_usage_and_ptxas_log():
    usage = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function demo_kernel:
  REG:47 STACK:8 SHARED:1024 LOCAL:4 CONSTANT[0]:400 TEXTURE:0 SURFACE:0 SAMPLER:0
"""
    assert parse_resource_usage(usage, "demo_kernel") == {
        "regs": 47, "shared_static": 1024, "local": 4, "stack": 8}
    log = """\
ptxas info    : 11 bytes gmem, 8 bytes cmem[4]
ptxas info    : Compiling entry function 'demo_kernel' for 'sm_80'
ptxas info    : Function properties for demo_kernel
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 47 registers, used 1 barriers, 400 bytes cmem[0]
"""
    assert parse_ptxas_log(log, "demo_kernel") == {
        "spill_stores": 12, "spill_loads": 16, "ptxas_regs": 47}


def _run_report(*args, interpret=False):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    return subprocess.run([sys.executable, "-m", "tools.compile_report", *map(str, args)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True)


def test_report_compiles_every_registered_variant(tmp_path):
    """Every registered kernel, dtype and launch config, for sm_80 and sm_90a (a few minutes cold)."""
    entries = kernels.registered_kernels()
    assert {e.op for e in entries} >= {"deviation_adanorm", "selective_scan", "selective_state_update"}

    done = _run_report("--out-dir", tmp_path)
    assert done.returncode == 0, done.stderr[-4000:]

    records = json.loads((tmp_path / "compile_report.json").read_text())
    expected = Counter((e.name, dtype, config.label(), target) for e in entries
                       for dtype, _, config in e.variants() for target in TARGETS)
    assert Counter((r["kernel"], r["dtype"], r["config"], r["target"]) for r in records) == expected
    for r in records:
        where = f"{r['kernel']} {r['dtype']} {r['config']} {r['target']}"
        assert r["ok"], where
        assert r["regs"] > 0 and r["sass"]["total"] > 0, where
        assert (r["spill_stores"], r["spill_loads"]) == (0, 0), where
        assert (r["local"], r["stack"]) == (0, 0), where

    markdown = (tmp_path / "compile_report.md").read_text()
    for entry in entries:
        assert f"## {entry.op} / `{entry.name}`" in markdown
    assert "**Summary:**" in markdown


def test_report_refuses_the_interpreter(tmp_path):
    done = _run_report("--out-dir", tmp_path, interpret=True)
    assert done.returncode == 2
    assert "TRITON_INTERPRET" in done.stderr
    assert not list(tmp_path.iterdir())


def test_report_rejects_an_unknown_op(tmp_path):
    done = _run_report("--out-dir", tmp_path, "--op", "no_such_op")
    assert done.returncode == 2
    assert "no_such_op" in done.stderr
    assert not list(tmp_path.iterdir())
