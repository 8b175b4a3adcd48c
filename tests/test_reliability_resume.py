"""Ownership of --out, resume and checkpoints under faults: a second run on the same --out
fails fast naming the lock holder; a finished run is never replaced without --resume /
--overwrite; resume refuses changed fixed keys and applies (and records) the mutable ones; a
kill between a checkpoint's tensors and its marker, a corrupt checkpoint with its marker, a
failed save (disk full) and a tampered RNG file all keep the good data."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from saferlhf.cli import main
from saferlhf.io import is_complete
from saferlhf.runlock import LOCK_FILE
from saferlhf.trainers.common import latest_checkpoint

TINY = ["--model", "tiny", "--tiny-hidden", "32", "--tiny-layers", "1", "--batch-size", "8",
        "--progress", "false", "--log-every", "1000"]
SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world") / "w"
    assert main(["world", "generate", "--out", str(out), "--seed", "4", "--n-sft", "64", "--n-pairs-train", "16",
                 "--n-pairs-eval", "8", "--n-prompts-train", "8", "--n-eval-benign", "4",
                 "--n-eval-harmful", "4"]) == 0
    return out


def _sft(world: Path, out: Path, *extra: str) -> list[str]:
    return ["sft", "--data", str(world / "sft.jsonl"), "--tokenizer", str(world / "tokenizer"),
            "--out", str(out), *TINY, *extra]


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""),
                SAFERLHF_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")


def _cli(argv: list[str], preamble: str = "", **kw) -> subprocess.Popen:
    """The CLI in a child process, after ``preamble`` (a fault injected by monkeypatching)."""
    code = textwrap.dedent(preamble) + f"\nfrom saferlhf.cli import main\nraise SystemExit(main({argv!r}))\n"
    return subprocess.Popen([sys.executable, "-c", code], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(out / "model.safetensors")


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def straight(world, tmp_path_factory) -> Path:
    """The uninterrupted reference run: 6 steps, checkpoints every 2."""
    out = tmp_path_factory.mktemp("straight") / "run"
    assert main(_sft(world, out, "--max-steps", "6", "--save-every", "2")) == 0
    return out


# ----------------------------------------------------------------------------- --out ownership


def test_second_concurrent_run_fails_fast_naming_the_lock_holder(world, tmp_path):
    out = tmp_path / "shared"
    first = _cli(_sft(world, out, "--max-steps", "100000"))
    try:
        deadline = time.monotonic() + 120
        while not (out / LOCK_FILE).exists():
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        t0 = time.monotonic()
        second = _cli(_sft(world, out, "--max-steps", "2"))
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert f"pid {first.pid}" in err and "in use" in err and "Traceback" not in err
        assert time.monotonic() - t0 < 60  # failed at the start, not after training
        assert first.poll() is None  # the first run goes on
    finally:
        first.kill()
        first.communicate()


def test_stale_lock_of_a_dead_process_is_taken_over(world, tmp_path, capsys):
    out = tmp_path / "stale"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_FILE).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "stage": "sft"}))
    assert main(_sft(world, out, "--max-steps", "1")) == 0
    assert "stale lock" in capsys.readouterr().err
    assert not (out / LOCK_FILE).exists()


def test_finished_run_is_not_overwritten_without_resume_or_overwrite(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_sft(world, out, "--max-steps", "4", "--save-every", "2")) == 0
    before = _weights(out)
    capsys.readouterr()
    rc = main(_sft(world, out, "--max-steps", "2", "--lr", "1e-2"))
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and "--overwrite" in err and "COMPLETE" in err
    assert _same(before, _weights(out)) and is_complete(out)
    # --overwrite replaces it and removes the old checkpoints (step-2 of the old run is gone)
    assert main(_sft(world, out, "--max-steps", "1", "--overwrite")) == 0
    assert not (out / "checkpoints").exists()
    assert json.loads((out / "run_config.json").read_text())["max_steps"] == 1


def test_resume_refuses_changed_fixed_keys_and_records_applied_ones(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_sft(world, out, "--max-steps", "2", "--save-every", "1")) == 0
    before = _weights(out)
    capsys.readouterr()
    rc = main(_sft(world, out, "--max-steps", "4", "--save-every", "1", "--resume", "--lr", "0.5",
                   "--batch-size", "4"))
    err = capsys.readouterr().err
    assert rc == 2 and "lr: 0.002 -> 0.5" in err and "batch_size: 8 -> 4" in err and "Traceback" not in err
    assert _same(before, _weights(out))
    assert json.loads((out / "run_config.json").read_text())["lr"] == 0.002  # nothing unapplied recorded
    # a mutable key: applied (4 steps) and recorded
    assert main(_sft(world, out, "--max-steps", "4", "--save-every", "1", "--resume")) == 0
    assert "max_steps 2 -> 4" in capsys.readouterr().err
    assert json.loads((out / "run_config.json").read_text())["max_steps"] == 4
    assert json.loads((out / "saferlhf.json").read_text())["steps"] == 4


# ----------------------------------------------------------------------------- checkpoints


def test_kill_between_tensors_and_marker_resumes_to_identical_weights(world, straight, tmp_path):
    out = tmp_path / "killed"
    # SIGKILL inside the step-4 save: after accelerate wrote the tensors, before the COMPLETE marker.
    kill = """
        import os, signal
        import saferlhf.trainers.common as common
        _save = common.TrainerState.save
        def save(self, path):
            if self.step == 4:
                os.kill(os.getpid(), signal.SIGKILL)
            _save(self, path)
        common.TrainerState.save = save
    """
    proc = _cli(_sft(world, out, "--max-steps", "6", "--save-every", "2"), kill)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL
    assert latest_checkpoint(out).name == "step-2"
    leftovers = list((out / "checkpoints").glob(".tmp-step-4-*"))
    assert leftovers and (leftovers[0] / "model.safetensors").exists()  # tensors written, no marker
    assert not is_complete(out) and not (out / "model.safetensors").exists()

    assert main(_sft(world, out, "--max-steps", "6", "--save-every", "2", "--resume")) == 0
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert _same(_weights(straight), _weights(out))


def test_corrupt_checkpoint_with_marker_falls_back_to_the_previous(world, straight, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "COMPLETE").unlink()  # as if killed after the step-4 checkpoint
    (out / "model.safetensors").unlink()
    ckpt = out / "checkpoints" / "step-4"
    assert is_complete(ckpt)
    w = ckpt / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="corrupt"):
        assert main(_sft(world, out, "--max-steps", "6", "--save-every", "2", "--resume")) == 0
    captured = capsys.readouterr()
    assert "step-4" in captured.err and "falling back" in captured.err
    assert "resumed from step 2" in captured.out
    assert _same(_weights(straight), _weights(out))


def test_failed_checkpoint_save_keeps_the_previous_and_stops_clearly(world, tmp_path):
    out = tmp_path / "full"
    full = """
        import errno
        import saferlhf.trainers.resume as resume
        _real = resume.save_optimizer_safetensors
        def save(folder):
            if "step-4" in str(folder):
                raise OSError(errno.ENOSPC, "No space left on device", str(folder) + "/optimizer.safetensors")
            return _real(folder)
        resume.save_optimizer_safetensors = save
    """
    proc = _cli(_sft(world, out, "--max-steps", "6", "--save-every", "2"), full)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    assert "Traceback" not in err
    assert "No space left on device" in err and "step-2" in err and "intact" in err
    assert latest_checkpoint(out).name == "step-2"
    assert not (out / "checkpoints" / "step-4").exists()
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert not is_complete(out) and not (out / "model.safetensors").exists()
    assert not (out / LOCK_FILE).exists()


class _Evil:
    def __reduce__(self):
        return (print, ("UNSAFE CODE RAN",))


def test_tampered_rng_state_is_a_visible_warning(world, straight, tmp_path, capsys):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "COMPLETE").unlink()
    for ckpt in (out / "checkpoints").iterdir():
        (ckpt / "random_states_0.pkl").write_bytes(pickle.dumps({"step": 0, "torch_manual_seed": _Evil()}))
    capsys.readouterr()
    with pytest.warns(UserWarning, match="random_states_0.pkl"):
        assert main(_sft(world, out, "--max-steps", "6", "--save-every", "2", "--resume")) == 0
    captured = capsys.readouterr()
    assert "UNSAFE CODE RAN" not in captured.out + captured.err
    assert "random_states_0.pkl" in captured.err and "tampered" in captured.err


def test_optimizer_state_is_stored_as_safetensors(straight):
    ckpt = latest_checkpoint(straight)
    assert (ckpt / "optimizer.safetensors").is_file() and (ckpt / "optimizer.json").is_file()
    assert not (ckpt / "optimizer.bin").exists()


def test_optimizer_state_round_trip():
    from saferlhf.trainers.resume import _join, _split

    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, betas=(0.9, 0.95))
    model(torch.ones(4, 3)).sum().backward()
    opt.step()
    state = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    back = _join(json.loads(json.dumps(_split(state, tensors, "s"))), tensors)
    assert back["param_groups"] == state["param_groups"]
    assert back["param_groups"][0]["betas"] == (0.9, 0.95)
    assert set(back["state"]) == {0, 1}
    for i in (0, 1):
        for k, v in state["state"][i].items():
            assert torch.equal(back["state"][i][k], v)


def test_save_failure_error_is_user_facing():
    from saferlhf.faults import user_message

    assert "no space left" in user_message(OSError(errno.ENOSPC, "No space left on device", "/o/x"))
    assert user_message(KeyError("bug")) is None
