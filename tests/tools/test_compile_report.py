"""The compile report (tools/compile_report.py): its parsers on hand-written tool output, the tool
run end to end on a sample of the variants for the four default targets in a subprocess (Triton's
interpreter off, so kernels really compile), and the committed report: it covers every variant of
the current registry for every default target, with no spill and no local memory, and was
written from the kernels' current source."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import kernels
from kernels import LaunchConfig, RegisteredKernel
from tools.compile_report import (DEFAULT_TARGETS, count_sass, parse_ptxas_log,
                                  parse_resource_usage, sample_jobs)

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("sm_80", "sm_90a", "sm_100a", "sm_120a")
COMMITTED = REPO_ROOT / "bench" / "results" / "compile_report.json"
REGENERATE = "run `python -m tools.compile_report` (no TRITON_INTERPRET) and commit bench/results"

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


def _check_record(r):
    where = f"{r['kernel']} {r['dtype']} {r['config']} {r['target']}"
    assert r["ok"], f"{where}: {r['problems']} {r.get('error')}"
    assert r["regs"] > 0 and r["sass"]["total"] > 0, where
    assert (r["spill_stores"], r["spill_loads"]) == (0, 0), where
    assert (r["local"], r["stack"]) == (0, 0), where


def test_default_targets_are_the_four_architectures():
    assert DEFAULT_TARGETS == (80, 90, 100, 120)


def test_sample_compiles_for_the_four_targets(tmp_path):
    """The sample (each kernel's heaviest config on each target, fp32 and another dtype in
    turn, and the tiles a target's own set adds) compiles for sm_80, sm_90a, sm_100a and sm_120a:
    ok, no spill, no local memory; the records are exactly the sample's variants."""
    entries = kernels.registered_kernels()
    done = _run_report("--out-dir", tmp_path, "--sample", "--jobs", "2")
    assert done.returncode == 0, done.stderr[-4000:]

    records = json.loads((tmp_path / "compile_report.json").read_text())
    expected = Counter()
    for job in sample_jobs(range(len(entries)), DEFAULT_TARGETS):
        entry = entries[job.entry_index]
        dtype, _, config = list(entry.variants(job.capability))[job.variant_index]
        target = TARGETS[DEFAULT_TARGETS.index(job.capability)]
        expected[(entry.name, dtype, config.label(), target)] += 1
    assert Counter((r["kernel"], r["dtype"], r["config"], r["target"]) for r in records) == expected
    assert {r["target"] for r in records} == set(TARGETS)
    assert {r["kernel"] for r in records} == {e.name for e in entries}
    for r in records:
        _check_record(r)
    markdown = (tmp_path / "compile_report.md").read_text()
    assert "**Summary:**" in markdown and "sm_120a" in markdown


def test_sample_takes_the_heaviest_config_and_a_targets_own_configs():
    entries = kernels.registered_kernels()
    jobs = sample_jobs(range(len(entries)), DEFAULT_TARGETS)
    picked = {(entries[j.entry_index].name, j.capability,
               list(entries[j.entry_index].variants(j.capability))[j.variant_index][2].label())
              for j in jobs}
    # every kernel on every target
    assert {(name, cap) for name, cap, _ in picked} == {
        (e.name, cap) for e in entries for cap in DEFAULT_TARGETS}
    scan = next(e for e in entries if e.name == "_selective_scan_bwd_kernel")
    # the heaviest default tile, and on sm_120a the wide backward's own (BLOCK_D 16, 8 warps)
    heaviest = "BLOCK_D=32,N_PAD=64,T_CHUNK=32,warps=16,stages=1"
    assert ("_selective_scan_bwd_kernel", 80, heaviest) in picked
    own = {c.label() for c in scan.configs_for(120) if c.constexprs["BLOCK_D"] == 16}
    assert own and own <= {label for name, cap, label in picked
                           if name == scan.name and cap == 120}
    every = sum(1 for e in entries for cap in DEFAULT_TARGETS for _ in e.variants(cap))
    assert len(jobs) < every / 15
    # both kinds of dtype for every kernel
    kinds = {}
    for j in jobs:
        kinds.setdefault(entries[j.entry_index].name, set()).add(
            list(entries[j.entry_index].variants(j.capability))[j.variant_index][0])
    assert all(len(labels) == 2 for labels in kinds.values()), kinds


def test_committed_report_covers_the_registry_and_is_fresh():
    """bench/results/compile_report.json holds every variant of the current registry for the four
    default targets (each target's own configs), every one ok with no spill and no local memory,
    compiled from the kernels' current source (``RegisteredKernel.source_hash``)."""
    records = json.loads(COMMITTED.read_text())
    entries = kernels.registered_kernels()
    expected = Counter((e.name, dtype, config.label(), target) for e in entries
                       for cap, target in zip(DEFAULT_TARGETS, TARGETS)
                       for dtype, _, config in e.variants(cap))
    found = Counter((r["kernel"], r["dtype"], r["config"], r["target"]) for r in records)
    missing, extra = expected - found, found - expected
    assert not missing and not extra, (
        f"the committed compile report does not match the registry ({sum(missing.values())} "
        f"variants missing, e.g. {sorted(missing)[:3]}; {sum(extra.values())} not registered, "
        f"e.g. {sorted(extra)[:3]}): {REGENERATE}")
    hashes = {e.name: e.source_hash() for e in entries}
    stale = sorted({r["kernel"] for r in records if r.get("source_hash") != hashes[r["kernel"]]})
    assert not stale, f"kernels edited since the compile report was written: {stale}; {REGENERATE}"
    for r in records:
        _check_record(r)


def test_arch_configs_replace_the_default_set_on_their_architecture():
    def kernel(x_ptr, BLOCK: int):
        pass

    class Jit:  # enough of a JITFunction for the registry
        __name__ = "_demo_kernel"
        fn = kernel

    wide, narrow = LaunchConfig({"BLOCK": 64}, 4), LaunchConfig({"BLOCK": 16}, 1)
    own = LaunchConfig({"BLOCK": 32}, 2, maxnreg=255)
    entry = RegisteredKernel(op="demo", kernel=Jit(), signature={"x_ptr": "*{dtype}"},
                             configs=(wide, narrow), dtypes=("fp32", "fp16"),
                             dtype_configs={"fp16": (wide,)}, arch_configs={120: (own, narrow)},
                             arch_dtype_configs={120: {"fp16": (own,)}})
    assert [(d, c) for d, _, c in entry.variants()] == [("fp32", wide), ("fp32", narrow),
                                                        ("fp16", wide)]
    assert [(d, c) for d, _, c in entry.variants(90)] == [(d, c) for d, _, c in entry.variants()]
    assert [(d, c) for d, _, c in entry.variants(120)] == [("fp32", own), ("fp32", narrow),
                                                           ("fp16", own)]
    assert entry.configs_for(None) == (wide, narrow) and entry.configs_for(120, "fp16") == (own,)
    assert own.label() == "BLOCK=32,warps=2,stages=1,maxnreg=255"
    assert wide.label() == "BLOCK=64,warps=4,stages=1"


def test_source_hash_is_the_same_compiled_and_interpreted():
    """The suite runs kernels in Triton's interpreter (InterpretedFunction), the report compiles
    them (JITFunction): a kernel's source hash must not depend on which."""
    here = {e.name: e.source_hash() for e in kernels.registered_kernels()}
    # the subprocess in the other mode: compiled if this suite interprets, else interpreted
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if os.environ.get("TRITON_INTERPRET") != "1":
        env["TRITON_INTERPRET"] = "1"
    code = ("import json, kernels; print(json.dumps({e.name: e.source_hash() "
            "for e in kernels.registered_kernels()}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout) == here
    assert len(set(here.values())) == len(here)  # one per kernel
    assert all(len(h) == 64 for h in here.values())


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
