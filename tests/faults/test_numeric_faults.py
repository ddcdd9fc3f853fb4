"""Numerical faults (issue 10, item 5) through the CLI: an infinite loss stops the run with the step and the
last good checkpoint (exit 1, one line), and the run resumes from that checkpoint. The NaN and fp16 cases
are in tests/test_engine_train.py (see docs/reliability.md)."""

import pytest

from fault_support import checkpoints, run_cli, train_args, write_image_folder

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("bad", [float("inf"), float("-inf")])
def test_infinite_loss_stops_cleanly_and_the_run_resumes(tmp_path, capsys, monkeypatch, bad):
    from irface.heads.partial_fc import PartialFC

    data = write_image_folder(tmp_path / "faces")
    real, calls = PartialFC.forward, {"n": 0}

    def forward(self, emb, labels):  # the 5th step's loss is infinite
        calls["n"] += 1
        loss = real(self, emb, labels)
        return loss + bad if calls["n"] == 5 else loss

    monkeypatch.setattr(PartialFC, "forward", forward)
    run = tmp_path / "run"
    code, _, err = run_cli(train_args(run, data, checkpoint_every=2), capsys)
    assert code == 1 and len(err) == 1, err
    assert err[0].startswith("irface train: stopped: step 5 (epoch 1): the loss is ")
    assert f"the last good checkpoint is {run / 'checkpoint-e0001-s00000004.pt'}" in err[0]
    assert checkpoints(run) == ["checkpoint-e0001-s00000002.pt", "checkpoint-e0001-s00000004.pt"]
    monkeypatch.undo()
    code, _, err = run_cli(train_args(run, data, checkpoint_every=2, resume="auto", max_steps=6), capsys)
    assert code == 0, err
    assert checkpoints(run)[-1] == "checkpoint-e0001-s00000006.pt"
    assert "resumed from" in (run / "train.log").read_text()
