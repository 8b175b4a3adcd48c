"""Accelerate configs, launch detection, per-model DeepSpeed configs and the collective save
helpers of :mod:`saferlhf.distributed` (single process; the 2-process runs are in
``test_fsdp_cpu.py``)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import yaml

from saferlhf.distributed import (
    STRATEGIES,
    accelerate_config_path,
    cpu_multiprocess_launch,
    deepspeed_config,
    prepare_models,
    rl_deepspeed_configs,
    rl_deepspeed_plugins,
    save_pretrained_gathered,
    save_state_collective,
    strategy_of_accelerate_config,
)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_shipped_accelerate_configs_load_and_name_their_strategy(strategy):
    from accelerate.commands.config.config_args import load_config_from_file

    path = accelerate_config_path(strategy)
    cfg = load_config_from_file(str(path))  # accelerate's own loader: every key known to it
    assert strategy_of_accelerate_config(yaml.safe_load(path.read_text())) == strategy
    if strategy == "fsdp":
        assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_reshard_after_forward"] is True
        assert cfg.fsdp_config["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"


def test_cpu_multiprocess_launch():
    assert cpu_multiprocess_launch({"WORLD_SIZE": "2"}, cuda_available=False)
    assert not cpu_multiprocess_launch({"WORLD_SIZE": "2"}, cuda_available=True)
    assert not cpu_multiprocess_launch({}, cuda_available=False)
    assert not cpu_multiprocess_launch({"WORLD_SIZE": "1"}, cuda_available=False)


def test_zero3_configs_for_policy_and_two_critics():
    cfgs = rl_deepspeed_configs("zero3", micro_batch_size=4, gradient_clipping=0.5)
    assert list(cfgs)[0] == "policy"  # accelerate activates the first plugin
    assert list(cfgs)[:3] == ["policy", "reward_critic", "cost_critic"]  # trained first
    for role in ("policy", "reward_critic", "cost_critic"):
        c = cfgs[role]
        assert c["zero_optimization"]["stage"] == 3 and c["gradient_clipping"] == 0.5
        assert c["train_micro_batch_size_per_gpu"] == 4 and c["bf16"]["enabled"]
        assert c["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    for role in ("reference", "reward_model", "cost_model"):  # ZeRO-3 inference engines
        c = cfgs[role]
        assert c["zero_optimization"]["stage"] == 3 and "gradient_clipping" not in c
    z2 = rl_deepspeed_configs("zero2")
    assert z2["policy"]["zero_optimization"]["stage"] == 2 and z2["reward_model"]["zero_optimization"]["stage"] == 0
    off = rl_deepspeed_configs("zero3-offload")
    assert off["policy"]["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert "offload_optimizer" not in off["reference"]["zero_optimization"]
    assert off["reference"]["zero_optimization"]["offload_param"]["device"] == "cpu"
    with pytest.raises(ValueError, match="not a DeepSpeed strategy"):
        deepspeed_config("fsdp", train=True)


def test_plugins_build_without_deepspeed():
    plugins = rl_deepspeed_plugins("zero3")
    assert set(plugins) == {"policy", "reward_critic", "cost_critic", "reference", "reward_model", "cost_model"}
    assert all(p.zero_stage == 3 for p in plugins.values())


def test_zero3_auto_sizes_resolve_from_a_vlm_text_config():
    # accelerate reads config.hidden_size, which a LLaVA config lacks (it is under text_config)
    from types import SimpleNamespace

    from transformers import LlamaConfig, LlavaConfig

    from saferlhf.config import ConfigError
    from saferlhf.distributed import model_hidden_size, prepare_models, resolve_hidden_size_auto

    vlm = SimpleNamespace(config=LlavaConfig(text_config=LlamaConfig(hidden_size=48, num_attention_heads=4).to_dict()))
    assert not hasattr(vlm.config, "hidden_size") and model_hidden_size(vlm) == 48
    assert model_hidden_size(SimpleNamespace(config=LlamaConfig(hidden_size=32, num_attention_heads=4))) == 32
    plugins = rl_deepspeed_plugins("zero3", roles={"policy": True, "reference": False})
    zero = plugins["policy"].hf_ds_config.config["zero_optimization"]
    assert zero["reduce_bucket_size"] == "auto"

    class Acc:  # what prepare_models reads of an Accelerator under DeepSpeed
        distributed_type = "DistributedType.DEEPSPEED"
        state = SimpleNamespace(deepspeed_plugins=plugins, selected=[],
                                select_deepspeed_plugin=lambda role: Acc.state.selected.append(role))

        @staticmethod
        def prepare(model, opt=None):
            assert not plugins[Acc.state.selected[-1]].is_auto("zero_optimization.reduce_bucket_size")
            return model if opt is None else (model, opt)

    prepare_models(Acc, {"policy": (vlm, "opt")})
    assert (zero["reduce_bucket_size"], zero["stage3_prefetch_bucket_size"],
            zero["stage3_param_persistence_threshold"]) == (48 * 48, int(0.9 * 48 * 48), 480)
    assert Acc.state.selected == ["policy", "policy"]
    cfg = deepspeed_config("zero3", train=False)
    with pytest.raises(ConfigError, match="reduce_bucket_size.*set them to integers"):
        resolve_hidden_size_auto(cfg, SimpleNamespace(), "reward_model")
    assert resolve_hidden_size_auto(deepspeed_config("zero2", train=False), SimpleNamespace())  # no auto: untouched


_DS_SCRIPT = """
import os, sys, types, torch
os.environ.update(ACCELERATE_USE_DEEPSPEED="true", WORLD_SIZE="1", RANK="0", LOCAL_RANK="0",
                  MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[2])
from accelerate import Accelerator
from saferlhf.distributed import backward_step, gathered_state_dict, prepare_models, rl_deepspeed_plugins
roles = {"policy": True, "reward_critic": True, "cost_critic": True, "reference": False}
acc = Accelerator(deepspeed_plugins=rl_deepspeed_plugins(sys.argv[1], roles=roles, micro_batch_size=2))
models = {}
for r, train in roles.items():
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 1))
    m.config = types.SimpleNamespace(hidden_size=8)  # accelerate fills the 'auto' bucket sizes from it
    models[r] = (m, torch.optim.AdamW(m.parameters(), lr=1e-2) if train else None)
try:  # what rl.py does today
    acc.prepare(*(x for pair in models.values() for x in pair if x is not None))
    print("ONE_PREPARE ok")
except AssertionError as e:
    print("ONE_PREPARE", e)
prepared = prepare_models(acc, models)
print("ENGINES", sorted(r for r, (m, _) in prepared.items() if type(m).__name__ == "DeepSpeedEngine"))
x = torch.randn(2, 4, dtype=torch.bfloat16)
for r in ("policy", "reward_critic", "cost_critic"):
    m, o = prepared[r]
    before = {k: v.float().clone() for k, v in gathered_state_dict(acc, m).items()}
    backward_step(acc, m, o, m(x).float().pow(2).mean())
    after = gathered_state_dict(acc, m)
    print("STEPPED", r, any(not torch.equal(after[k].float(), before[k]) for k in before),
          tuple(after["0.weight"].shape))
"""


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is an optional extra (pip install 'saferlhf[deepspeed]')")
@pytest.mark.parametrize("strategy", ["zero2", "zero3"])
def test_one_prepare_of_three_models_fails_under_deepspeed_and_per_model_engines_train(strategy, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _DS_SCRIPT, strategy, str(port)], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:] + proc.stderr[-4000:]
    # the multiple-models assert that one accelerator.prepare of policy + critics hits today
    assert "ONE_PREPARE You can't use same `Accelerator()` instance with multiple models" in out
    assert "ENGINES ['cost_critic', 'policy', 'reference', 'reward_critic']" in out
    for role in ("policy", "reward_critic", "cost_critic"):  # each engine steps its own model
        assert f"STEPPED {role} True (8, 4)" in out  # gathered full weights (ZeRO-3 shards them)


def test_prepare_models_without_deepspeed_and_collective_saves(tmp_path):
    from accelerate import Accelerator
    from transformers import LlamaConfig, LlamaForCausalLM

    acc = Accelerator(cpu=True)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)
    policy, critic = LlamaForCausalLM(cfg), torch.nn.Linear(4, 1)
    out = prepare_models(acc, {"policy": (policy, torch.optim.AdamW(policy.parameters())),
                               "reference": (LlamaForCausalLM(cfg), None),
                               "critic": (critic, torch.optim.AdamW(critic.parameters()))})
    assert list(out) == ["policy", "reference", "critic"]
    assert out["reference"][1] is None and out["critic"][1] is not None

    final = tmp_path / "checkpoints" / "step-3"
    save_state_collective(acc, final, write_extra=lambda d: (d / "trainer_state.json").write_text("{}"))
    assert (final / "COMPLETE").is_file() and (final / "trainer_state.json").is_file()
    assert not (final.parent / ".tmp-step-3").exists()
    assert any(p.name.startswith("model") for p in final.iterdir())

    target = tmp_path / "policy"
    save_pretrained_gathered(acc, out["policy"][0], lambda m, sd: m.save_pretrained(target, state_dict=sd))
    again = LlamaForCausalLM.from_pretrained(target)
    assert torch.equal(again.model.embed_tokens.weight, policy.model.embed_tokens.weight)


def test_configs_dir_is_where_the_contract_says():
    assert accelerate_config_path("zero3") == Path(__file__).resolve().parents[1] / "configs/accelerate/zero3.yaml"


def test_unsharded_saves_use_local_weights_and_save_policy_takes_a_gathered_state(tmp_path):
    from accelerate import Accelerator
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from saferlhf.data.templates import template_for
    from saferlhf.distributed import full_state_dict_if_sharded, is_sharded
    from saferlhf.models.checkpoint import save_policy

    acc = Accelerator(cpu=True)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))
    assert not is_sharded(acc) and full_state_dict_if_sharded(acc, model) is None
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"a": 0, "<eos>": 1, "<pad>": 2},
                                                                              unk_token="a")),
                                  eos_token="<eos>", pad_token="<pad>")
    # A "gathered" state whose values differ from the module's: the saved folder must hold them.
    state = {k: torch.full_like(v, 0.5) for k, v in model.state_dict().items()}
    save_policy(model, tok, tmp_path / "p", template=template_for(tok), state_dict=state)
    again = LlamaForCausalLM.from_pretrained(tmp_path / "p")
    assert torch.all(again.model.layers[0].mlp.up_proj.weight == 0.5)
