"""Checkpoints of a 2-process CPU run (gloo): every rank's RNG state is saved and comes back on
resume, so rank 1 continues exactly as an uninterrupted run would (before, ``save_state`` ran
on rank 0 only and rank 1 resumed with whatever RNG state it had)."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _draw() -> list[float]:
    return [float(torch.rand(1)), float(np.random.rand()), random.random()]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank), "LOCAL_WORLD_SIZE": str(world)})
    torch.set_num_threads(1)
    from accelerate import Accelerator

    from saferlhf.trainers.common import (
        TrainerState,
        load_training_checkpoint,
        save_training_checkpoint,
    )

    acc = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, opt = acc.prepare(model, opt)
    torch.manual_seed(100 + rank)  # a different RNG stream on each rank, as in training
    np.random.seed(100 + rank)
    random.seed(100 + rank)
    _draw()
    save_training_checkpoint(acc, root, TrainerState(step=1, micro_step=1))
    after_save = _draw()  # what an uninterrupted run draws next
    torch.manual_seed(7)  # a restarted process: some other RNG state
    np.random.seed(7)
    random.seed(7)
    state = load_training_checkpoint(acc, root)
    after_resume = _draw()
    Path(root, f"rank{rank}.json").write_text(json.dumps(
        {"step": state.step, "after_save": after_save, "after_resume": after_resume}))
    acc.wait_for_everyone()
    acc.end_training()


def test_each_rank_resumes_its_own_rng_state(tmp_path):
    mp.spawn(_worker, args=(2, _port(), str(tmp_path)), nprocs=2, join=True)
    ckpt = tmp_path / "checkpoints" / "step-1"
    assert (ckpt / "COMPLETE").is_file() and not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert {p.name for p in ckpt.glob("random_states_*.pkl")} == {"random_states_0.pkl", "random_states_1.pkl"}
    r = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1)]
    for i in (0, 1):
        assert r[i]["step"] == 1
        assert r[i]["after_resume"] == r[i]["after_save"], f"rank {i}"
    assert r[0]["after_save"] != r[1]["after_save"]  # the ranks' streams differ: each needs its own file


def test_a_failed_save_keeps_the_previous_checkpoint_and_leaves_no_folder(tmp_path):
    import errno

    import pytest
    from accelerate import Accelerator

    from saferlhf.errors import CheckpointError
    from saferlhf.trainers.common import TrainerState, latest_checkpoint, save_training_checkpoint

    acc = Accelerator(cpu=True)
    layer = torch.nn.Linear(3, 1)
    acc.prepare(layer, torch.optim.AdamW(layer.parameters()))
    save_training_checkpoint(acc, tmp_path, TrainerState(step=1, micro_step=1))
    real = acc.save_state

    def full_disk(path, **kw):
        real(path, **kw)
        raise OSError(errno.ENOSPC, "No space left on device", path)

    acc.save_state = full_disk
    with pytest.raises(CheckpointError, match="step-2.*No space left on device.*step-1 is intact"):
        save_training_checkpoint(acc, tmp_path, TrainerState(step=2, micro_step=2))
    assert latest_checkpoint(tmp_path).name == "step-1"
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-1"]
