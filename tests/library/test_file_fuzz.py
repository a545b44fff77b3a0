"""Fuzzing crafted model and checkpoint files.

Thousands of files made from real ones by one or two random edits -- of the architecture
document (any value replaced by a huge, negative, fractional, NaN, wrong-kind or deeply
nested one; keys deleted or added; layer types swapped), of a member's .npy header (shape,
dtype, byte order, Fortran order), of the zip structure (names, compression, declared sizes,
duplicates, a compressed bomb, cut short, flipped bytes) and, for checkpoints, of the run's
record and the optimizer's arrays. Each file is read as a user would read it:

* ``nnscratch.load`` returns a model or raises ``ValueError``;
* ``load_checkpoint`` and ``nnscratch train --resume``'s reading of it return, or raise
  ``ValueError`` (the command line: its one-line ``CLIError``);

and none of them takes more memory than a few times the file's size, or more than a moment.
The edits are drawn from a fixed seed: a failure names the case, which reproduces it.
"""
import io
import json
import math
import time
import warnings
import zipfile
import zlib

import numpy as np
import pytest

import nnscratch as nn
from nnscratch import _random, checkpoint, cli
from conftest import resident

CASES = 700                 # per kind of file
PEAK, FACTOR = 8 << 20, 8   # bytes of memory a load may take: PEAK + FACTOR x file size
SECONDS = 2.0               # a load's time limit


# --- the files we start from ------------------------------------------------------------------

@nn.register
class _FuzzBlock(nn.Module):
    """A residual block of one's own (registered: saved and loaded by name)."""

    def __init__(self, width=6):
        super().__init__()
        self.width = width
        self.body = nn.ModuleList([nn.Linear(width, width), nn.ReLU()])

    def get_config(self):
        return {"width": self.width}

    def forward(self, x):
        out = x
        for layer in self.body:
            out = layer(out)
        return x + out

    def backward(self, grad_out):
        grad = grad_out
        for layer in reversed(self.body):
            grad = layer.backward(grad)
        return grad_out + grad


def _models():
    nn.seed(0)
    return {
        "mlp": nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Dropout(0.2), nn.Linear(6, 3)),
        "cnn": nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Flatten(), nn.Linear(2 * 3 * 3, 4)),
        "block": nn.Sequential(nn.Linear(5, 6), _FuzzBlock(6), nn.BatchNorm1d(6),
                               nn.Linear(6, 3, dtype=np.float64)),
    }


def _read(path):
    with zipfile.ZipFile(path) as z:
        return [(info.filename, z.read(info)) for info in z.infolist()]


def _write(members, compression=zipfile.ZIP_STORED):
    buffer = io.BytesIO()
    with warnings.catch_warnings(), zipfile.ZipFile(buffer, "w", compression=compression) as z:
        warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
        for name, data in members:
            z.writestr(name, data)
    return buffer.getvalue()


def _npy(array, header=None):
    """`array` as .npy bytes, its header's fields replaced by `header`."""
    buffer = io.BytesIO()
    data = np.lib.format.header_data_from_array_1_0(array)
    data.update(header or {})
    np.lib.format.write_array_header_1_0(buffer, data)
    buffer.write(np.ascontiguousarray(array).tobytes())
    return buffer.getvalue()


def _npy_array(data):
    return np.load(io.BytesIO(data), allow_pickle=False)


# --- edits ------------------------------------------------------------------------------------

VALUES = [0, -1, 1, 2, 3, 7, 2 ** 31, 2 ** 63, 2 ** 200, 10 ** 9, -10 ** 9, 0.5, -0.0, 1e308,
          -1e308, math.nan, math.inf, -math.inf, True, False, None, "", "x", "float16", "int64",
          "object", "he", [], [1, 2], [[1]], {}, {"a": 1}, {"__module__": {"type": "Linear"}},
          "Linear", "Sequential"]
TYPES = ["Linear", "Conv2d", "BatchNorm1d", "BatchNorm2d", "ReLU", "Sigmoid", "Tanh",
         "Softmax", "Dropout", "Flatten", "MaxPool2d", "Identity", "Sequential", "ModuleList",
         "_FuzzBlock", "Unknown", "os.system", "__class__", "", "builtins.eval"]
SHAPES = [(), (0,), (1,), (2 ** 62, 4), (10 ** 6, 10 ** 6), (10 ** 9,), (3, 0, 5), (2 ** 31,),
          (1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
           1, 1, 1, 1, 1)]
DESCRS = ["<f4", "<f8", ">f4", ">f8", "<f2", "|u1", "<i8", "<c8", "|b1", "<U4", "|S4", "|V8",
          "<M8[s]"]


def _nested(depth):
    value = 1
    for _ in range(depth):
        value = {"__module__": {"type": "Sequential", "config": {"layers": [value]}}}
    return value


def _places(node, path=()):
    """Every (container, key) of a JSON document."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield node, key
            yield from _places(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield node, i
            yield from _places(value, path + (i,))


def _edit_document(document, rng):
    """One random edit of a JSON document, in place."""
    places = list(_places(document))
    if not places:
        return
    node, key = places[rng.integers(len(places))]
    action = rng.integers(8)
    if action <= 2:
        node[key] = VALUES[rng.integers(len(VALUES))]
    elif action == 3 and key == "type":
        node[key] = TYPES[rng.integers(len(TYPES))]
    elif action == 3:
        value = node[key]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            node[key] = type(value)(value * [-1, 2, 1000, 10 ** 6][rng.integers(4)])
        else:
            node[key] = _nested(int(rng.integers(1, 120)))
    elif action == 4:
        del node[key]
    elif action == 5 and isinstance(node, dict):
        node["extra" + str(rng.integers(3))] = VALUES[rng.integers(len(VALUES))]
    elif action == 5:
        node.insert(key, node[key])                   # a layer (or value) twice
    elif action == 6:
        node[key] = json.loads(json.dumps(node[key]))  # a deep copy of itself: unchanged
        if isinstance(node[key], (dict, list)) and node[key]:
            _edit_document(node[key], rng)
    else:
        node[key] = str(node[key])


TEXTS = [b"[" * 100000 + b"]" * 100000, b"\xff\xfe{}", b"not json", b"", b"null", b"[]",
         b'{"format": "nnscratch", "version": 1e999999}', b"1" * 5000, b"NaN",
         b'{"format": "nnscratch", "version": 2, "type": "Sequential", "config": {"layers": '
         + b"[" * 5000 + b"]" * 5000 + b"}}"]


def _edit_json_member(members, name, rng):
    out = []
    for member, data in members:
        if member == name + ".npy":
            document = json.loads(_npy_array(data).tobytes())
            for _ in range(rng.integers(1, 3)):
                _edit_document(document, rng)
            text = json.dumps(document).encode()
            if rng.integers(10) == 0:                     # not a document at all
                text = TEXTS[rng.integers(len(TEXTS))]
            data = _npy(np.frombuffer(text, np.uint8))
        out.append((member, data))
    return out


def _edit_header(members, rng, prefix=""):
    """A member's .npy header edited: shape, dtype, order; the data as it was (or resized)."""
    chosen = [i for i, (name, _) in enumerate(members) if name.startswith(prefix)
              and not name.startswith(("__architecture__", checkpoint.META_KEY))]
    if not chosen:
        return members
    i = chosen[rng.integers(len(chosen))]
    name, data = members[i]
    array = _npy_array(data)
    header = {}
    what = rng.integers(5)
    if what == 0:
        header["shape"] = SHAPES[rng.integers(len(SHAPES))]
    elif what == 1:
        header["shape"] = tuple(s + int(rng.integers(-1, 2)) for s in array.shape) or (2,)
    elif what == 2:
        header["descr"] = DESCRS[rng.integers(len(DESCRS))]
    elif what == 3:
        header["fortran_order"] = True
    else:
        header["shape"] = array.shape[::-1]
    data = _npy(array, header)
    if rng.integers(2) and "shape" in header:          # data of the declared size when small
        count = math.prod(header["shape"])
        if 0 <= count <= 4096:
            raw = rng.integers(0, 256, count * array.itemsize, dtype=np.uint8).tobytes()
            data = data[:len(data) - array.nbytes] + raw
    members = list(members)
    members[i] = (name, data)
    return members


def _edit_zip(raw, members, rng):
    """The archive itself edited."""
    what = rng.integers(9)
    if what == 0:                                       # a member renamed
        i = rng.integers(len(members))
        name = ["x.npy", "../evil.npy", "/abs.npy", "0.weight", "folder/", "a" * 300 + ".npy",
                members[0][0], "__architecture__.npy"][rng.integers(8)]
        members = list(members)
        members[i] = (name, members[i][1])
        return _write(members)
    if what == 1:                                       # a member dropped
        members = list(members)
        del members[rng.integers(len(members))]
        return _write(members)
    if what == 2:                                       # a member twice
        return _write(members + [members[rng.integers(len(members))]])
    if what == 3:                                       # a compressed bomb
        bomb = _npy(np.zeros(64 << 20, np.uint8))
        name = ["junk.npy", members[rng.integers(len(members))][0]][rng.integers(2)]
        return _write(members + [(name, bomb)], zipfile.ZIP_DEFLATED)
    if what == 4:                                       # deflated throughout
        return _write(members, zipfile.ZIP_DEFLATED)
    if what == 5:                                       # cut short
        return raw[:rng.integers(len(raw))]
    if what == 6:                                       # bytes flipped
        data = bytearray(raw)
        for _ in range(rng.integers(1, 4)):
            data[rng.integers(len(data))] ^= 1 << int(rng.integers(8))
        return bytes(data)
    if what == 7:                                       # a declared size in a header changed
        data = bytearray(raw)
        offsets = [i for i in range(len(data) - 4) if data[i:i + 4] in (b"PK\x03\x04",
                                                                        b"PK\x01\x02")]
        at = offsets[rng.integers(len(offsets))]
        field = at + (18 if data[at + 2] == 3 else 20) + 4 * int(rng.integers(2))
        data[field:field + 4] = int(rng.choice([0, 1, 2 ** 31, 2 ** 32 - 1])).to_bytes(4,
                                                                                   "little")
        return bytes(data)
    # a member stored with a compression method the format never writes
    data = bytearray(raw)
    offsets = [i for i in range(len(data) - 4) if data[i:i + 4] == b"PK\x03\x04"]
    at = offsets[rng.integers(len(offsets))]
    data[at + 8:at + 10] = int(rng.choice([1, 12, 14, 99])).to_bytes(2, "little")
    return bytes(data)


def _crafted(raw, rng, json_member, array_prefix=""):
    members = _read(io.BytesIO(raw))
    kind = rng.integers(4)
    if kind == 0:
        return _write(_edit_json_member(members, json_member, rng))
    if kind == 1:
        return _write(_edit_header(members, rng, array_prefix))
    if kind == 2:
        return _edit_zip(raw, members, rng)
    members = _edit_json_member(members, json_member, rng)  # two edits at once
    return _edit_zip(_write(members), members, rng)


def _bounded(fn, size, what):
    """fn()'s result or exception, checked to take bounded memory and time: the resident
    set (tracemalloc would count a refused allocation as granted) and the clock."""
    start_bytes, peak = resident()
    start = time.perf_counter()
    try:
        result = fn()
    except Exception as exc:
        result = exc
    elapsed = time.perf_counter() - start
    grown = peak() - start_bytes
    assert grown <= PEAK + FACTOR * size, f"{what}: {grown} bytes for a file of {size}"
    assert elapsed < SECONDS, f"{what}: {elapsed:.2f} s"
    return result


# --- the tests --------------------------------------------------------------------------------

def test_crafted_model_files_load_or_are_value_errors(tmp_path):
    originals = {}
    for name, model in _models().items():
        model.save(tmp_path / f"{name}.npz")
        originals[name] = (tmp_path / f"{name}.npz").read_bytes()
    rng = np.random.default_rng(2026)
    path = tmp_path / "crafted.npz"
    outcomes = {"loaded": 0, "ValueError": 0}
    for case in range(CASES):
        name = list(originals)[case % len(originals)]
        raw = _crafted(originals[name], rng, "__architecture__")
        path.write_bytes(raw)
        what = f"case {case} ({name}, {len(raw)} bytes)"
        result = _bounded(lambda: nn.load(path), len(raw), what)
        if isinstance(result, Exception):
            assert type(result) is ValueError or isinstance(result, nn.module.StateDictError), (
                what, repr(result))
            assert str(result), what
            outcomes["ValueError"] += 1
        else:
            assert isinstance(result, nn.Module), (what, result)
            outcomes["loaded"] += 1
    # the edits reach both outcomes: some leave a loadable model, most are refused
    assert outcomes["loaded"] >= 10 and outcomes["ValueError"] >= CASES // 2, outcomes


@pytest.fixture(scope="module")
def a_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoint")
    path = folder / "c.npz"
    backend, threads, state = nn.get_backend(), nn.get_num_threads(), _random.get_state()
    try:
        assert cli.main(["train", "--data", "sample", "--limit", "100", "--epochs", "2",
                         "--hidden", "8", "--optimizer", "adam", "--no-progress",
                         "--checkpoint", str(path)]) == 0
    finally:
        nn.set_backend(backend)
        nn.set_num_threads(threads)
        _random.set_state(state)
    return path.read_bytes()


def test_crafted_checkpoints_resume_or_are_one_line_errors(tmp_path, a_checkpoint):
    rng = np.random.default_rng(22)
    path = tmp_path / "crafted.ckpt.npz"
    parser = cli.build_parser()
    state = _random.get_state()
    outcomes = {"resumed": 0, "refused": 0}
    try:
        for case in range(CASES):
            raw = _crafted(a_checkpoint, rng, checkpoint.META_KEY,
                           array_prefix=checkpoint.OPTIM_PREFIX if case % 2 else "")
            path.write_bytes(raw)
            what = f"case {case} ({len(raw)} bytes)"
            result = _bounded(lambda: checkpoint.load_checkpoint(path), len(raw), what)
            if isinstance(result, Exception):
                assert type(result) is ValueError, (what, repr(result))
            args = parser.parse_args(["train", "--data", "sample", "--resume"])
            result = _bounded(lambda: cli._read_checkpoint(args, str(path), io.StringIO()),
                              len(raw), what)
            if isinstance(result, Exception):
                assert type(result) is cli.CLIError, (what, repr(result))
                assert "\n" not in str(result) and "--resume" in str(result), (what, result)
                outcomes["refused"] += 1
            else:
                model, optimizer, done, history, base_lr, _ = result
                assert isinstance(model, nn.Module) and 0 <= done <= args.epochs, what
                assert math.isfinite(base_lr) and base_lr > 0, what
                outcomes["resumed"] += 1
    finally:
        _random.set_state(state)
    assert outcomes["resumed"] >= 10 and outcomes["refused"] >= CASES // 2, outcomes


def test_the_bomb_of_the_fuzz_is_a_real_one():
    """The compressed member the edits add inflates 1000-fold: a load that decompressed it
    would fail the memory bound above."""
    bomb = _npy(np.zeros(64 << 20, np.uint8))
    assert len(zlib.compress(bomb)) * 500 < len(bomb)
