"""A toy constrained task for the RL trainer tests (known reward and cost functions).

The vocabulary has two content words that matter: ``a`` (helpful) and ``b`` (more helpful,
but harmful). The reward counts them, ``R = #a + 2·#b``, the cost counts the harmful one,
``C = #b``; the budget ``d = 1`` allows about one ``b`` per response. A randomly initialised
tiny policy (≈ uniform over the vocabulary, ``#b ≈ 0.4`` per response) starts inside the
budget. Reward-only PPO fills responses with ``b`` (C → max_new_tokens), so the constraint
binds: a Lagrangian method must keep ``#b`` near or under 1 while it still raises the
reward with ``a`` (``b`` is worth ``2 − λ`` against 1 for ``a`` in the Lagrangian, so λ
must settle near 1). Scores are read from the token ids, so no tokenizer round trip is
involved.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from saferlhf.config.stages import LagrangeConfig, RLConfig
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_gpt2, tiny_llama

CONTENT = ["a", "b", "c", "d", "e", "f", "g", "h"]
PROMPT_WORDS = ["p", "q", "r", "s", "t", "u"]
BUDGET = 1.0


def make_tokenizer():
    return build_word_level_tokenizer(CONTENT + PROMPT_WORDS)


def make_policy_dir(root: Path, kind: str = "llama", seed: int = 0) -> Path:
    """A randomly initialised tiny policy (2 layers, 64 hidden) saved with its tokenizer."""
    tok = make_tokenizer()
    build = tiny_llama if kind == "llama" else tiny_gpt2
    model = build(tok, hidden_size=64, num_layers=2, num_heads=4, seed=seed)
    out = Path(root) / f"policy-{kind}-{seed}"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def make_prompts_file(root: Path, n: int = 48, seed: int = 0, name: str = "prompts.jsonl") -> Path:
    """``n`` distinct prompts of 1–5 words (mixed lengths: left padding in every batch)."""
    g = torch.Generator().manual_seed(seed)
    seen: set[str] = set()
    out = Path(root) / name
    with out.open("w") as fh:
        while len(seen) < n:
            k = int(torch.randint(1, 6, (1,), generator=g))
            words = [PROMPT_WORDS[int(i)] for i in torch.randint(0, len(PROMPT_WORDS), (k,), generator=g)]
            text = " ".join(words)
            if text not in seen:
                seen.add(text)
                fh.write(json.dumps({"prompt": text}) + "\n")
    return out


def _counts(batch, word: str) -> torch.Tensor:
    tok_id = _ID_CACHE.setdefault(word, make_tokenizer().convert_tokens_to_ids(word))
    resp = batch.responses
    return ((resp == tok_id) & batch.response_mask.bool()).sum(-1).float()


_ID_CACHE: dict[str, int] = {}


def reward_fn(batch, prompts, texts) -> torch.Tensor:
    """R = #a + 2·#b."""
    return _counts(batch, "a") + 2.0 * _counts(batch, "b")


def cost_fn(batch, prompts, texts) -> torch.Tensor:
    """C = #b."""
    return _counts(batch, "b")


def toy_config(policy: Path, prompts: Path, out: Path, **overrides) -> RLConfig:
    """An RL config sized for the toy task (a few seconds per run on two cores)."""
    lag = overrides.pop("lagrange", {})
    cfg = {
        "algo": "ppo_lag",
        "policy": str(policy),
        "reward_model": "<reward_fn>",
        "cost_model": "<cost_fn>",
        "prompts": str(prompts),
        "out": str(out),
        "budget": BUDGET,
        "iterations": 40,
        "rollout_batch_size": 32,
        "n_samples": 1,
        "mini_batch_size": 16,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "temperature": 1.0,
        "kl_coeff": 0.5,
        "actor_lr": 3e-3,
        "critic_lr": 3e-3,
        "critic_init": "policy",
        "precision": "fp32",
        "progress": False,
        "log_every": 1000,
        "seed": 0,
        "lagrange": LagrangeConfig(**{"rule": "log_sgd", "init": 0.5, "lr": 0.1, "max_lambda": 10.0,
                                       "window": 64, **lag}),
    }
    cfg.update(overrides)
    return RLConfig(**cfg)


def mean_of(history: list[dict], key: str, last: int | None = None, first: int | None = None) -> float:
    vals = [h[key] for h in history if key in h]
    if last is not None:
        vals = vals[-last:]
    if first is not None:
        vals = vals[:first]
    return sum(vals) / len(vals)


# ----------------------------------------------------------------------------- 2-process worker


def distributed_worker(rank: int, world_size: int, port: int, root: str) -> None:
    """One rank of the 2-process CPU test (``torch.multiprocessing.spawn`` target).

    Sets the torch.distributed environment, builds ``Accelerator(cpu=True)`` (gloo), runs 3
    iterations of ppo_lag with ``save_every=2`` and writes what it saw to
    ``root/rank{rank}.json``: its prompts and local costs per iteration, J_C and λ per
    iteration, which ranks called ``save_state`` / wrote final artefacts, and a checksum of
    its policy weights.
    """
    import os

    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(rank),
                       "LOCAL_WORLD_SIZE": str(world_size), "HF_HUB_OFFLINE": "1",
                       "TOKENIZERS_PARALLELISM": "false"})
    torch.set_num_threads(1)
    import warnings

    warnings.filterwarnings("ignore")
    from accelerate import Accelerator

    from saferlhf.trainers import rl

    acc = Accelerator(cpu=True)
    root_p = Path(root)
    seen = {"prompts": [], "local_costs": [], "save_state_calls": 0, "save_calls": 0}

    def costs(batch, prompts, texts):
        c = cost_fn(batch, prompts, texts)
        seen["local_costs"].append(c.tolist())
        return c

    original_save_state = acc.save_state

    def save_state(*a, **k):
        seen["save_state_calls"] += 1
        return original_save_state(*a, **k)

    acc.save_state = save_state
    original_save_policy = rl.save_policy

    def save_policy(*a, **k):
        seen["save_calls"] += 1
        return original_save_policy(*a, **k)

    rl.save_policy = save_policy
    cfg = toy_config(root_p / "policy-llama-0", root_p / "prompts.jsonl", root_p / "out", iterations=3,
                     save_every=2, rollout_batch_size=8, mini_batch_size=8, max_new_tokens=6)
    trainer = rl.SafeRLTrainer(cfg, accelerator=acc, reward_fn=reward_fn, cost_fn=costs)
    indices_of = trainer._prompt_indices  # what the loop calls to pick each rollout batch's prompts

    def prompt_indices(iteration):
        idx = indices_of(iteration)
        seen["prompts"].append([trainer.prompts[i] for i in idx])
        return idx

    trainer._prompt_indices = prompt_indices
    hist = trainer.train()["history"]
    params = acc.unwrap_model(trainer.policy).state_dict()
    checksum = float(sum(v.double().sum() for v in params.values()))
    result = {"rank": rank, "num_processes": acc.num_processes, "distributed_type": str(acc.distributed_type),
              "J_C": [h["J_C"] for h in hist], "lambda": [h["lambda"] for h in hist],
              "cost_logged": [h["cost"] for h in hist], "checksum": checksum, **seen}
    (root_p / f"rank{rank}.json").write_text(json.dumps(result))
    acc.wait_for_everyone()
    acc.end_training()
