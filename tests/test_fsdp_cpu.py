"""Two CPU processes under ``accelerate launch --config_file configs/accelerate/fsdp.yaml``.

On a machine without GPUs accelerate 1.15/1.16 does not enable FSDP (its FSDP switch covers
accelerator devices only); :func:`saferlhf.distributed.cpu_multiprocess_launch` makes the
trainers join the two processes with gloo instead (data parallel), so the contract command
line runs as one 2-process job rather than two independent runs writing the same files.
These tests check that: one metrics record per step, epochs advancing at the 2-process rate,
checkpoints that resume, and final folders that ``from_pretrained`` loads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from saferlhf.cli import main

ROOT = Path(__file__).resolve().parents[1]
FSDP = ROOT / "configs" / "accelerate" / "fsdp.yaml"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(FSDP), "--num_processes", "2",
           "--main_process_port", str(_port()), "-m", "saferlhf.cli", *args]
    proc = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fsdp_cpu")
    assert main(["world", "generate", "--out", str(root / "world"), "--n-sft", "64", "--n-pairs-train", "64",
                 "--n-pairs-eval", "16", "--n-prompts-train", "32", "--n-eval-benign", "8",
                 "--n-eval-harmful", "8"]) == 0
    return root


@pytest.fixture(scope="module")
def sft(world) -> Path:
    out = world / "sft"
    launch("sft", "--model", "tiny", "--tokenizer", str(world / "world/tokenizer"), "--data",
           str(world / "world/sft.jsonl"), "--out", str(out), "--max-steps", "4", "--batch-size", "8",
           "--save-every", "2", "--progress", "false")
    return out


def test_sft_two_processes(sft):
    from transformers import AutoModelForCausalLM

    records = [json.loads(line) for line in (sft / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # one writer
    # 64 examples, 8 per process per step, 2 processes: a quarter of an epoch per step
    assert records[0]["train/epoch"] == pytest.approx(0.25)
    assert (sft / "COMPLETE").is_file() and (sft / "checkpoints/step-2/COMPLETE").is_file()
    # one schedule step per optimiser step (accelerate's prepared scheduler would step once per
    # process: a 4-step cosine then logged lr, 0, lr, ... on 2 processes)
    import torch

    from saferlhf.trainers.common import make_scheduler

    run = json.loads((sft / "run_config.json").read_text())
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=run["lr"])
    sched = make_scheduler(opt, kind=run["lr_scheduler"], total_steps=4, warmup_ratio=run["warmup_ratio"])
    expected = []
    for _ in range(4):
        opt.step()
        sched.step()
        expected.append(sched.get_last_lr()[0])
    assert [r["train/lr"] for r in records] == pytest.approx(expected)
    assert len(set(expected)) == 4
    # each process's RNG state is in the checkpoint (rank 1's was missing: save_state ran on rank 0 only)
    assert {p.name for p in (sft / "checkpoints/step-2").glob("random_states_*.pkl")} == {
        "random_states_0.pkl", "random_states_1.pkl"}
    model = AutoModelForCausalLM.from_pretrained(sft)
    assert model.config.num_hidden_layers == 2


def test_reward_model_two_processes(world, sft):
    from saferlhf.models.score_model import ScoreModel

    out = world / "rm"
    launch("reward-model", "--model", str(sft), "--data", str(world / "world/pairs_train.jsonl"), "--out",
           str(out), "--max-steps", "2", "--batch-size", "8", "--progress", "false")
    assert steps(out / "metrics.jsonl") == [1, 2]
    assert ScoreModel.from_pretrained(str(out)) is not None


@pytest.fixture(scope="module")
def score_models(world, sft) -> tuple[Path, Path]:
    rm, cm = world / "rm_inproc", world / "cm"
    for stage, out in (("reward-model", rm), ("cost-model", cm)):
        assert main([stage, "--model", str(sft), "--data", str(world / "world/pairs_train.jsonl"), "--out",
                     str(out), "--max-steps", "1", "--batch-size", "8", "--progress", "false"]) == 0
    return rm, cm


def test_c_dpo_two_processes(world, sft, score_models):
    # the DPO family under the same launch; c_dpo's dual steps gather both processes' samples
    from transformers import AutoModelForCausalLM

    out = world / "c_dpo"
    launch("dpo", "--algo", "c_dpo", "--model", str(sft), "--data", str(world / "world/pairs_train.jsonl"),
           "--reward-model", str(score_models[0]), "--cost-model", str(score_models[1]), "--out", str(out),
           "--max-steps", "2", "--batch-size", "4", "--lambda-every", "1", "--lambda-samples", "4",
           "--max-new-tokens", "4", "--progress", "false")
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2] and all("dual/J_C" in x for x in lines)
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    AutoModelForCausalLM.from_pretrained(out)


@pytest.mark.slow
def test_ppo_lag_two_processes_resumes(world, sft, score_models):
    from transformers import AutoModelForCausalLM

    rm = score_models[0]
    out = world / "rl"
    common = ["rl", "--algo", "ppo_lag", "--policy", str(sft), "--reward-model", str(rm), "--cost-model",
              str(world / "cm"), "--prompts", str(world / "world/prompts_train.jsonl"), "--out", str(out),
              "--rollout-batch-size", "4", "--mini-batch-size", "4", "--max-new-tokens", "6",
              "--save-every", "1", "--progress", "false"]
    launch(*common, "--iterations", "2")  # checkpoints step 1 (the last iteration is not checkpointed)
    assert steps(out / "metrics.jsonl") == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-1"]
    # resumes from step 1: step 2 is logged again (its first record dropped), then step 3
    launch(*common, "--iterations", "3", "--resume")
    assert steps(out / "metrics.jsonl") == [1, 2, 3]
    assert (out / "checkpoints/step-2/COMPLETE").is_file()
    AutoModelForCausalLM.from_pretrained(out / "policy")
