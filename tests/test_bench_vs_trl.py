"""The speed work of the TRL comparison (issue 19) keeps results, and the benchmark runs.

* ``make_optimizer``'s multi-tensor AdamW updates bit for bit as the per-parameter loop did;
* a rollout batch used by one update (grpo_lag, one epoch, one mini-batch) takes its old
  log-probs from the update's own forward: no separate forward, the same training up to
  float rounding, and the ratio check still runs every ``log_every`` iterations;
* ``benchmarks/vs_trl.py --quick`` writes the JSON contract (skipped without TRL).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import rl_toy as T
import torch

from saferlhf.models.tiny import build_word_level_tokenizer, tiny_llama
from saferlhf.trainers.common import make_optimizer
from saferlhf.trainers.rl import ALGOS, SafeRLTrainer, reuses_training_logprobs

ROOT = Path(__file__).resolve().parents[1]


def _train_steps(model, opt, steps: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randint(4, model.config.vocab_size, (4, 12), generator=g)
        model(input_ids=x, labels=x).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


def test_make_optimizer_is_bit_identical_to_the_per_parameter_loop():
    tok = build_word_level_tokenizer([f"w{i}" for i in range(40)])
    base = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    opt_a = make_optimizer(a.parameters(), lr=1e-2, weight_decay=0.1)
    assert all(g["foreach"] for g in opt_a.param_groups)
    loop_groups = [{"params": [p for p in b.parameters() if p.ndim >= 2], "weight_decay": 0.1},
                   {"params": [p for p in b.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    opt_b = torch.optim.AdamW(loop_groups, lr=1e-2, betas=(0.9, 0.95), eps=1e-8, foreach=False)
    after_a, after_b = _train_steps(a, opt_a), _train_steps(b, opt_b)
    assert any(not torch.equal(x, y) for x, y in zip(after_a, base.parameters()))  # it trained
    assert all(torch.equal(x, y) for x, y in zip(after_a, after_b))


# ----------------------------------------------------------------------------- old log-probs


def test_reuse_only_where_the_batch_is_used_once():
    cfg = T.toy_config(Path("p"), Path("q"), Path("o"), algo="grpo_lag", rollout_batch_size=8, n_samples=4,
                       mini_batch_size=32, log_every=10)
    grpo = ALGOS["grpo_lag"]
    assert reuses_training_logprobs(cfg, grpo, 32, 1)
    assert not reuses_training_logprobs(cfg, grpo, 32, 0)  # the ratio check iterations
    assert not reuses_training_logprobs(cfg, grpo, 32, 20)
    assert not reuses_training_logprobs(cfg, ALGOS["ppo_lag"], 32, 1)  # the KL is in the reward stream
    two_mb = T.toy_config(Path("p"), Path("q"), Path("o"), algo="grpo_lag", rollout_batch_size=8, n_samples=4,
                          mini_batch_size=16, log_every=10)
    assert not reuses_training_logprobs(two_mb, grpo, 32, 1)  # the policy moves between mini-batches
    two_ep = T.toy_config(Path("p"), Path("q"), Path("o"), algo="grpo_lag", rollout_batch_size=8, n_samples=4,
                          mini_batch_size=32, ppo_epochs=2, log_every=10)
    assert not reuses_training_logprobs(two_ep, grpo, 32, 1)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("reuse")
    return {"root": root, "policy": T.make_policy_dir(root), "prompts": T.make_prompts_file(root)}


def _grpo(toy, name: str, log_every: int) -> SafeRLTrainer:
    cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / name, algo="grpo_lag", iterations=3,
                       rollout_batch_size=8, n_samples=4, mini_batch_size=32, log_every=log_every, actor_lr=3e-3)
    return SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)


def test_grpo_single_update_reuses_the_training_forward(toy):
    reuse, every = _grpo(toy, "reuse", log_every=2), _grpo(toy, "every", log_every=1)
    inference_calls: list[bool] = []

    def hook(module, args, kwargs):
        if torch.is_inference_mode_enabled() and not generating[0]:
            inference_calls.append(True)

    generating = [False]
    generate = reuse.backend.generate

    def counted_generate(*a, **k):
        generating[0] = True
        try:
            return generate(*a, **k)
        finally:
            generating[0] = False

    reuse.backend.generate = counted_generate
    h = reuse.policy.register_forward_pre_hook(hook, with_kwargs=True)
    hist_reuse, calls = [], []
    try:
        for _ in range(3):
            inference_calls.clear()
            hist_reuse.append(reuse.train_step())
            calls.append(len(inference_calls))
    finally:
        h.remove()
    hist_every = [every.train_step() for _ in range(3)]
    assert calls == [1, 0, 1]  # iterations 0 and 2 check the ratio, iteration 1 reuses
    assert ["train/ratio_first_minibatch_max_dev" in h for h in hist_reuse] == [True, False, True]
    assert all(h["train/ratio_first_minibatch_max_dev"] <= 1e-5 for h in hist_every)
    for a, b in zip(hist_reuse, hist_every):  # the same run, up to float rounding
        for k in ("reward", "cost", "kl", "kl_token", "lambda", "train/policy_loss", "train/kl_k3"):
            assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6), k
    assert hist_reuse[1]["kl"] > 0  # the policy moved after the first update
    for p, q in zip(reuse.policy.parameters(), every.policy.parameters()):
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the benchmark


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL not installed (pip install -e '.[bench]')")
def test_vs_trl_quick_writes_the_contract(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    sys.modules.pop("vs_trl", None)
    import vs_trl

    result = vs_trl.main(["--quick", "--out", str(tmp_path)])
    on_disk = json.loads((tmp_path / "vs_trl.json").read_text())
    assert on_disk["threads"] == result["threads"] == 1
    rows = {r["stage"]: r for r in on_disk["rows"]}
    assert set(rows) == {"sft", "reward", "dpo", "grpo"}
    for stage, row in rows.items():
        if row.get("skipped"):
            assert stage == "dpo" and vs_trl.dpo_available() is not None
            continue
        assert row["unit"] == ("it/s" if stage == "grpo" else "tok/s")
        assert row["saferlhf"] > 0 and row["trl"] > 0 and row["raw"] > 0
        assert row["ratio"] == pytest.approx(row["saferlhf"] / row["trl"])
        assert row["detail"]["saferlhf"]["peak_rss_mib"] > 0
    assert on_disk["ppo_lag_over_ppo"] > 0
    assert "| sft |" in (tmp_path / "vs_trl.md").read_text()
