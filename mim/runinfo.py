"""When and where a measurement ran: the one ``run_metadata()`` every result file carries
(``mim profile --json``, ``bench/latency.py``, ``bench/memory.py``, ``bench/traffic.py``,
``bench/training_step.py``)."""
from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform

import torch

__all__ = ["run_metadata", "package_version", "cpu_name"]


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or "not installed"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else the platform's processor or machine."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_metadata() -> dict:
    """{"date": UTC ISO date, "machine": {node, processor, platform, cpu_count, gpu (None
    without CUDA)}, "versions": {python, torch, triton, numba, nvtx}}."""
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"node": platform.node(), "processor": cpu_name(),
                    "platform": platform.platform(), "cpu_count": os.cpu_count(), "gpu": gpu},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "triton": package_version("triton"), "numba": package_version("numba"),
                     "nvtx": package_version("nvtx")},
    }
