"""``saferlhf plan``: the memory estimator against hand-computed bytes for a tiny architecture,
and the shipped recipes through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from saferlhf.cli import main
from saferlhf.config import ConfigError
from saferlhf.plan import (
    GB,
    KNOWN_ARCHS,
    Arch,
    activation_bytes,
    arch_from_hf_config,
    model_memory,
    plan_memory,
    resolve_arch,
)

ROOT = Path(__file__).resolve().parents[1]

# hidden 8, 2 layers, 2 heads (head_dim 4), 1 KV head, vocab 10, MLP 16, untied, no biases.
TINY = Arch("tiny", hidden=8, layers=2, heads=2, kv_heads=1, vocab=10, intermediate=16)


def test_parameter_counts_by_hand():
    # per layer: q 8·8 + k,v 2·8·4 + o 8·8 + MLP 3·8·16 + 2 norms·8 = 64 + 64 + 64 + 384 + 16
    assert TINY.layer_params() == 592
    # embed 80 + 2 layers + final norm 8 + LM head 80
    assert TINY.lm_params() == 80 + 2 * 592 + 8 + 80 == 1352
    # score model: no LM head, a 8→1 head with bias; two heads for a shared critic
    assert TINY.score_params(1) == 80 + 1184 + 8 + 8 + 1 == 1281
    assert TINY.score_params(2) == 1290
    # LoRA r=2: (in + out) per linear: q 16, k 12, v 12, o 16, gate 24, up 24, down 24 = 128
    assert TINY.lora_params(2) == 2 * 128 * 2 == 512
    # KV cache per token: K and V · 2 layers · 1 head · 4 dims · 2 bytes
    assert TINY.kv_bytes_per_token() == 32


def test_known_architectures_match_published_sizes():
    assert abs(KNOWN_ARCHS["qwen2.5-7b"].lm_params() / 1e9 - 7.62) < 0.01
    assert abs(KNOWN_ARCHS["llama-3.1-8b"].lm_params() / 1e9 - 8.03) < 0.01
    assert abs(KNOWN_ARCHS["qwen2.5-0.5b"].lm_params() / 1e9 - 0.494) < 0.001
    assert abs(KNOWN_ARCHS["llava-1.5-7b"].lm_params() / 1e9 - 7.06) < 0.01
    assert abs(KNOWN_ARCHS["qwen2-vl-7b"].lm_params() / 1e9 - 8.29) < 0.01


def test_bytes_per_strategy_by_hand():
    n = 1352
    ddp = model_memory("policy", TINY, params=n, trainable=n, strategy="ddp", gpus=2, fp32=False)
    assert (ddp.weights, ddp.grads, ddp.optimizer) == (2 * n, 2 * n, 12 * n)
    z2 = model_memory("policy", TINY, params=n, trainable=n, strategy="zero2", gpus=2, fp32=False)
    assert (z2.weights, z2.grads, z2.optimizer) == (2 * n, n, 6 * n)
    z3 = model_memory("policy", TINY, params=n, trainable=n, strategy="zero3", gpus=2, fp32=False)
    assert (z3.weights, z3.grads, z3.optimizer) == (n, n, 6 * n)
    fp32 = model_memory("policy", TINY, params=n, trainable=n, strategy="ddp", gpus=1, fp32=True)
    assert (fp32.weights, fp32.grads, fp32.optimizer) == (4 * n, 4 * n, 8 * n)
    frozen = model_memory("reward model", TINY, params=1281, trainable=0, strategy="zero2", gpus=2, fp32=False)
    assert (frozen.weights, frozen.grads, frozen.optimizer) == (2562, 0, 0)  # zero2 replicates frozen models
    off = model_memory("policy", TINY, params=n, trainable=n, strategy="zero3-offload", gpus=2, fp32=False)
    assert off.persistent == 0 and off.host == 16 * n / 2


def test_activations_by_hand():
    # b=2, S=6, R=4: per layer 34·6·2·8 = 3264; logits 2·6·10·2 = 240 and 2·4·10·8 = 640
    assert activation_bytes(TINY, batch=2, seq=6, checkpointing=False) == 2 * 3264
    assert activation_bytes(TINY, batch=2, seq=6, checkpointing=False, logits_response=4) == 6528 + 880
    # checkpointing: saved inputs 2 layers · 2·6·2·8 = 384, plus one layer recomputed
    assert activation_bytes(TINY, batch=2, seq=6, checkpointing=True) == 384 + 3264


def test_ppo_lag_plan_by_hand():
    plan = plan_memory(policy=TINY, strategy="zero3", gpus=2, gpu_mem_gb=1.0, rollout_rows=4, micro_batch=2,
                       prompt_length=2, response_length=4, gradient_checkpointing=False, overhead_gb=0.0)
    rows = {m.role: m for m in plan.models}
    assert list(rows) == ["policy", "reference", "reward critic", "cost critic", "reward model", "cost model"]
    assert rows["policy"].persistent == 1352 + 1352 + 8112
    assert rows["reference"].persistent == 1352
    assert rows["reward critic"].persistent == rows["cost critic"].persistent == 1281 + 1281 + 7686
    assert rows["cost model"].persistent == 1281
    assert plan.persistent == 35226
    assert plan.working_set == 2 * (2 * 592 + 80)  # two layers gathered + the embedding
    assert plan.kv_cache == 4 * 6 * 32
    assert plan.phases["training"] == 35226 + 2528 + 7408  # the policy's activations are the largest
    assert plan.phases["generation"] == 35226 + 2528 + 768
    assert plan.fits
    tight = plan_memory(policy=TINY, strategy="zero3", gpus=2, gpu_mem_gb=45_000 / GB, rollout_rows=4,
                        micro_batch=2, prompt_length=2, response_length=4, gradient_checkpointing=False,
                        overhead_gb=0.0)
    assert not tight.fits  # 45 162 bytes > 45 000


def test_lora_policy_shared_critic_and_algo_roles():
    plan = plan_memory(policy=TINY, strategy="ddp", gpus=1, lora_r=2, critic_mode="shared", overhead_gb=0.0)
    rows = {m.role: m for m in plan.models}
    assert rows["policy"].trainable == 512 and rows["policy"].params == 1352 + 512
    assert rows["policy"].weights == 2 * (1352 + 512)  # frozen base and adapter both bf16
    assert rows["policy"].optimizer == 12 * 512
    assert rows["reference"].persistent == 0  # the disabled adapter
    assert "critic (reward+cost heads)" in rows and rows["critic (reward+cost heads)"].params == 1290
    ppo = plan_memory(policy=TINY, algo="ppo", strategy="ddp", gpus=1)
    assert [m.role for m in ppo.models] == ["policy", "reference", "reward critic", "reward model"]
    grpo = plan_memory(policy=TINY, algo="grpo_lag", strategy="ddp", gpus=1)
    assert [m.role for m in grpo.models] == ["policy", "reference", "reward model", "cost model"]


def test_vllm_engine_adds_a_bf16_policy_copy():
    plan = plan_memory(policy=TINY, strategy="ddp", gpus=1, backend="vllm", overhead_gb=0.0)
    assert plan.vllm_engine == 2 * 1352
    assert plan.phases["generation"] == plan.persistent + plan.kv_cache + 2 * 1352


def test_resolve_arch(tmp_path):
    assert resolve_arch("Qwen2.5-7B") is KNOWN_ARCHS["qwen2.5-7b"]
    assert resolve_arch("checkpoints/qwen2-vl-7b-sft") is KNOWN_ARCHS["qwen2-vl-7b"]
    cfg = {"model_type": "qwen2", "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
           "num_key_value_heads": 1, "vocab_size": 10, "intermediate_size": 16, "tie_word_embeddings": True}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    a = resolve_arch(str(tmp_path))
    assert a.tied and a.qkv_bias and a.lm_params() == 80 + 2 * (592 + 8 + 4 + 4) + 8
    assert arch_from_hf_config({"text_config": cfg, "vision_config": {"hidden_size": 4, "num_hidden_layers": 1,
                                                                       "intermediate_size": 8}}).vision_params == 16 * 4 + 64
    with pytest.raises(ConfigError, match="known architecture"):
        resolve_arch("some/unknown-model")


@pytest.mark.parametrize("recipe", ["configs/recipes/qwen2.5-7b-ppo-lag.yaml",
                                    "configs/recipes/llama-3.1-8b-ppo-lag.yaml",
                                    "configs/vlm/llava-1.5-7b-rl.yaml", "configs/vlm/qwen2-vl-7b-rl.yaml"])
def test_7b_recipes_fit_8x80_under_zero3(recipe, capsys, tmp_path):
    out = tmp_path / "plan.json"
    rc = main(["plan", "--config", str(ROOT / recipe), "--gpus", "8", "--gpu-mem", "80", "--json-out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert "zero3" in text and "verdict: FITS" in text
    for role in ("policy", "reward critic", "cost critic", "reward model", "cost model"):
        assert role in text
    plan = json.loads(out.read_text())
    assert plan["strategy"] == "zero3" and plan["fits"] and plan["peak"] < 80 * GB


def test_plan_says_when_it_does_not_fit(capsys):
    rc = main(["plan", "--config", str(ROOT / "configs/recipes/qwen2.5-7b-ppo-lag.yaml"),
               "--gpus", "1", "--gpu-mem", "80", "--strategy", "ddp"])
    assert rc == 0
    assert "verdict: DOES NOT FIT" in capsys.readouterr().out


def test_recipes_stay_valid_rl_configs():
    from saferlhf.config import parse_args
    from saferlhf.config.stages import RLConfig

    for p in sorted((ROOT / "configs/recipes").glob("*-ppo-lag.yaml")):
        cfg = parse_args(RLConfig, ["--config", str(p)])
        assert cfg.plan.model and cfg.precision == "bf16"
