"""``mim profile``'s run as text (:func:`format_report`) and as the JSON file (:func:`report_json`)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from mim.runinfo import run_metadata

__all__ = ["format_report", "report_json", "counting_note", "plan_note"]


def plan_note(engine_plan: dict) -> str:
    """What the engine column models (its ``precision`` and ``cuda_graphs``), for the report."""
    precision = ("bf16 autocast (bytes as counted under it; bf16 FLOPs at the bf16 peak, any left "
                 "in fp32 at the fp32 peak)" if engine_plan["precision"] == "bf16" else "fp32")
    launches = ("CUDA graphs: one launch per DDIM window and per render window replayed "
                "(filed under diffusion sampling and DIT), one per kernel elsewhere"
                if engine_plan["cuda_graphs"] else "eager: one launch per kernel")
    return (f"engine plan: {precision}; {launches}; reference: fp32 eager. Measured times are "
            f"this device's eager runs; graphs are modeled, not captured")


def counting_note(device: torch.device, engine: str) -> str:
    """How a run's bytes and launches were counted, for the report."""
    if engine == "triton":
        return ("bytes and launches: ATen ops counted by kernels.cost.TrafficCounter; the fused "
                "Triton kernels (and the causal_conv1d package), which it cannot see, added from "
                "their ops' cost models (kernels.<op>.cost)")
    return (f"bytes and launches: the ATen ops that ran on {device.type} (engine backend "
            f"'{engine}'), counted by kernels.cost.TrafficCounter as GPU kernels would move them; "
            f"the numba selective scan of the CPU path, which it cannot see, added analytically. "
            f"The Triton kernels did not run: the engine's figures are its {engine} path's")


def report_json(runs: Sequence[dict], metadata: Optional[dict] = None) -> dict:
    """The file ``--json`` and ``bench/latency.py`` write: {"metadata": ..., "runs": [...]}."""
    return {"metadata": metadata or run_metadata(), "runs": list(runs)}


def _ms(seconds: Optional[float]) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f}"


def _gflop(n: int) -> str:
    return f"{n / 1e9:.4g}"


def _gflops(engine: int, reference: int) -> str:
    """One figure when both columns agree to 4 digits, else "engine/reference"."""
    e, r = _gflop(engine), _gflop(reference)
    return e if e == r else f"{e}/{r}"


def _ratio(engine: Optional[float], reference: Optional[float]) -> str:
    return "-" if engine is None or not reference else f"{engine / reference:.3f}"


def _launches(engine: dict, reference: dict) -> str:
    """"engine/reference" launches as modeled; "(n counted)" after the engine's when graph
    replays replace kernels."""
    shown = engine["modeled_launches"]
    counted = "" if shown == engine["launches"] else f" ({engine['launches']} counted)"
    return f"{shown}{counted}/{reference['launches']}"


def format_report(run: dict) -> str:
    """The run as text: one table per scenario, a total line and the per-second figures."""
    engine = run["backends"]["engine"]
    lines = [
        f"mim profile: config {run['config']}, {run['frames']} frames = {run['seconds']:g} s of "
        f"{run['fps']} fps video at {run['image_size']}x{run['image_size']}, {run['device']} "
        f"{run['dtype']}, {run['torch_threads']} threads; {run['weights']}",
        f"measured: wall time on {run['device']}, median of {run['repeats']} runs after "
        f"{run['warmup']} warm-up; engine = backend '{engine}', ref = backend 'reference'; "
        f"diffusion: {run['sample_steps']} DDIM steps, guidance {run['guidance_scale']:g}",
        f"H100 figures are {run['model']['note']}",
        run["plan_note"],
        run["counting_note"],
        f"NVTX ranges: {run['nvtx']}",
    ]
    headers = ("stage", "engine ms", "ref ms", "GFLOP", "engine MB", "ref MB", "launches e/r",
               "H100 e ms (modeled)", "H100 ref ms (modeled)", "e/ref (modeled)")
    for scenario, result in run["scenarios"].items():
        rows = []
        for s in result["stages"]:
            e, r = s["engine"], s["reference"]
            flops = _gflops(e["flops"], r["flops"])
            rows.append((s["stage"], _ms(e["measured_s"]), _ms(r["measured_s"]), flops,
                         _mb(e["bytes"]), _mb(r["bytes"]), _launches(e, r),
                         _ms(e["modeled_h100_s"]), _ms(r["modeled_h100_s"]),
                         _ratio(e["modeled_h100_s"], r["modeled_h100_s"])))
        te, tr = result["total"]["engine"], result["total"]["reference"]
        rows.append(("total", _ms(te["measured_s"]), _ms(tr["measured_s"]),
                     _gflops(te["flops"], tr["flops"]),
                     _mb(te["bytes"]), _mb(tr["bytes"]), _launches(te, tr),
                     _ms(te["modeled_h100_s"]), _ms(tr["modeled_h100_s"]),
                     _ratio(te["modeled_h100_s"], tr["modeled_h100_s"])))
        widths = [max(len(str(row[i])) for row in [headers, *rows]) for i in range(len(headers))]

        def line(values):
            return "  ".join(str(v).ljust(w) if i == 0 else str(v).rjust(w)
                             for i, (v, w) in enumerate(zip(values, widths)))

        paper = result["paper_table3_s_per_video_second"]
        lines += ["", f"{scenario}:", line(headers), line(["-" * w for w in widths]),
                  *(line(row) for row in rows[:-1]), line(["-" * w for w in widths]), line(rows[-1]),
                  f"modeled H100, engine / reference: "
                  f"{result['total']['modeled_h100_engine_over_reference']:.3f}",
                  f"per second of video: measured {te['measured_per_video_second_s']:.3f} s (engine), "
                  f"{tr['measured_per_video_second_s']:.3f} s (ref) on {run['device']}; modeled H100 "
                  f"{te['modeled_h100_per_video_second_s']:.4f} s (engine), "
                  f"{tr['modeled_h100_per_video_second_s']:.4f} s (ref), video writing excluded; "
                  f"paper Table III: {paper:.3f} s on their GPU"
                  + ("" if math.isclose(run["seconds"], 1.0) else
                     f" (a {run['seconds']:g} s clip: its fixed costs, such as source encoding, "
                     f"are divided by {run['seconds']:g} s as well; use 1 s to compare)")]
    return "\n".join(lines)
