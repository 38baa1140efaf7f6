"""safetensors training checkpoints: modules, optimizers, step and RNG state, written atomically.

One file holds everything needed to resume exactly: tensors under ``<module>.<param>``,
``<optimizer>.state.<index>.<name>`` and ``rng.*``; the rest (step, the config, optimizer
hyper-parameters, Python's and NumPy's RNG positions) as JSON in the safetensors metadata. A
checkpoint is written to a temporary file in its directory and renamed into place, so a crash
mid-write leaves the previous checkpoints intact and no partial file under a checkpoint name.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mim.io import atomic_output

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_metadata",
           "latest_checkpoint", "checkpoint_path", "rng_state_tensors", "restore_rng_state",
           "prune_checkpoints"]

FORMAT = "mim-checkpoint-1"
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another kind, or from another config."""


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:07d}.safetensors")


def latest_checkpoint(directory: str) -> Optional[str]:
    """The highest-step ``step_*.safetensors`` in ``directory`` (temporary files are ignored)."""
    if not os.path.isdir(directory):
        return None
    found = [(int(m.group(1)), name) for name in os.listdir(directory)
             if (m := _STEP_FILE.match(name))]
    return os.path.join(directory, max(found)[1]) if found else None


def prune_checkpoints(directory: str, keep: int) -> None:
    """Keep the ``keep`` newest step checkpoints; remove stale temporary files of crashed writes."""
    for stale in glob.glob(os.path.join(directory, ".*.tmp-*")):
        os.remove(stale)
    found = sorted((int(m.group(1)), name) for name in os.listdir(directory)
                   if (m := _STEP_FILE.match(name)))
    for _, name in found[:-keep] if keep > 0 else []:
        os.remove(os.path.join(directory, name))


def rng_state_tensors() -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    meta = {"numpy": [kind, int(pos), int(has_gauss), float(cached)],
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]]}
    return tensors, meta


def restore_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            if f"rng.cuda.{i}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{i}"], i)
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    version, state, gauss = meta["python"]
    random.setstate((version, tuple(state), gauss))


def _optimizer_tensors(prefix: str, optimizer: torch.optim.Optimizer):
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}.state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def save_checkpoint(path: str, *, kind: str, step: int, config: Dict[str, Any],
                    modules: Mapping[str, torch.nn.Module],
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    extra: Optional[Dict[str, Any]] = None, with_rng: bool = True) -> None:
    """Write one checkpoint atomically. ``kind`` names what it holds (e.g. ``stage1``)."""
    tensors: Dict[str, torch.Tensor] = {}
    for name, module in modules.items():
        for key, value in module.state_dict().items():
            tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
    optim_meta = {}
    for name, optimizer in (optimizers or {}).items():
        t, m = _optimizer_tensors(name, optimizer)
        tensors.update(t)
        optim_meta[name] = m
    rng_meta = {}
    if with_rng:
        t, rng_meta = rng_state_tensors()
        tensors.update(t)
    metadata = {"format": FORMAT, "kind": kind, "step": str(step), "config": json.dumps(config),
                "optimizers": json.dumps(optim_meta), "rng": json.dumps(rng_meta),
                "extra": json.dumps(extra or {})}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata=metadata)


def read_metadata(path: str) -> Dict[str, Any]:
    """The checkpoint's kind, step, config and extra fields (no tensors are read)."""
    from safetensors import safe_open

    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with safe_open(path, framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path!r} is not a readable safetensors file: {error}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is a safetensors file but not a mim checkpoint "
                              f"(metadata format {meta.get('format')!r}, expected {FORMAT!r})")
    return {"kind": meta["kind"], "step": int(meta["step"]), "config": json.loads(meta["config"]),
            "extra": json.loads(meta.get("extra", "{}")), "_raw": meta}


def load_checkpoint(path: str, *, kind: str, modules: Mapping[str, torch.nn.Module],
                    optimizers: Optional[Mapping[str, torch.optim.Optimizer]] = None,
                    restore_rng: bool = False, optional: Sequence[str] = ()) -> Dict[str, Any]:
    """Load modules (strict), optimizers and optionally the RNG state; returns the metadata.

    ``optional``: key prefixes (``module.sub.``) that may be missing from the checkpoint; those
    parameters keep their current values (a branch added to a model trained without it).
    Raises CheckpointError for a missing/corrupt file, another kind, or parameters that do not
    fit the given modules (the message lists the first mismatching keys)."""
    meta = read_metadata(path)
    if meta["kind"] != kind:
        raise CheckpointError(f"checkpoint {path!r} holds a {meta['kind']!r} model, expected {kind!r}")
    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {error}") from None
    for name, module in modules.items():
        prefix = name + "."
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        own = module.state_dict()
        missing = sorted(k for k in set(own) - set(state) if not (prefix + k).startswith(tuple(optional)))
        unexpected = sorted(set(state) - set(own))
        wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
        if missing or unexpected or wrong:
            details = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                    ("wrong shape", wrong)) if keys)
            raise CheckpointError(f"checkpoint {path!r} does not fit the {name!r} model of this "
                                  f"config ({details}); was it trained with another config?")
        module.load_state_dict(state, strict=not optional)
    optim_meta = json.loads(meta["_raw"].get("optimizers", "{}"))
    for name, optimizer in (optimizers or {}).items():
        if name not in optim_meta:
            raise CheckpointError(f"checkpoint {path!r} has no optimizer state {name!r}")
        prefix = name + ".state."
        state: Dict[int, Dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(prefix):
                index, field = key[len(prefix):].split(".", 1)
                state.setdefault(int(index), {})[field] = value
        for key, value in optim_meta[name]["scalars"].items():
            index, field = key.split(".", 1)
            state.setdefault(int(index), {})[field] = value
        groups = optim_meta[name]["param_groups"]
        for group, current in zip(groups, optimizer.param_groups):  # JSON turned tuples into lists
            for key, value in current.items():
                if isinstance(value, tuple) and isinstance(group.get(key), list):
                    group[key] = tuple(group[key])
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    if restore_rng:
        restore_rng_state(tensors, json.loads(meta["_raw"]["rng"]))
    return meta
