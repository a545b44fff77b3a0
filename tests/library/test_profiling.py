"""benchmarks/profile_step.py: where a training step's time goes (nnscratch.profiling)."""
import numpy as np
import pytest

from nnscratch import profiling


@pytest.mark.parametrize("kind,layers", [("mlp", 5), ("lenet", 10), ("resnet20", 23)])
def test_profile_rows_cover_every_phase_and_layer(kind, layers):
    rows = profiling.profile_step(kind, batch_size=4, steps=3, samples=16)
    labels = [label for label, _ in rows]
    assert labels[0] == "gather the batch" and labels[-1] == "total"
    assert labels[-2] == "between phases (the loop itself)"
    # every layer's backward once, the last layer first (a chain's layers in one row; a
    # ReLU run after its max pool comes back before it); every forward step, the loss, the
    # update
    backward = [label[len("backward "):] for label in labels if label.startswith("backward ")]
    indices = [int(part.split(":")[0]) for label in backward for part in label.split(" + ")]
    assert sorted(indices) == list(range(layers)) and indices[0] == layers - 1
    assert any(label.startswith("forward ") for label in labels)
    assert {"loss", "zero_grad", "optimizer step"} <= set(labels)
    if kind == "mlp":       # the three Linear layers: one chain, one kernel call each way
        assert "forward 0: Linear + 1: ReLU + 2: Linear + 3: ReLU + 4: Linear" in labels
        assert backward == ["4: Linear + 3: ReLU + 2: Linear + 1: ReLU + 0: Linear"]
    seconds = dict(rows)
    assert all(s > 0 for label, s in rows if label != "between phases (the loop itself)")
    assert seconds["between phases (the loop itself)"] >= 0
    assert np.isclose(sum(s for _, s in rows[:-1]), seconds["total"])


def test_profile_script_prints_the_table(capsys):
    assert profiling.main(["--model", "mlp", "--batch", "8", "--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# one training step of the mlp model, batch 8")
    assert "optimizer step" in out and out.rstrip().splitlines()[-1].startswith("total")


def test_profile_rejects_bad_arguments():
    with pytest.raises(ValueError, match="model must be"):
        profiling.profile_step("rnn")
    with pytest.raises(ValueError, match="batch_size and steps"):
        profiling.profile_step("mlp", batch_size=0)
