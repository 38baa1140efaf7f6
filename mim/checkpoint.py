"""safetensors checkpoints: modules, optimizers, step and RNG state, written atomically; read
back by training (resume, fine-tuning) and inference alike (:func:`renderer_from_checkpoint`).

One file holds everything needed to resume exactly: tensors under ``<module>.<param>``,
``<optimizer>.state.<index>.<name>`` and ``rng.*``; the rest (step, the config, optimizer
hyper-parameters, Python's and NumPy's RNG positions) as JSON in the safetensors metadata. A
checkpoint is written to a temporary file in its directory and renamed into place, so a crash
mid-write leaves the previous checkpoints intact and no partial file under a checkpoint name.

Every checkpoint written carries ``format_version`` (:data:`FORMAT_VERSION`) in its metadata;
a file without it is version 1. Reading goes through :func:`migrate_checkpoint_metadata`, which
refuses a newer version and brings an older one to the current form (its config through
:func:`mim.config.migrate_config`), so checkpoints of earlier versions load unchanged on disk.

Versions: 1, the config's recipe knobs flat in their sections (``renderer.decoder_motion_film``,
``loss.alpha_mouth*``, ``train.freeze``) and no ``motion.prediction`` in the oldest (ε models);
2, the ``recipe`` section.
"""

from __future__ import annotations

import glob
import json
import os
import random
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from mim.config import Config, config_from_dict, config_to_dict, migrate_config
from mim.io import OutputError, atomic_output
from mim.models import Renderer

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "read_metadata", "checkpoint_config",
           "latest_checkpoint", "list_checkpoints", "checkpoint_path", "rng_state_tensors", "restore_rng_state",
           "prune_checkpoints", "migrate_checkpoint_metadata", "FORMAT_VERSION", "RENDERER_KINDS",
           "check_same_renderer", "renderer_from_checkpoint"]

# The tag of every mim checkpoint, whatever its version (the number is part of the tag).
FORMAT = "mim-checkpoint-1"
FORMAT_VERSION = 2
RENDERER_KINDS = ("stage1", "stage2")   # checkpoints that hold a renderer
_STEP_FILE = re.compile(r"^step_(\d+)\.safetensors$")


class CheckpointError(ValueError):
    """A checkpoint that is missing, corrupt, of another kind, or from another config."""


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"step_{step:07d}.safetensors")


def list_checkpoints(directory: str) -> List[Tuple[int, str]]:
    """(step, path) of every ``step_*.safetensors`` in ``directory``, by step (temporary files
    are ignored; a missing directory has none)."""
    if not os.path.isdir(directory):
        return []
    return sorted((int(m.group(1)), os.path.join(directory, name)) for name in os.listdir(directory)
                  if (m := _STEP_FILE.match(name)))


def latest_checkpoint(directory: str) -> Optional[str]:
    """The highest-step ``step_*.safetensors`` in ``directory`` (temporary files are ignored)."""
    found = list_checkpoints(directory)
    return found[-1][1] if found else None


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
    """Write one checkpoint atomically, at :data:`FORMAT_VERSION`. ``kind`` names what it holds
    (e.g. ``stage1``); ``config`` is the current form (``config_to_dict``)."""
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
    metadata = {"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind, "step": str(step),
                "config": json.dumps(config),
                "optimizers": json.dumps(optim_meta), "rng": json.dumps(rng_meta),
                "extra": json.dumps(extra or {})}
    try:
        with atomic_output(path) as tmp:
            save_file(tensors, tmp, metadata=metadata)
    except SafetensorError as error:   # safetensors reports a full disk this way
        raise OutputError(path, f"safetensors: {error}") from None


def _json_field(meta: Mapping[str, str], key: str, path: str, default: Optional[str] = None) -> Any:
    text = meta.get(key, default)
    if text is None:
        raise CheckpointError(f"checkpoint {path!r}: its metadata has no {key!r} field")
    try:
        value = json.loads(text)
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path!r}: metadata {key!r} is not valid JSON ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"checkpoint {path!r}: metadata {key!r} must be a JSON object, "
                              f"got {type(value).__name__}")
    return value


def migrate_checkpoint_metadata(meta: Mapping[str, str], path: str) -> Dict[str, str]:
    """A checkpoint's raw metadata (strings) of any version up to :data:`FORMAT_VERSION`, in the
    current form: ``format_version`` set to the current one and the config (JSON) passed through
    :func:`mim.config.migrate_config`. A missing ``format_version`` is version 1; a newer one,
    or a config that cannot be migrated, raises CheckpointError naming the file."""
    text = meta.get("format_version", "1")
    if not re.fullmatch(r"\d{1,9}", text.strip()) or int(text) < 1:
        raise CheckpointError(f"checkpoint {path!r}: metadata 'format_version' must be an integer >= 1, "
                              f"got {text!r}")
    version = int(text)
    if version > FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {path!r} has format_version {version}, newer than this version of "
                              f"mim reads (up to {FORMAT_VERSION}): update mim to load it")
    migrated = dict(meta, format_version=str(FORMAT_VERSION))
    if "config" in meta:
        config = _json_field(meta, "config", path)
        try:
            migrated["config"] = json.dumps(migrate_config(config))
        except ValueError as error:
            raise CheckpointError(f"checkpoint {path!r} (format_version {version}) has a config this "
                                  f"version cannot use: {error}") from None
    return migrated


def read_metadata(path: str) -> Dict[str, Any]:
    """The checkpoint's kind, step, config and extra fields (no tensors are read), in the current
    form (:func:`migrate_checkpoint_metadata`). Every field is checked: a missing or malformed one
    raises CheckpointError naming the file and the field."""
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
    for key in ("kind", "step"):
        if key not in meta:
            raise CheckpointError(f"checkpoint {path!r}: its metadata has no {key!r} field")
    step = meta["step"]
    if not re.fullmatch(r"\d{1,18}", step.strip()):
        raise CheckpointError(f"checkpoint {path!r}: metadata 'step' must be an integer >= 0, got {step!r}")
    meta = migrate_checkpoint_metadata(meta, path)
    return {"kind": meta["kind"], "step": int(step), "config": _json_field(meta, "config", path),
            "extra": _json_field(meta, "extra", path, "{}"), "_raw": meta}


def checkpoint_config(path: str, meta: Optional[Dict[str, Any]] = None) -> Config:
    """The checkpoint's stored config, validated as any config is (``Config.validate``, memory
    estimate included) before any model is built; CheckpointError naming the file and the key."""
    meta = read_metadata(path) if meta is None else meta
    try:
        return config_from_dict(meta["config"])
    except ValueError as error:
        raise CheckpointError(f"checkpoint {path!r} has a config this version cannot use: {error}") from None


_FLOATING = {"F16", "BF16", "F32", "F64"}


def _check_header(path: str, header: Mapping[str, Tuple[Tuple[int, ...], str]],
                  modules: Mapping[str, torch.nn.Module], optional: Sequence[str]) -> None:
    """Every module tensor against the file's header (shape, floating or not): nothing is read."""
    for name, module in modules.items():
        prefix = name + "."
        stored = {k[len(prefix):]: v for k, v in header.items() if k.startswith(prefix)}
        own = module.state_dict()
        missing = sorted(k for k in set(own) - set(stored) if not (prefix + k).startswith(tuple(optional)))
        unexpected = sorted(set(stored) - set(own))
        wrong = sorted(k for k in set(own) & set(stored) if tuple(own[k].shape) != stored[k][0])
        kind = sorted(k for k in set(own) & set(stored)
                      if own[k].is_floating_point() != (stored[k][1] in _FLOATING))
        if missing or unexpected or wrong or kind:
            details = "; ".join(f"{label}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                                for label, keys in (("missing", missing), ("unexpected", unexpected),
                                                    ("wrong shape", wrong), ("wrong dtype", kind)) if keys)
            raise CheckpointError(f"checkpoint {path!r} does not fit the {name!r} model of this "
                                  f"config ({details}); was it trained with another config?")


def _read_tensors(path: str, modules: Mapping[str, torch.nn.Module], optional: Sequence[str],
                  wanted: Sequence[str]) -> Dict[str, torch.Tensor]:
    """The tensors whose names start with one of ``wanted``, after the header check; a floating
    tensor with NaN or inf raises CheckpointError naming it."""
    from safetensors import safe_open

    tensors = {}
    try:
        with safe_open(path, framework="pt") as handle:
            header = {}
            for key in handle.keys():
                piece = handle.get_slice(key)
                header[key] = (tuple(piece.get_shape()), piece.get_dtype())
            _check_header(path, header, modules, optional)
            for key in handle.keys():
                if not key.startswith(tuple(wanted)):
                    continue
                tensor = handle.get_tensor(key)
                if tensor.is_floating_point() and not torch.isfinite(tensor).all():
                    raise CheckpointError(f"checkpoint {path!r}: tensor {key!r} holds NaN or infinite "
                                          f"values (saved from a diverged run?)")
                tensors[key] = tensor
    except CheckpointError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise CheckpointError(f"checkpoint {path!r} is corrupt: {error}") from None
    return tensors


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
    optimizers = optimizers or {}
    wanted = [name + "." for name in [*modules, *optimizers]] + (["rng."] if restore_rng else [])
    tensors = _read_tensors(path, modules, optional, wanted)
    for name, module in modules.items():
        prefix = name + "."
        module.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
                               strict=not optional)
    optim_meta = _json_field(meta["_raw"], "optimizers", path, "{}")
    for name, optimizer in optimizers.items():
        if name not in optim_meta:
            raise CheckpointError(f"checkpoint {path!r} has no optimizer state {name!r}")
        try:
            _load_optimizer(optimizer, name, optim_meta[name], tensors)
        except (ValueError, KeyError, TypeError, IndexError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {path!r}: optimizer state {name!r} does not fit "
                                  f"({type(error).__name__}: {error})") from None
    if restore_rng:
        try:
            restore_rng_state(tensors, _json_field(meta["_raw"], "rng", path))
        except (ValueError, KeyError, TypeError, RuntimeError) as error:
            raise CheckpointError(f"checkpoint {path!r}: its RNG state cannot be restored "
                                  f"({type(error).__name__}: {error})") from None
    return meta


def _load_optimizer(optimizer: torch.optim.Optimizer, name: str, saved: Dict[str, Any],
                    tensors: Mapping[str, torch.Tensor]) -> None:
    prefix = name + ".state."
    state: Dict[int, Dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            index, field = key[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[field] = value
    for key, value in saved["scalars"].items():
        index, field = key.split(".", 1)
        state.setdefault(int(index), {})[field] = value
    groups = saved["param_groups"]
    for group, current in zip(groups, optimizer.param_groups):  # JSON turned tuples into lists
        for key, value in current.items():
            if isinstance(value, tuple) and isinstance(group.get(key), list):
                group[key] = tuple(group[key])
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _renderer_fields(config: Config) -> Dict[str, Any]:
    """What decides a renderer's parameters: the renderer section and the recipe's decoder FiLM."""
    data = config_to_dict(config)
    fields = {f"renderer.{key}": value for key, value in data["renderer"].items()}
    fields["recipe.decoder_motion_film"] = data["recipe"]["decoder_motion_film"]
    return fields


def check_same_renderer(saved: Dict, config: Config, path: str) -> None:
    """Raise CheckpointError naming every renderer field (the renderer section and
    ``recipe.decoder_motion_film``) where the stored config ``saved`` differs from ``config``.
    ``saved`` may be of any earlier form (:func:`mim.config.migrate_config`); a field it lacks
    counts as its default."""
    ours = _renderer_fields(config)
    try:
        theirs = _renderer_fields(config_from_dict(saved))
    except ValueError as error:
        raise CheckpointError(f"{path!r} holds a config this version cannot use: {error}") from None
    diff = [f"{k}: checkpoint {theirs.get(k)!r} vs config {v!r}" for k, v in ours.items() if theirs.get(k) != v]
    if diff:
        raise CheckpointError(f"checkpoint {path!r} was trained with another renderer config "
                              f"({saved.get('name')!r}): " + "; ".join(diff))


def renderer_from_checkpoint(path: str, backend: Optional[str] = None,
                             config: Optional[Config] = None) -> Renderer:
    """The renderer of a stage-1 checkpoint (or of a stage-2 one, which carries the frozen
    stage-1 renderer), in eval mode. With ``config``, the checkpoint must have been trained with
    the same renderer config (else CheckpointError naming the fields)."""
    meta = read_metadata(path)
    if meta["kind"] not in RENDERER_KINDS:
        raise CheckpointError(f"checkpoint {path!r} holds a {meta['kind']!r} model, not a renderer")
    saved = checkpoint_config(path, meta)
    if config is not None:
        check_same_renderer(meta["config"], config, path)
    renderer = Renderer.from_config(saved, backend=backend)
    load_checkpoint(path, kind=meta["kind"], modules={"renderer": renderer})
    return renderer.eval()
