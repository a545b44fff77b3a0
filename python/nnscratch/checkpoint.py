"""Training checkpoints: model, optimizer state and progress in one `.npz`, written atomically.

A checkpoint is a model file (``nnscratch.load`` reads it as one) with extra entries under
``checkpoint/``: the optimizer's arrays (``checkpoint/optim/<i>/<name>``) and one JSON
document (``checkpoint/meta``: epoch, history, the optimizer's scalars, anything the
caller adds). No pickle anywhere; a crash while saving leaves the previous checkpoint.

    save_checkpoint(path, model, optimizer, meta={"epoch": 3, ...})
    model, optimizer_state, meta = load_checkpoint(path)
    set_optimizer_state(optimizer, optimizer_state)     # a new optimizer over model.parameters()
"""
import json

import numpy as np

from .serialization import EXTRA_PREFIX, model_arrays, model_from_arrays, read_npz, write_npz

__all__ = ["save_checkpoint", "load_checkpoint", "set_optimizer_state"]

META_KEY = EXTRA_PREFIX + "meta"
OPTIM_PREFIX = EXTRA_PREFIX + "optim/"


def save_checkpoint(path, model, optimizer, meta=None):
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


def load_checkpoint(path):
    """(model, optimizer_state, meta) from a checkpoint; ValueError for a broken file."""
    arrays = read_npz(path)
    raw = arrays.get(META_KEY)
    if raw is None or raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(f"{path!r} is not an nnscratch checkpoint (no {META_KEY!r} entry)")
    try:
        document = json.loads(raw.tobytes().decode("utf-8"))
        scalars = document["optimizer"]["scalars"]
        lr = float(document["optimizer"]["lr"])
        kind = document["optimizer"].get("type")
        meta = document["meta"]
        if not (isinstance(scalars, list) and all(isinstance(s, dict) for s in scalars)
                and isinstance(meta, dict) and (kind is None or isinstance(kind, str))):
            raise ValueError("unexpected types")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError,
            AttributeError, RecursionError) as err:
        raise ValueError(f"{path!r}: the checkpoint's metadata is damaged ({err})") from None
    model = model_from_arrays(path, {k: v for k, v in arrays.items()
                                     if not k.startswith(EXTRA_PREFIX)})
    entries = [dict(s) for s in scalars]
    for key, value in arrays.items():
        if key.startswith(OPTIM_PREFIX):
            index, _, name = key[len(OPTIM_PREFIX):].partition("/")
            if not index.isdigit() or int(index) >= len(entries):
                raise ValueError(f"{path!r}: unexpected checkpoint entry {key!r}")
            entries[int(index)][name] = value
    state = {"lr": lr, "state": entries, "type": kind}
    return model, state, meta


def set_optimizer_state(optimizer, state):
    """Load a state from `load_checkpoint` into an optimizer of the same kind."""
    kind = state.get("type")
    if kind is not None and kind != type(optimizer).__name__:
        raise ValueError(f"the checkpoint holds {kind} state, the optimizer is "
                         f"{type(optimizer).__name__}")
    optimizer.load_state_dict({"lr": state["lr"], "state": state["state"]})
