"""The Safe RLHF trainer (saferlhf.trainers.rl): learning on a toy task with known reward and
cost, the §5 conventions inside the loop, scorer re-tokenisation, the LoRA reference, one
forward pass per frozen model, observability and the CLI stages ``rl`` and ``budget``.

The toy task (tests/rl_toy.py): ``R = #a + 2·#b``, ``C = #b``, budget ``d = 1``. Reward-only
PPO fills responses with ``b``; a Lagrangian method must hold ``#b`` near 1 while it raises
the reward with ``a``. A method "ends within budget" when the mean cost of its last twenty
rollout batches (640 episodes, about one period of the λ–policy oscillation) is at most
``d + TOL``: a Lagrangian method holds ``J_C ≈ d`` on average, crossing it from both sides,
and TOL = 0.25 is two standard errors of the 64-episode window that λ reads (the per-episode
std of ``#b`` is about 1). Every run starts at λ₀ = 0.5, where ``b`` is still worth more than
``a``: a multiplier that stayed at λ₀ ends near C ≈ 2 on this task (measured), so these tests
fail when λ is not learned (they also check that λ rose). Measured on the reference machine
(last-20 mean cost): log_sgd 0.99, projected 1.03, pid 1.09, grpo_lag 0.86; PPO 5.8.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import rl_toy as T
import torch

from saferlhf.models.policy import forward_logprobs
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.tiny import (
    tiny_llama,
    toy_corpus,
    train_bpe_tokenizer,
)
from saferlhf.trainers.rl import ALGOS, RolloutTensors, SafeRLTrainer

TOL = 0.25
D = T.BUDGET


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("rl_toy")
    return {"root": root, "policy": T.make_policy_dir(root), "prompts": T.make_prompts_file(root)}


def _run(toy, name: str, **overrides) -> list[dict]:
    cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / name, **overrides)
    return SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn).train()["history"]


@pytest.fixture(scope="module")
def ppo_history(toy):
    return _run(toy, "ppo", algo="ppo", iterations=30)


# ----------------------------------------------------------------------------- learning


def test_ppo_lag_log_sgd_meets_budget_and_ppo_does_not(toy, ppo_history):
    lag = _run(toy, "ppo_lag", algo="ppo_lag", lagrange={"rule": "log_sgd", "lr": 0.2})
    cost_lag, cost_ppo = T.mean_of(lag, "cost", last=20), T.mean_of(ppo_history, "cost", last=10)
    assert cost_lag <= D + TOL, f"PPO-Lag ends over budget: C = {cost_lag:.2f} > {D} + {TOL}"
    assert T.mean_of(lag, "reward", last=10) > T.mean_of(lag, "reward", first=3) + 1.0, "reward did not rise"
    assert cost_ppo > D + 2.0, f"reward-only PPO should break the budget, C = {cost_ppo:.2f}"
    assert cost_ppo > cost_lag + 2.0
    # λ was learned: it moved off λ₀ and J_C is what the multiplier saw (window of 64 episodes).
    lams = [h["lambda"] for h in lag]
    assert max(lams) > 0.75 and lag[-1]["lambda_updated"] == 1.0
    assert all(math.isclose(h["J_C_minus_d"], h["J_C"] - D, abs_tol=1e-9) for h in lag)


@pytest.mark.parametrize(
    "name,overrides",
    [
        ("grpo_lag", {"algo": "grpo_lag", "rollout_batch_size": 8, "n_samples": 4, "actor_lr": 1e-3}),
        ("projected", {"algo": "ppo_lag", "lagrange": {"rule": "projected", "lr": 0.1}}),
        ("pid", {"algo": "ppo_lag", "lagrange": {"rule": "pid", "kp": 0.5, "ki": 0.1}}),
        ("shared_critic", {"algo": "ppo_lag", "critic_mode": "shared", "lagrange": {"rule": "projected", "lr": 0.1}}),
    ],
)
def test_other_lagrangian_variants_meet_budget(toy, ppo_history, name, overrides):
    hist = _run(toy, name, **overrides)
    cost = T.mean_of(hist, "cost", last=20)
    assert cost <= D + TOL, f"{name} ends over budget: C = {cost:.2f}"
    assert T.mean_of(hist, "reward", last=10) > T.mean_of(hist, "reward", first=3) + 0.5
    assert cost < T.mean_of(ppo_history, "cost", last=10) - 2.0
    assert max(h["lambda"] for h in hist) > 0.75  # λ rose from λ₀ = 0.5


def test_sigmoid_cost_transform_is_what_the_multiplier_and_streams_see(toy):
    """``cost_transform: sigmoid``: the episode cost is σ(C) everywhere (history, J_C, samples);
    the first rollout batch (the same samples: the policy has not moved) shows it exactly."""
    def first(name, **kw):
        cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / name, iterations=1,
                           rollout_batch_size=8, mini_batch_size=8, **kw)
        tr = SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
        batch, _, stats = tr.make_experience(1)
        return batch, stats

    b_id, s_id = first("transform_identity")
    b_sig, s_sig = first("transform_sigmoid", cost_transform="sigmoid")
    assert torch.equal(b_id.sequences, b_sig.sequences)
    raw = T.cost_fn(b_id, None, None)
    assert math.isclose(s_id["cost"], raw.mean().item(), rel_tol=1e-6)
    assert math.isclose(s_sig["cost"], torch.sigmoid(raw).mean().item(), rel_tol=1e-6)
    assert math.isclose(s_sig["J_C"], torch.sigmoid(raw).mean().item(), rel_tol=1e-6)


def test_reward_shaping_large_lambda_lowers_cost(toy):
    high = _run(toy, "shaping_3", algo="reward_shaping", iterations=25, lagrange={"init": 3.0})
    zero = _run(toy, "shaping_0", algo="reward_shaping", iterations=25, lagrange={"init": 0.0})
    assert all(h["lambda"] == 3.0 for h in high) and all(h["lambda"] == 0.0 for h in zero)
    c_high, c_zero = T.mean_of(high, "cost", last=5), T.mean_of(zero, "cost", last=5)
    assert c_zero > 2.0, f"λ₀ = 0 is reward-only: the cost should rise, got {c_zero:.2f}"
    assert c_high < 0.5 and c_high < c_zero - 2.0


# ----------------------------------------------------------------------------- conventions


def test_kl_split_between_streams_gives_beta_for_every_lambda():
    """Zero scores and values: the combined advantage is the KL part alone, −β Σ k (γ = λ_gae = 1),
    the same for every λ, because the reward stream carries −β k and the cost stream +β k."""
    cfg = T.toy_config(Path("p"), Path("q"), Path("o"), kl_coeff=0.3, gamma=1.0, gae_lambda=1.0)
    kl = torch.tensor([[0.5, -0.2, 0.4, 0.0], [0.1, 0.3, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 0], [1, 1, 0, 0]])
    expected = -0.3 * torch.flip(torch.cumsum(torch.flip(kl * mask, [1]), 1), [1]) * mask
    for lam in (0.0, 1.0, 5.0):
        t = RolloutTensors(mask=mask, logp_old=kl, logp_ref=torch.zeros_like(kl), kl=kl * mask,
                           reward=torch.zeros(2), cost=torch.zeros(2),
                           values={"reward": torch.zeros_like(kl), "cost": torch.zeros_like(kl)})
        adv = ALGOS["ppo_lag"].combine(t, cfg, lam)
        assert torch.allclose(adv, expected, atol=1e-6), lam


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_first_epoch_ratio_is_one_inside_the_loop(toy, kind):
    """Left-padded prompts of mixed lengths, responses of mixed lengths down to one token: the
    ratio of the first PPO pass equals 1 on every response token (logged and re-checked on the
    whole batch), for Llama-style (RoPE) and GPT-2-style (learned positions) models."""
    policy = T.make_policy_dir(toy["root"], kind=kind, seed=3)
    cfg = T.toy_config(policy, toy["prompts"], toy["root"] / f"ratio_{kind}", iterations=2, ppo_epochs=2)
    tr = SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
    saw_short = False
    for it in range(2):
        batch, t, _ = tr.make_experience(it)
        assert (batch.prompt_mask == 0).any(), "prompts should be left-padded"
        saw_short |= bool((batch.response_lengths == 1).any())
        assert batch.response_lengths.min() < batch.response_lengths.max()
        with torch.no_grad():
            tr.policy.train()
            logp = forward_logprobs(tr.policy, batch.sequences, batch.attention_mask,
                                    prompt_length=batch.prompt_length, temperature=cfg.temperature,
                                    response_mask=batch.response_mask)
        dev = ((logp - t.logp_old).exp() - 1).abs() * t.mask
        assert dev.max().item() <= 1e-5
        stats = tr.ppo_update(batch, t)
        tr.state.step += 1
        assert stats["train/ratio_first_minibatch_max_dev"] <= 1e-5
        assert stats["train/approx_kl"] > 0  # the second epoch ran on an updated policy
    assert saw_short, "no 1-token response was sampled; pick another seed"


# ----------------------------------------------------------------------------- scorers


def _score_model_dir(root: Path, tok, name: str, seed: int) -> Path:
    torch.manual_seed(seed)
    sm = ScoreModel.from_backbone(tiny_llama(tok, hidden_size=32, num_layers=1, seed=seed), score_type="reward",
                                  dtype=None)
    out = root / name
    sm.save_pretrained(out, tokenizer=tok)
    return out


def test_scorer_retokenises_only_when_its_tokenizer_differs(toy):
    root = toy["root"]
    pol_tok = T.make_tokenizer()
    bpe = train_bpe_tokenizer(toy_corpus(T.CONTENT + T.PROMPT_WORDS), vocab_size=300)
    same_dir = _score_model_dir(root, pol_tok, "rm_same", 1)
    diff_dir = _score_model_dir(root, bpe, "rm_bpe", 2)
    cfg = T.toy_config(toy["policy"], toy["prompts"], root / "retok", algo="ppo",
                       reward_model=str(diff_dir), cost_model=str(same_dir), max_new_tokens=6)
    tr = SafeRLTrainer(cfg)  # the CLI path: learned scorers loaded from their dirs
    assert tr.reward_scorer.retokenizes and not tr.cost_scorer.retokenizes
    batch, prompts, texts = tr._rollout(tr._prompt_batch(0), seed=5)
    assert (~batch.ended_with_eos).any() and batch.ended_with_eos.any()

    # Same tokenizer: the rollout's own ids are scored.
    direct = ScoreModel.from_pretrained(same_dir).eval()
    with torch.no_grad():
        want = direct(input_ids=batch.sequences, attention_mask=batch.attention_mask).end_scores[:, 0]
    assert torch.allclose(tr.cost_scorer.score(batch, prompts, texts), want, atol=1e-5)

    # Different tokenizer: prompt + decoded text re-encoded with the scorer's tokenizer and
    # template, one row at a time (no padding), EOS only where the policy emitted it.
    model = ScoreModel.from_pretrained(diff_dir).eval()
    scorer = tr.reward_scorer
    got = scorer.score(batch, prompts, texts)
    for i in range(len(batch)):
        text = scorer.template.render(bpe, prompts[i]) + scorer.template.response_prefix + texts[i]
        ids = bpe(text, add_special_tokens=False)["input_ids"]
        if batch.ended_with_eos[i]:
            ids = ids + [bpe.eos_token_id]
        assert ids != batch.sequences[i][batch.attention_mask[i].bool()].tolist()
        with torch.no_grad():
            ref = model(input_ids=torch.tensor([ids])).end_scores[0, 0]
        assert torch.allclose(got[i], ref, atol=1e-5), i
    stats = tr.train_step()  # the whole iteration runs with a re-tokenising reward model
    assert math.isfinite(stats["reward"]) and math.isfinite(stats["cost"])


@pytest.mark.parametrize("critic_mode", ["separate", "shared"])
def test_one_forward_per_model_per_rollout_batch_frozen_under_inference_mode(toy, critic_mode):
    root = toy["root"]
    tok = T.make_tokenizer()
    rm = _score_model_dir(root, tok, "rm_count", 3)
    cm = _score_model_dir(root, tok, "cm_count", 4)
    cfg = T.toy_config(toy["policy"], toy["prompts"], root / f"count_{critic_mode}", reward_model=str(rm),
                       cost_model=str(cm), critic_init="score_model", critic_mode=critic_mode)
    tr = SafeRLTrainer(cfg)
    if critic_mode == "shared":  # one backbone, a value head per stream; the reward head is the RM's
        assert tr.critic_streams == {"shared": [("reward", 0), ("cost", 1)]}
        head = tr.critics["shared"].score_head
        rm_head = ScoreModel.from_pretrained(rm).score_head
        assert torch.equal(head.weight[0].detach(), rm_head.weight[0].detach())
        assert float(head.weight[1].detach().abs().sum()) == 0.0
    else:
        assert set(tr.critics) == {"reward", "cost"}
    calls: dict[str, list[bool]] = {}
    generating = [False]

    def hook(name):
        def fn(module, args, kwargs):
            if not generating[0]:
                calls.setdefault(name, []).append(torch.is_inference_mode_enabled())
        return fn

    modules = {"policy": tr.policy, "reference": tr.reference.module, "reward_model": tr.reward_scorer.model,
               "cost_model": tr.cost_scorer.model, **{f"{n}_critic": c for n, c in tr.critics.items()}}
    assert tr.reference.module is not tr.policy  # full fine-tuning: a frozen copy
    handles = [m.register_forward_pre_hook(hook(n), with_kwargs=True) for n, m in modules.items()]
    generate = tr.backend.generate

    def counted_generate(*a, **k):
        generating[0] = True
        try:
            return generate(*a, **k)
        finally:
            generating[0] = False

    tr.backend.generate = counted_generate
    try:
        tr.make_experience(0)
    finally:
        for h in handles:
            h.remove()
    assert {n: len(v) for n, v in calls.items()} == {n: 1 for n in modules}
    assert all(v == [True] for v in calls.values()), calls


def test_lora_policy_uses_disabled_adapter_as_reference(toy):
    cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / "lora", iterations=3, lora_r=4,
                       actor_lr=1e-2)
    tr = SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
    assert tr.reference.mode == "disabled_adapter"
    assert tr.reference.extra_parameter_count() == 0
    hist = tr.train()["history"]
    assert hist[0]["kl"] == 0.0  # the fresh adapter is the identity: π = π_ref exactly
    assert hist[-1]["kl"] > 1e-4  # the adapter moved, the reference did not
    assert all(h["train/ratio_first_minibatch_max_dev"] <= 1e-5 for h in hist)
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(toy["root"] / "lora" / "policy")  # plain, merged
    assert not any("lora" in k for k in merged.state_dict())


def test_lora_critics_with_gradient_checkpointing_train_adapters_and_heads_only(toy):
    # the memory levers of a large run: LoRA critics (value heads fully trained), checkpointed
    from saferlhf.models.score_model import ScoreModel

    out = toy["root"] / "lora_critics"
    cfg = T.toy_config(toy["policy"], toy["prompts"], out, iterations=3, critic_lora_r=4,
                       gradient_checkpointing=True)
    tr = SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
    before = {}
    for name, critic in tr.critics.items():
        assert critic.is_lora and critic.is_gradient_checkpointing
        trainable = {n for n, q in critic.named_parameters() if q.requires_grad}
        assert trainable and all("lora_" in n or n.startswith("score_head") for n in trainable), trainable
        assert any(n.startswith("score_head") for n in trainable)
        before[name] = {n: q.detach().clone() for n, q in critic.named_parameters()}
    hist = tr.train()["history"]
    assert all(math.isfinite(h["critic/reward_explained_variance"]) for h in hist)
    for name, critic in tr.critics.items():
        moved = {n for n, q in critic.named_parameters() if not torch.equal(q.detach(), before[name][n])}
        assert moved and all("lora_" in n or n.startswith("score_head") for n in moved), moved
    loaded = ScoreModel.from_pretrained(out / "reward_critic")  # the saved critic loads back
    assert loaded.score_config.score_type == "critic"


# ----------------------------------------------------------------------------- observability / CLI


def test_cli_rl_writes_metrics_samples_policy_critics(toy):
    from saferlhf.cli import main

    root = toy["root"]
    tok = T.make_tokenizer()
    rm = _score_model_dir(root, tok, "rm_cli", 5)
    cm = _score_model_dir(root, tok, "cm_cli", 6)
    out = root / "cli_rl"
    rc = main(["rl", "--algo", "ppo_lag", "--policy", str(toy["policy"]), "--reward-model", str(rm),
               "--cost-model", str(cm), "--prompts", str(toy["prompts"]), "--out", str(out),
               "--eval-prompts", str(toy["prompts"]), "--eval-every", "1", "--iterations", "2",
               "--rollout-batch-size", "8", "--mini-batch-size", "8", "--max-new-tokens", "6",
               "--progress", "false", "--precision", "fp32"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "reward" in r]
    assert [r["step"] for r in train] == [1, 2]
    needed = ["reward", "cost", "lambda", "J_C", "J_C_minus_d", "kl", "train/entropy", "response_length",
              "train/clipfrac", "train/reward_value_clipfrac", "train/cost_value_clipfrac",
              "critic/reward_explained_variance", "critic/cost_explained_variance",
              "time/generate", "time/score", "time/train", "train/ratio_first_minibatch_max_dev",
              "eval/reward", "eval/cost"]
    missing = [k for k in needed if k not in train[0]]
    assert not missing, missing
    assert any("eval/cost" in r for r in rows if r["step"] == 2)  # the final evaluation
    assert (out / "samples.jsonl").read_text().strip() and (out / "eval_samples.jsonl").read_text().strip()
    for d in ("policy", "reward_critic", "cost_critic"):
        assert (out / d / "COMPLETE").is_file(), d
    lag = json.loads((out / "lagrange.json").read_text())
    assert math.isclose(lag["final_lambda"], train[-1]["lambda"])


def test_cli_budget_reports_cost_distribution_and_budget(toy, capsys):
    from saferlhf.cli import main

    tok = T.make_tokenizer()
    cm = _score_model_dir(toy["root"], tok, "cm_budget", 7)
    out = toy["root"] / "budget"
    rc = main(["budget", "--policy", str(toy["policy"]), "--cost-model", str(cm), "--prompts",
               str(toy["prompts"]), "--target-unsafe-rate", "0.25", "--out", str(out),
               "--n-samples", "2", "--max-new-tokens", "6"])
    assert rc == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "budget.json").read_text())
    assert report["n"] == 2 * 48
    costs = torch.tensor([json.loads(line)["cost"] for line in (out / "costs.jsonl").read_text().splitlines()])
    assert math.isclose(report["mean"], costs.double().mean().item(), rel_tol=1e-9)
    assert math.isclose(report["unsafe_rate"], (costs > 0).double().mean().item())
    assert abs(report["rate_above_budget"] - 0.25) <= 1.0 / 96 + 1e-9
    assert json.loads(printed[printed.index("{"):]) == report  # printed and written alike


def test_non_finite_reward_stops_the_run_with_the_metric_named(toy):
    from saferlhf.errors import NonFiniteLossError

    def nan_reward(batch, prompts, texts):
        return torch.full((len(batch),), float("nan"))

    cfg = T.toy_config(toy["policy"], toy["prompts"], toy["root"] / "nan", iterations=3,
                       rollout_batch_size=8, mini_batch_size=8)
    with pytest.raises(NonFiniteLossError, match="iteration 1: metric 'reward'"):
        SafeRLTrainer(cfg, reward_fn=nan_reward, cost_fn=T.cost_fn).train()
