"""Crash safety of the supervised trainers: exact resume after SIGKILL, atomic checkpoints,
NaN/inf stops that name the step and the metric, and bad records that never abort a run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saferlhf.cli import main
from saferlhf.config import parse_args
from saferlhf.config.stages import SFTConfig
from saferlhf.trainers.common import (
    NonFiniteLossError,
    TrainerState,
    latest_checkpoint,
    load_training_checkpoint,
    make_accelerator,
)

SFT_ARGS = ["--model", "tiny", "--tiny-hidden", "32", "--tiny-layers", "1", "--batch-size", "8",
            "--lr", "3e-3", "--progress", "false", "--log-every", "1000"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    assert main(["world", "generate", "--out", str(out), "--seed", "5", "--noise", "0.1", "--n-sft", "200",
                 "--n-pairs-train", "120", "--n-pairs-eval", "40", "--n-prompts-train", "20",
                 "--n-eval-benign", "10", "--n-eval-harmful", "10"]) == 0
    return out


def _sft_argv(world: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--data", str(world / "sft.jsonl"), "--tokenizer", str(world / "tokenizer"),
            "--out", str(out), *SFT_ARGS, *extra]


def test_sigkill_then_resume_matches_uninterrupted_run(world, tmp_path):
    steps = "150"
    # The run that gets killed: a separate process, SIGKILLed once a checkpoint is complete.
    killed = tmp_path / "killed"
    env = dict(os.environ, SAFERLHF_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "saferlhf.cli",
                             *_sft_argv(world, killed, "--max-steps", steps, "--save-every", "5")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(killed) is None:
            assert proc.poll() is None, "the run ended before writing a checkpoint"
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists()  # it never finished
    at = int(latest_checkpoint(killed).name.split("-")[1])
    assert 5 <= at < int(steps)

    # Resume in this process and finish; then the same run without interruption.
    assert main(_sft_argv(world, killed, "--max-steps", steps, "--save-every", "5", "--resume")) == 0
    straight = tmp_path / "straight"
    assert main(_sft_argv(world, straight, "--max-steps", steps)) == 0

    a = load_file(straight / "model.safetensors")
    b = load_file(killed / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=f"weight {k} differs after resume")
    # metrics.jsonl of the resumed run: every step exactly once (the killed run's extra steps dropped)
    logged = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    train_steps = [s for s in logged if s]
    assert sorted(set(train_steps)) == list(range(1, int(steps) + 1))
    assert len([s for s in logged]) == len(
        [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()])


def test_half_written_checkpoints_are_ignored(tmp_path):
    root = tmp_path / "checkpoints"
    complete = root / "step-6"
    complete.mkdir(parents=True)
    TrainerState(step=6, micro_step=6).save(complete / "trainer_state.json")
    (complete / "COMPLETE").write_text("done")
    (root / "step-8").mkdir()  # killed before the marker: incomplete
    (root / "step-8" / "trainer_state.json").write_text("{}")
    (root / ".tmp-step-10-1234").mkdir()  # killed mid-save: still under its temporary name
    (root / ".tmp-step-10-1234" / "COMPLETE").write_text("done")
    (root / "step-x").mkdir()  # not ours
    assert latest_checkpoint(tmp_path) == complete
    assert latest_checkpoint(tmp_path / "nothing-here") is None
    (complete / "COMPLETE").unlink()
    assert latest_checkpoint(tmp_path) is None
    assert load_training_checkpoint(make_accelerator("fp32"), tmp_path) is None


def test_resume_without_a_checkpoint_starts_fresh(world, tmp_path, capsys):
    out = tmp_path / "fresh"
    assert main(_sft_argv(world, out, "--max-steps", "3", "--resume")) == 0
    assert "no complete checkpoint" in capsys.readouterr().out
    assert (out / "model.safetensors").exists()


def test_huge_learning_rate_stops_naming_step_and_metric(world, tmp_path, capsys):
    # The CLI turns NonFiniteLossError into a message and exit code 1 (no traceback).
    assert main(_sft_argv(world, tmp_path / "nan", "--max-steps", "40", "--lr", "1e6")) == 1
    assert re.search(r"step \d+: metric '(loss|grad_norm)' is (nan|inf)", capsys.readouterr().err)
    assert not (tmp_path / "nan" / "model.safetensors").exists()


def test_injected_inf_loss_stops_before_the_update(world, tmp_path, monkeypatch):
    from saferlhf.trainers import sft

    real = sft.sft_step
    calls = {"n": 0}
    seen = {}

    def step(model, batch):
        calls["n"] += 1
        loss, metrics = real(model, batch)
        if calls["n"] == 4:
            seen["weights"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
            seen["model"] = model
            return loss * float("inf"), metrics
        return loss, metrics

    monkeypatch.setattr(sft, "sft_step", step)
    with pytest.raises(NonFiniteLossError, match=r"step 4: metric 'loss' is inf"):
        sft.run_sft(parse_args(SFTConfig, _sft_argv(world, tmp_path / "inf", "--max-steps", "10")[1:]))
    after = seen["model"].state_dict()
    assert all(torch.equal(after[k], v) for k, v in seen["weights"].items())  # never applied


def test_contradictory_labels_follow_the_bad_record_policy(world, tmp_path, caplog, capsys):
    """Pairs whose safer response is the one labelled unsafe are skipped and counted (default),
    or stop the run before training with ``--on-bad-record error``; never mid-epoch."""
    from saferlhf.data import DataError

    sft_dir = tmp_path / "sft"
    assert main(_sft_argv(world, sft_dir, "--max-steps", "2")) == 0
    rows = [json.loads(line) for line in (world / "pairs_train.jsonl").read_text().splitlines()]
    bad = 0
    for r in rows[:40]:  # make the first 40 contradictory: safer one labelled unsafe, other safe
        s = r["safer_response_id"]
        r[f"is_response_{s}_safe"], r[f"is_response_{1 - s}_safe"] = False, True
        bad += 1
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    caplog.clear()
    out = tmp_path / "cm"
    with caplog.at_level("WARNING", logger="saferlhf.data"):
        # label noise, not malformed lines: --max-bad-fraction does not count it (any value passes)
        assert main(["cost-model", "--model", str(sft_dir), "--data", str(data), "--out", str(out),
                     "--max-steps", "6", "--batch-size", "8", "--progress", "false",
                     "--max-bad-fraction", "0.5"]) == 0
    m = re.search(r"loaded (\d+) of (\d+) records; skipped (\d+) \(contradictory_labels: (\d+)\)", caplog.text)
    assert m, caplog.text[:500]
    loaded, total, skipped, contradictory = map(int, m.groups())
    assert total == len(rows) and loaded + skipped == total and contradictory >= bad
    assert (out / "score_head.safetensors").exists() and (out / "metrics.jsonl").exists()
    capsys.readouterr()
    strict = ["cost-model", "--model", str(sft_dir), "--data", str(data), "--out", str(tmp_path / "cm2"),
              "--max-steps", "6", "--on-bad-record", "error", "--progress", "false"]
    assert main(strict) == 2  # the CLI names the record and stops before training
    assert "line 1" in capsys.readouterr().err and not (tmp_path / "cm2" / "metrics.jsonl").exists()
    from saferlhf.config import parse_args
    from saferlhf.config.stages import CostModelConfig
    from saferlhf.trainers.score import run_cost_model

    with pytest.raises(DataError, match="line 1"):
        run_cost_model(parse_args(CostModelConfig, strict[1:]))


def test_tensorboard_event_files(world, tmp_path):
    out = tmp_path / "tb"
    assert main(_sft_argv(world, out, "--max-steps", "3", "--report-to", "tensorboard", "--log-every", "1")) == 0
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "train/loss" in tags and len(acc.Scalars("train/loss")) == 3
