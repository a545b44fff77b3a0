"""Training checkpoints: model, optimizer state and progress in one `.npz`, written atomically.

A checkpoint is a model file (``nnscratch.load`` reads it as one) with extra entries under
``checkpoint/``: the optimizer's arrays (``checkpoint/optim/<i>/<name>``) and one JSON
document (``checkpoint/meta``: epoch, history, the optimizer's scalars, anything the
caller adds). No pickle anywhere; a crash while saving leaves the previous checkpoint.

    save_checkpoint(path, model, optimizer, meta={"epoch": 3, ...})
    model, optimizer_state, meta = load_checkpoint(path)
    set_optimizer_state(optimizer, optimizer_state)     # a new optimizer over model.parameters()
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from .serialization import EXTRA_PREFIX, Archive, model_arrays, read_model, write_npz

if TYPE_CHECKING:
    from .module import Module
    from .optim import Optimizer

__all__ = ["save_checkpoint", "load_checkpoint", "set_optimizer_state"]

META_KEY = EXTRA_PREFIX + "meta"
OPTIM_PREFIX = EXTRA_PREFIX + "optim/"


def save_checkpoint(path: str | os.PathLike[str], model: Module, optimizer: Optimizer,
                    meta: dict[str, Any] | None = None) -> None:
    """Write model, optimizer state and `meta` (JSON-serialisable dict) to exactly `path`."""
    arrays = model_arrays(model)
    state = optimizer.state_dict()
    scalars = []
    for i, entry in enumerate(state["state"]):
        scalars.append({k: v for k, v in entry.items() if not isinstance(v, np.ndarray)})
        for key, value in entry.items():
            if isinstance(value, np.ndarray):
                arrays[f"{OPTIM_PREFIX}{i}/{key}"] = value
    document = {"meta": meta or {}, "optimizer": {"type": type(optimizer).__name__,
                                                  "lr": state["lr"], "scalars": scalars}}
    arrays[META_KEY] = np.frombuffer(json.dumps(document).encode("utf-8"), np.uint8)
    write_npz(path, arrays)


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[Any, dict[str, Any], dict[str, Any]]:
    """(model, optimizer_state, meta) from a checkpoint; ValueError for a broken file.

    Every member is checked from its header before anything is read (see
    ``nnscratch.load``); the optimizer's arrays must have their parameters' shapes."""
    path = os.fspath(path)
    with Archive(path) as archive:
        if META_KEY not in archive.headers:
            raise ValueError(f"{path!r} is not an nnscratch checkpoint (no {META_KEY!r} entry)")
        try:
            document = archive.json(META_KEY)
            scalars = document["optimizer"]["scalars"]
            lr = float(document["optimizer"]["lr"])
            kind = document["optimizer"].get("type")
            meta = document["meta"]
            if not (isinstance(scalars, list) and all(isinstance(s, dict) for s in scalars)
                    and isinstance(meta, dict) and (kind is None or isinstance(kind, str))):
                raise ValueError("unexpected types")
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as err:
            raise ValueError(f"{path!r}: the checkpoint's metadata is damaged ({err})") from None
        model = read_model(archive)
        shapes = [p.shape for p in model.parameters()]
        entries = [dict(s) for s in scalars]
        found = []
        for key in archive.headers:
            if key.startswith(OPTIM_PREFIX):
                index, _, name = key[len(OPTIM_PREFIX):].partition("/")
                if not index.isdigit() or int(index) >= len(entries) or \
                        int(index) >= len(shapes) or \
                        archive.headers[key][0] != shapes[int(index)]:
                    raise ValueError(f"{path!r}: unexpected checkpoint entry {key!r} (shape "
                                     f"{archive.headers[key][0]})")
                found.append((int(index), name, key))
            elif key.startswith(EXTRA_PREFIX) and key != META_KEY:
                raise ValueError(f"{path!r}: unexpected checkpoint entry {key!r}")
        for index, name, key in found:
            entries[index][name] = archive.read(key)
    state = {"lr": lr, "state": entries, "type": kind}
    return model, state, meta


def set_optimizer_state(optimizer: Optimizer, state: Mapping[str, Any]) -> None:
    """Load a state from `load_checkpoint` into an optimizer of the same kind."""
    kind = state.get("type")
    if kind is not None and kind != type(optimizer).__name__:
        raise ValueError(f"the checkpoint holds {kind} state, the optimizer is "
                         f"{type(optimizer).__name__}")
    optimizer.load_state_dict({"lr": state["lr"], "state": state["state"]})
