"""nnscratch.bench's one-sample inference row, and its ONNX Runtime contender.

The row alone (`only="inference"`) runs in about a second here: no pause between the
contenders and a fixed FMA peak (neither is what these tests check). Speed is never
asserted, only that each contender was measured and shown.
"""
import io
import re
import sys

import pytest

import nnscratch as nn
from nnscratch import bench

LABEL = "MLP 784-256-128-10, one-sample inference"


@pytest.fixture
def quick_bench(monkeypatch):
    """bench.run(only="inference") on one thread, fast: (rows, printed lines)."""
    monkeypatch.setattr(bench, "PAUSE", 0.0)
    monkeypatch.setattr(bench, "measured_peak", lambda threads: 100.0)
    torch = bench._try_torch()
    before = nn.get_num_threads(), torch.get_num_threads() if torch is not None else None

    def run():
        out = io.StringIO()
        rows = bench.run(quick=True, threads=1, only="inference", out=out)
        return rows, out.getvalue().splitlines()
    yield run
    nn.set_num_threads(before[0])          # bench.run sets both libraries' thread counts
    if torch is not None:
        torch.set_num_threads(before[1])


def test_inference_row_holds_the_onnxruntime_result(quick_bench):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    rows, lines = quick_bench()
    assert [label for label, _, _ in rows] == [LABEL]
    secs = rows[0][1]
    assert {"nnscratch", "numpy", "onnxruntime"} <= set(secs)
    assert all(s > 0 for s in secs.values())
    assert f"; ONNX Runtime {ort.__version__}; " in lines[2]
    assert lines[3].endswith("vs torch  onnxruntime  vs onnxruntime"), lines[3]
    row = [line for line in lines if line.startswith(LABEL)]
    assert len(row) == 1, lines
    match = re.search(r"(\d+\.\d) us +(\d+\.\d\d)x$", row[0])
    assert match, row[0]
    ours = float(re.search(r"^" + LABEL + r" +(\d+\.\d) us ", row[0]).group(1))
    # the ratio is the ONNX Runtime time over nnscratch's (both printed rounded to 0.1 us)
    assert float(match.group(2)) == pytest.approx(float(match.group(1)) / ours, rel=0.05,
                                                  abs=0.02)


def test_onnxruntime_session_runs_on_the_bench_thread_count():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    nn.seed(0)
    model = bench._mlp([784, 256, 128, 10])
    session = bench._onnxruntime_session(ort, model, (784,), threads=2)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (2, 1)
    assert session.get_providers() == ["CPUExecutionProvider"]


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_without_onnxruntime_the_row_has_no_such_column_and_a_note(quick_bench, monkeypatch,
                                                                   missing):
    monkeypatch.setitem(sys.modules, missing, None)      # `import <missing>` fails
    rows, lines = quick_bench()
    assert [label for label, _, _ in rows] == [LABEL]
    assert "onnxruntime" not in rows[0][1] and "nnscratch" in rows[0][1]
    assert re.search(r"; no ONNX Runtime column \(onnx(runtime)? not installed\); ", lines[2]), \
        lines[2]
    assert "onnxruntime" not in lines[3] and lines[3].endswith("vs torch")


def test_resnet_rows_time_and_weigh_each_contender(monkeypatch):
    # the ResNet-20 epoch (nnscratch, the NumPy twins on a smaller slice, PyTorch with the
    # same weights) and the peak memory of its training, each contender in a child process
    monkeypatch.setattr(bench, "PAUSE", 0.0)
    monkeypatch.setattr(bench, "measured_peak", lambda threads: 100.0)
    torch = bench._try_torch()
    before = nn.get_num_threads(), torch.get_num_threads() if torch is not None else None
    out = io.StringIO()
    try:
        rows = bench.run(quick=True, threads=1, only="resnet", out=out)
    finally:
        nn.set_num_threads(before[0])
        if torch is not None:
            torch.set_num_threads(before[1])
    labels = [label for label, _, _ in rows]
    assert labels == ["ResNet-20 (272,186 parameters), SGD Nesterov, batch 128, epoch (from 512 "
                      "images; numpy from 128)",
                      "ResNet-20, batch 128, epoch on 512 images: peak memory of training"]
    expected = {"nnscratch", "numpy"} | ({"torch"} if torch is not None else set())
    assert set(rows[0][1]) == expected and all(s > 0 for s in rows[0][1].values())
    assert set(rows[1][1]) == expected - {"numpy"} and rows[1][2] == "MiB"
    assert all(mib > 0 for mib in rows[1][1].values())
    printed = out.getvalue()
    assert all(label in printed for label in labels)
