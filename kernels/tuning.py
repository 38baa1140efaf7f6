"""Tuned launch configs: the winners ``python -m tools.tune`` measured on one GPU architecture,
read by the launchers in place of their heuristics.

The winners of architecture ``sm_90`` live in ``kernels/tuned/sm_90.json`` (shipped in the wheel;
the folder is ``$MIM_TUNED_DIR`` when that is set)::

    {"format": 1, "arch": "sm_90", "device": "NVIDIA H100 80GB HBM3", "triton": "3.5.0",
     "torch": "2.9.0", "created": "2026-12-06T11:00:00+00:00",
     "winners": {"<op>/<kernel name>": {"<shape key>": {"config": "<LaunchConfig.label()>",
                                                       "time_ms": 0.012,
                                                       "timings": {"<label>": 0.012, ...}}}}}

A launcher asks ``tuned_config(op, kernel_name, key, candidates, device)`` with the registered
configs that can serve its call (``candidates``) and the call's shape key (``shape_key``: the
quantities its heuristic depends on, e.g. N_PAD, the dtypes and the programs' basis for the scan);
the answer is the candidate whose label is that key's winner, or None, and then the launcher uses
its heuristic. Lookups are by the exact key: a shape the tuner did not time gets the heuristic.

- No file for the device's architecture, or a device that is not CUDA (the interpreter): None,
  silently.
- A file that is not JSON, has another ``format``, breaks the schema, or names another
  architecture than its file name: ignored with one warning naming the file and the fault.
- A winner whose label is not among the candidates (a file from an older config set): ignored
  with one warning per key.

``forcing(op, kernel_name, config)`` makes every lookup of that kernel answer ``config`` (the
tuner times each candidate through the real launch path this way), and ``recording()`` collects
the (op, kernel, key, candidates) of every lookup (how the tuner learns what a call can choose).
``assume_arch(arch)`` makes lookups answer as on that architecture on any device (tests, and
reading a file on a machine without its GPU).
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import torch

from ._registry import LaunchConfig, arch_label, device_arch

FORMAT = 1
TUNED_DIR_ENV = "MIM_TUNED_DIR"
PACKAGE_TUNED_DIR = Path(__file__).resolve().parent / "tuned"
_DTYPE_LABELS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
                 torch.float64: "fp64"}


@dataclass(frozen=True)
class TunableCall:
    """One lookup a launcher made: the kernel, the call's shape key and what it could run."""
    op: str
    kernel: str
    key: str
    candidates: Tuple[LaunchConfig, ...]


_cache: Dict[int, Mapping[str, Mapping[str, Mapping[str, Any]]]] = {}
_stale_warned: set = set()
_forced: Dict[Tuple[str, str], LaunchConfig] = {}
_recordings: List[List[TunableCall]] = []
_assumed_arch: List[int] = []


def tuned_dir() -> Path:
    """The folder of the winners files: ``$MIM_TUNED_DIR``, else ``kernels/tuned``."""
    return Path(os.environ[TUNED_DIR_ENV]) if os.environ.get(TUNED_DIR_ENV) else PACKAGE_TUNED_DIR


def winners_path(arch: int, directory: Optional[Path] = None) -> Path:
    """Where the winners of ``arch`` (80, 90, 100, 120) live: ``<dir>/sm_90.json``."""
    return Path(directory if directory is not None else tuned_dir()) / f"{arch_label(arch)}.json"


def dtype_label(dtype: torch.dtype) -> str:
    """``fp32``, ``fp16``, ``bf16``: a dtype in shape keys."""
    return _DTYPE_LABELS.get(dtype, str(dtype).removeprefix("torch."))


def pow2_bucket(n: int) -> int:
    """n rounded up to a power of two (1 for n ≤ 1): sizes in shape keys, so nearby shapes share
    a winner."""
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def shape_key(**parts: Any) -> str:
    """A shape key from named quantities, in the order given: ``N_PAD=16,dtype=bf16,rows=8``
    (bools as 0/1)."""
    return ",".join(f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in parts.items())


def current_arch(device) -> Optional[int]:
    """The architecture lookups for ``device`` use: the assumed one inside ``assume_arch``, else
    the device's (None off CUDA)."""
    if _assumed_arch:
        return _assumed_arch[-1]
    return device_arch(device)


@contextlib.contextmanager
def assume_arch(arch: int) -> Iterator[None]:
    """Lookups inside answer as on architecture ``arch`` whatever the device."""
    _assumed_arch.append(int(arch))
    try:
        yield
    finally:
        _assumed_arch.pop()


@contextlib.contextmanager
def forcing(op: str, kernel_name: str, config: LaunchConfig) -> Iterator[None]:
    """Every launch of ``op``'s kernel ``kernel_name`` inside runs ``config`` (which must be one
    of the call's candidates: a ValueError otherwise)."""
    key = (op, kernel_name)
    previous = _forced.get(key)
    _forced[key] = config
    try:
        yield
    finally:
        if previous is None:
            del _forced[key]
        else:
            _forced[key] = previous


@contextlib.contextmanager
def recording() -> Iterator[List[TunableCall]]:
    """Collects every lookup made inside, in order (repeats included)."""
    calls: List[TunableCall] = []
    _recordings.append(calls)
    try:
        yield calls
    finally:
        _recordings.remove(calls)


def reload() -> None:
    """Forget the files read so far (and the warnings given): the next lookup reads them again."""
    _cache.clear()
    _stale_warned.clear()


def check_document(document: Any, arch: int) -> Optional[str]:
    """What is wrong with a winners document meant for ``arch``, or None when it is well-formed."""
    if not isinstance(document, dict):
        return f"the top level is a {type(document).__name__}, not an object"
    if document.get("format") != FORMAT:
        return f"format is {document.get('format')!r}, this engine reads format {FORMAT}"
    if document.get("arch") != arch_label(arch):
        return (f"it holds winners of {document.get('arch')!r}, not of {arch_label(arch)!r} "
                "(a file of another architecture)")
    winners = document.get("winners")
    if not isinstance(winners, dict):
        return "'winners' is not an object"
    for kernel, keys in winners.items():
        if not isinstance(keys, dict) or kernel.count("/") != 1:
            return f"winners entry {kernel!r} is not '<op>/<kernel>' mapping shape keys"
        for key, entry in keys.items():
            if not isinstance(entry, dict) or not isinstance(entry.get("config"), str):
                return f"winners[{kernel!r}][{key!r}] has no 'config' label"
    return None


def winners(arch: int) -> Mapping[str, Mapping[str, Mapping[str, Any]]]:
    """The winners of ``arch`` by "<op>/<kernel>" and shape key, read once (empty when there is
    no file or it is ignored)."""
    if arch in _cache:
        return _cache[arch]
    path = winners_path(arch)
    table: Mapping[str, Mapping[str, Mapping[str, Any]]] = {}
    if path.is_file():
        try:
            document = json.loads(path.read_text())
            problem = check_document(document, arch)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            problem = f"it is not readable JSON ({error})"
        if problem is None:
            table = document["winners"]
        else:
            warnings.warn(f"ignoring tuned launch configs {path}: {problem}; the launchers use "
                          "their heuristics", RuntimeWarning, stacklevel=3)
    _cache[arch] = table
    return table


def tuned_config(op: str, kernel_name: str, key: str, candidates: Sequence[LaunchConfig],
                 device) -> Optional[LaunchConfig]:
    """The candidate to launch ``op``'s kernel ``kernel_name`` with for a call of shape key
    ``key`` on ``device``: the forced one (``forcing``), else the tuned winner of the device's
    architecture, else None (the launcher's heuristic decides)."""
    candidates = tuple(candidates)
    for calls in _recordings:
        calls.append(TunableCall(op, kernel_name, key, candidates))
    forced = _forced.get((op, kernel_name))
    if forced is not None:
        if forced not in candidates:
            raise ValueError(f"forced config {forced.label()} of {op}/{kernel_name} cannot serve "
                             f"the call {key}; its candidates are "
                             f"{[c.label() for c in candidates]}")
        return forced
    arch = current_arch(device)
    if arch is None:
        return None
    entry = winners(arch).get(f"{op}/{kernel_name}", {}).get(key)
    if entry is None:
        return None
    for config in candidates:
        if config.label() == entry["config"]:
            return config
    stale = (arch, op, kernel_name, key)
    if stale not in _stale_warned:
        _stale_warned.add(stale)
        warnings.warn(f"ignoring the tuned winner {entry['config']} of {op}/{kernel_name} at "
                      f"{key} in {winners_path(arch)}: it is not among the registered configs "
                      f"{[c.label() for c in candidates]} (a stale file; rerun python -m "
                      "tools.tune)", RuntimeWarning, stacklevel=2)
    return None
