"""Two CPU processes (torch.distributed with gloo through ``Accelerator(cpu=True)``).

Each rank samples its own prompts; the multiplier's window gathers every rank's episode costs,
so both ranks compute the same J_C (the mean over all of them) and hold the same λ; DDP keeps
the policies identical; checkpoints are collective (each rank's RNG state), final artefacts rank 0's.
"""

from __future__ import annotations

import json
import socket

import rl_toy as T
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_share_j_c_and_lambda_and_only_rank0_writes(tmp_path):
    T.make_policy_dir(tmp_path)
    T.make_prompts_file(tmp_path)
    mp.spawn(T.distributed_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["num_processes"] == r1["num_processes"] == 2
    assert "MULTI_CPU" in r0["distributed_type"]

    # Different prompts on the two ranks, at every iteration (3 rollout batches recorded each).
    assert len(r0["prompts"]) == len(r1["prompts"]) == 3
    for p0, p1 in zip(r0["prompts"], r1["prompts"], strict=True):
        assert set(p0).isdisjoint(p1), (p0, p1)

    # The same all-reduced J_C and λ on both ranks; J_C is the mean over both ranks' costs
    # (the 64-episode window holds all 3 × 16 episodes here).
    assert r0["J_C"] == r1["J_C"] and r0["lambda"] == r1["lambda"]
    pooled: list[float] = []
    for it in range(3):
        pooled += r0["local_costs"][it] + r1["local_costs"][it]
        assert abs(r0["J_C"][it] - sum(pooled) / len(pooled)) < 1e-9
        both = r0["local_costs"][it] + r1["local_costs"][it]
        assert abs(r0["cost_logged"][it] - sum(both) / len(both)) < 1e-6  # logged cost is global too
    assert r0["local_costs"] != r1["local_costs"] or r0["prompts"] != r1["prompts"]

    # DDP: one update, identical weights.
    assert abs(r0["checksum"] - r1["checksum"]) < 1e-6

    # The checkpoint is collective: both ranks save their state (each its own RNG state, which
    # rank 0 alone would leave out); rank 0 alone writes the model, the counters and the final policy.
    assert r0["save_state_calls"] == 1 and r1["save_state_calls"] == 1
    assert r0["save_calls"] == 1 and r1["save_calls"] == 0
    ckpt = tmp_path / "out" / "checkpoints"
    assert [p.name for p in ckpt.iterdir()] == ["step-2"] and (ckpt / "step-2" / "COMPLETE").is_file()
    assert {p.name for p in (ckpt / "step-2").glob("random_states_*.pkl")} == {"random_states_0.pkl",
                                                                              "random_states_1.pkl"}
    assert len(list((ckpt / "step-2").glob("model*.safetensors"))) == 3  # policy + 2 critics, written once
    assert (tmp_path / "out" / "policy" / "COMPLETE").is_file()
