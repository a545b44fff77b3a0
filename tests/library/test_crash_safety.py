"""Crash safety of model files and checkpoints: kill -9 during a save, damaged files.

`model.save` and `checkpoint.save_checkpoint` write a temporary file in the target's
directory, flush and fsync it, and rename it over the target (serialization.write_npz). So a
process killed at any moment leaves at `path` either the previous file or the new one,
whole. The test below proves it the hard way: a child process saves a model and a checkpoint
over the same two paths in a loop, every version tagged by its weights (all equal to the
version number), and is killed with SIGKILL at a random moment, again and again. After each
kill both files must load, hold one single version (no mixture of two), and that version is
the last one the child reported saved or the one after it.

What a kill does leave behind: the temporary file it was writing (``.<name>.<random>.tmp``
next to the target; at most one per file being saved, since a process writes one at a
time). Nothing removes it later; see test_next_save_removes_a_crashed_saves_temporary_file.

Loading never unpickles, and a damaged file — truncated at any length, any byte flipped, a
foreign or pickled file — is a ValueError or (for a flipped byte the format does not
check, e.g. a zip timestamp) the very same model, never a crash or a different model.
"""
import glob
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import nnscratch as nn
from nnscratch.checkpoint import load_checkpoint, save_checkpoint

HERE = os.path.abspath(__file__)
KILLS = 24
MODEL, CHECKPOINT = "model.npz", "checkpoint.npz"


def _model():
    # ~0.5 M parameters: a save takes a few milliseconds, long enough to be hit mid-write
    return nn.Sequential(nn.Linear(400, 1000), nn.ReLU(), nn.Linear(1000, 100))


def _model_and_adam():
    """The model and an Adam that has taken one step (so its moment arrays exist)."""
    nn.seed(0)
    model = _model()
    optimizer = nn.Adam(model.parameters(), lr=1e-3)
    loss = nn.CrossEntropyLoss()
    loss(model(np.ones((4, 400), np.float32)), np.zeros(4, np.int64))
    model.backward(loss.backward())
    optimizer.step()
    return model, optimizer


def _tag(model, optimizer, version):
    for p in model.parameters():
        p.data[...] = version
    for entry in optimizer.state:
        for value in entry.values():
            if isinstance(value, np.ndarray):
                value[...] = version


def _version_of(arrays, what):
    """The one version all of `arrays` hold; fails on a mixture of versions."""
    values = np.unique(np.concatenate([np.ravel(a) for a in arrays]))
    assert len(values) == 1, f"{what} mixes versions {values[:10]}"
    return int(values[0])


def child(directory):
    """Save model and checkpoint versions 1, 2, 3, ... forever; append each version to
    saved.log once both files of that version are in place."""
    model, optimizer = _model_and_adam()
    with open(os.path.join(directory, "start.log")) as f:
        version = int(f.read())
    log = open(os.path.join(directory, "saved.log"), "a", buffering=1)
    log.write("ready\n")
    while True:
        version += 1
        _tag(model, optimizer, version)
        model.save(os.path.join(directory, MODEL))
        save_checkpoint(os.path.join(directory, CHECKPOINT), model, optimizer,
                        meta={"version": version})
        log.write(f"{version}\n")


def _last_saved(directory):
    with open(os.path.join(directory, "saved.log")) as f:
        lines = [line.strip() for line in f.read().split("\n")[:-1]]   # whole lines only
    versions = [int(line) for line in lines if line.isdigit()]
    return ("ready" in lines), (versions[-1] if versions else None)


def _temporary_files(directory):
    return sorted(glob.glob(os.path.join(directory, ".*.tmp")))


def _check_files(directory, low, high):
    """Both files load, each holds one version in [low, high]; returns the versions."""
    model = nn.load(os.path.join(directory, MODEL))
    model_version = _version_of([p.data for p in model.parameters()], MODEL)
    ckpt_model, state, meta = load_checkpoint(os.path.join(directory, CHECKPOINT))
    arrays = [p.data for p in ckpt_model.parameters()]
    arrays += [v for entry in state["state"] for v in entry.values() if isinstance(v, np.ndarray)]
    ckpt_version = _version_of(arrays, CHECKPOINT)
    assert meta["version"] == ckpt_version, (meta, ckpt_version)
    for name, version in ((MODEL, model_version), (CHECKPOINT, ckpt_version)):
        assert low <= version <= high, (name, version, low, high)
    # the model file is written first: it is never behind the checkpoint
    assert ckpt_version <= model_version <= ckpt_version + 1
    return model_version, ckpt_version


def test_kill_during_save_leaves_the_old_or_the_new_file(tmp_path):
    directory = str(tmp_path)
    # version 0 of both files, written by this process
    model, optimizer = _model_and_adam()
    _tag(model, optimizer, 0)
    model.save(tmp_path / MODEL)
    save_checkpoint(tmp_path / CHECKPOINT, model, optimizer, meta={"version": 0})

    rng = np.random.default_rng(7)
    env = dict(os.environ)
    confirmed = 0          # the newest version the child reported saved (both files)
    interrupted = 0        # kills that left a temporary file: caught in the middle of a write
    saves = 0
    for kill in range(KILLS):
        (tmp_path / "start.log").write_text(str(confirmed))
        (tmp_path / "saved.log").write_text("")
        proc = subprocess.Popen([sys.executable, HERE, directory], cwd=directory, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while not _last_saved(directory)[0]:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the child never got ready"
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0.0, 0.25)))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL, proc.returncode
        _, last = _last_saved(directory)
        low = confirmed if last is None else last
        model_version, ckpt_version = _check_files(directory, low, low + 1)
        saves += model_version - confirmed
        confirmed = ckpt_version
        # a kill leaves at most the one temporary file it was writing, named after the
        # target, in its directory; removed here (nothing else removes it, see below)
        leftovers = _temporary_files(directory)
        assert len(leftovers) <= 1, leftovers
        for path in leftovers:
            assert os.path.basename(path).startswith((f".{MODEL}.", f".{CHECKPOINT}."))
            os.unlink(path)
        interrupted += bool(leftovers)
    assert sorted(os.listdir(directory)) == sorted([MODEL, CHECKPOINT, "start.log", "saved.log"])
    # the kills really landed inside saves, and the child really saved between them
    assert interrupted >= KILLS // 3, (interrupted, KILLS)
    assert saves >= KILLS, saves


def test_next_save_removes_a_crashed_saves_temporary_file(tmp_path):
    path = tmp_path / MODEL
    _model().save(path)
    stale = tmp_path / f".{MODEL}.abc123.tmp"          # what a save killed mid-write leaves
    stale.write_bytes(b"PK\x03\x04 half a zip")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    _model().save(path)
    assert not stale.exists()


# ---------------------------------------------------------------------------------------
# Damaged and foreign files

@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small model file and a checkpoint file, as bytes, with the originals."""
    directory = tmp_path_factory.mktemp("saved")
    nn.seed(3)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    optimizer = nn.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss = nn.CrossEntropyLoss()
    loss(model(np.ones((2, 5), np.float32)), np.zeros(2, np.int64))
    model.backward(loss.backward())
    optimizer.step()
    model.save(directory / "m.npz")
    save_checkpoint(directory / "c.npz", model, optimizer, meta={"epoch": 1})
    return dict(model=model, directory=directory,
                model_bytes=(directory / "m.npz").read_bytes(),
                checkpoint_bytes=(directory / "c.npz").read_bytes())


def _same_model(a, b):
    return repr(a) == repr(b) and all(
        np.array_equal(p.data, q.data) and p.data.dtype == q.data.dtype
        for p, q in zip(a.parameters(), b.parameters()))


def _load_outcome(path, reader):
    """None (ValueError) or the model read; anything else propagates and fails the test."""
    try:
        result = reader(path)
    except ValueError:
        return None
    return result[0] if isinstance(result, tuple) else result


READERS = {"model": ("model_bytes", nn.load), "checkpoint": ("checkpoint_bytes", load_checkpoint)}


@pytest.mark.parametrize("kind", sorted(READERS))
def test_truncated_at_any_length_is_a_value_error(saved, tmp_path, kind):
    key, reader = READERS[kind]
    data = saved[key]
    path = tmp_path / "t.npz"
    for size in list(range(0, len(data), max(1, len(data) // 400))) + [len(data) - 1]:
        path.write_bytes(data[:size])
        assert _load_outcome(path, reader) is None, size


@pytest.mark.parametrize("kind", sorted(READERS))
def test_flipped_byte_is_a_value_error_or_the_same_model(saved, tmp_path, kind):
    key, reader = READERS[kind]
    data = saved[key]
    path = tmp_path / "f.npz"
    rng = np.random.default_rng(11)
    positions = sorted(set(rng.integers(0, len(data), size=400).tolist())
                       | set(range(0, 64)) | set(range(len(data) - 64, len(data))))
    refused = 0
    for position in positions:
        damaged = bytearray(data)
        damaged[position] ^= 1 << int(rng.integers(8))
        path.write_bytes(bytes(damaged))
        loaded = _load_outcome(path, reader)
        if loaded is None:
            refused += 1
        else:      # a byte no check covers (zip timestamps, ...): the file still means the same
            assert _same_model(loaded, saved["model"]), f"byte {position}: a different model"
    assert refused > len(positions) // 2, (refused, len(positions))


def _central_directory_entries(data):
    """Offsets of the zip central directory headers ("PK\\1\\2") in `data`."""
    offsets, start = [], 0
    while (start := data.find(b"PK\x01\x02", start)) >= 0:
        offsets.append(start)
        start += 4
    return offsets


@pytest.mark.parametrize("edit", ["encrypted flag", "compression method 99", "version 25.5",
                                  "corrupt deflate stream"])
def test_zip_features_never_written_are_value_errors(saved, tmp_path, edit):
    # zipfile raises RuntimeError / NotImplementedError / zlib.error for these, which a
    # loader must turn into its ValueError like any other damage
    path = tmp_path / "z.npz"
    if edit == "corrupt deflate stream":
        with np.load(saved["directory"] / "m.npz") as archive:
            np.savez_compressed(path, **{k: archive[k] for k in archive.files})
        data = bytearray(path.read_bytes())
        assert _load_outcome(path, nn.load) is not None          # compressed is fine
        data[len(data) // 3] ^= 0xFF                             # inside a member's data
    else:
        data = bytearray(saved["model_bytes"])
        entry = _central_directory_entries(bytes(data))[0]
        if edit == "encrypted flag":
            data[entry + 8] |= 0x01                              # general purpose flag bit 0
        elif edit == "compression method 99":
            data[entry + 10:entry + 12] = (99).to_bytes(2, "little")
        else:
            data[entry + 6:entry + 8] = (255).to_bytes(2, "little")  # version needed
    path.write_bytes(bytes(data))
    for reader in (nn.load, load_checkpoint):
        with pytest.raises(ValueError):
            reader(path)


class _Payload:
    """Unpickling this runs code: it creates the file named `marker`."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_loading_never_unpickles(saved, tmp_path):
    marker = str(tmp_path / "pwned")
    with np.load(saved["directory"] / "m.npz") as archive:
        arrays = {k: archive[k] for k in archive.files}
    evil = np.empty(1, dtype=object)
    evil[0] = _Payload(marker)
    candidates = {}
    for key in ("__architecture__", "0.weight"):
        candidates[key] = tmp_path / f"evil-{key}.npz"
        np.savez(candidates[key], **{**arrays, key: evil})       # pickles the object array
    candidates["pickle"] = tmp_path / "evil.pkl"
    candidates["pickle"].write_bytes(pickle.dumps(_Payload(marker)))
    candidates["npy"] = tmp_path / "evil.npy"
    np.save(candidates["npy"], evil, allow_pickle=True)
    for name, path in candidates.items():
        for reader in (nn.load, load_checkpoint):
            with pytest.raises(ValueError):
                reader(path)
            assert not os.path.exists(marker), f"{name}: loading ran pickled code"


@pytest.mark.parametrize("content", [b"", b"\x00" * 100, b"PK\x05\x06" + b"\x00" * 18,
                                     b"\x93NUMPY garbage", "naïve text\n".encode(),
                                     b"\x1f\x8b\x08\x00 gzip"])
def test_foreign_bytes_are_value_errors(tmp_path, content):
    path = tmp_path / "foreign.npz"
    path.write_bytes(content)
    for reader in (nn.load, load_checkpoint):
        with pytest.raises(ValueError):
            reader(path)


def test_a_directory_or_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        nn.load(tmp_path / "missing.npz")
    with pytest.raises((ValueError, IsADirectoryError)):
        nn.load(tmp_path)


if __name__ == "__main__":
    child(sys.argv[1])
