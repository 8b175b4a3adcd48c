"""The vLLM rollout backend without vLLM: its errors, the sampling-parameter mapping, and the
generate / weight-sync paths driven through a stand-in engine and a stand-in ``vllm`` module."""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from saferlhf.cli import main
from saferlhf.config import ConfigError
from saferlhf.rollout import HFRolloutBackend, SamplingParams, make_rollout_backend
from saferlhf.rollout.vllm import (
    VLLMRolloutBackend,
    check_vllm_available,
    responses_from_outputs,
    vllm_sampling_kwargs,
)

HAS_VLLM = "vllm" in sys.modules or __import__("importlib").util.find_spec("vllm") is not None


def test_check_names_vllm_when_missing_or_without_gpu():
    with pytest.raises(ConfigError, match="vllm package is not installed"):
        check_vllm_available(has_module=False, has_cuda=True)
    with pytest.raises(ConfigError, match="vllm needs a CUDA GPU"):
        check_vllm_available(has_module=True, has_cuda=False)
    check_vllm_available(has_module=True, has_cuda=True)


@pytest.mark.skipif(HAS_VLLM and torch.cuda.is_available(), reason="vllm can run here")
def test_factory_refuses_vllm_here_and_unknown_names():
    with pytest.raises(ConfigError, match="vllm"):
        make_rollout_backend("vllm", torch.nn.Linear(1, 1), None, model_path="x")
    with pytest.raises(ConfigError, match="unknown rollout backend 'sglang'"):
        make_rollout_backend("sglang", torch.nn.Linear(1, 1), None)


def test_factory_builds_the_hf_backend():
    tok = SimpleNamespace(eos_token_id=3, pad_token_id=0)
    b = make_rollout_backend("hf", torch.nn.Linear(1, 1), tok, model_path="ignored")
    assert isinstance(b, HFRolloutBackend) and b.eos_token_ids == [3] and b.pad_token_id == 0


@pytest.mark.skipif(HAS_VLLM and torch.cuda.is_available(), reason="vllm can run here")
def test_cli_rl_backend_vllm_exits_2_before_loading(tmp_path, capsys):
    # None of these paths exist: the backend check must come first.
    rc = main(["rl", "--policy", str(tmp_path / "p"), "--reward-model", "r", "--cost-model", "c",
               "--prompts", "x.jsonl", "--out", str(tmp_path / "o"), "--backend", "vllm"])
    assert rc == 2
    assert "vllm" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_sampling_mapping():
    kw = vllm_sampling_kwargs(SamplingParams(temperature=0.7, top_p=0.9, top_k=0, max_new_tokens=16,
                                             repetition_penalty=1.1, n=2), eos_token_ids=[5, 7], seed=3)
    assert kw["temperature"] == 0.7 and kw["top_p"] == 0.9
    assert kw["top_k"] == -1  # 0 = off, as in the HF backend (which passes top_k=0)
    assert kw["repetition_penalty"] == 1.1 and kw["presence_penalty"] == 0 and kw["frequency_penalty"] == 0
    assert kw["min_p"] == 0 and kw["min_tokens"] == 0
    assert kw["max_tokens"] == 16 and kw["n"] == 2 and kw["seed"] == 3
    assert kw["stop_token_ids"] == [5, 7] and kw["ignore_eos"] is False
    assert kw["logprobs"] is None and kw["prompt_logprobs"] is None  # log-probs come from the trainer
    assert vllm_sampling_kwargs(SamplingParams(top_k=5), eos_token_ids=[1])["top_k"] == 5
    greedy = vllm_sampling_kwargs(SamplingParams(temperature=0.0, top_p=0.5, top_k=9), eos_token_ids=[1], n=4)
    assert (greedy["temperature"], greedy["top_p"], greedy["top_k"], greedy["n"]) == (0.0, 1.0, -1, 4)


def _comp(ids, finish="length", stop=None):
    return SimpleNamespace(token_ids=ids, finish_reason=finish, stop_reason=stop)


def test_responses_from_outputs_restore_the_stop_token():
    outs = [SimpleNamespace(outputs=[_comp([4, 5, 7]), _comp([4, 6], "stop", 7)]),
            SimpleNamespace(outputs=[_comp([], "stop", 5), _comp([8, 9, 9, 9], "length")])]
    assert responses_from_outputs(outs, [5, 7]) == [[4, 5, 7], [4, 6, 7], [5], [8, 9, 9, 9]]


class _FakeEngineModel:
    def __init__(self):
        self.loaded: list[str] = []

    def load_weights(self, weights):  # copies each tensor as it arrives, as vLLM's loaders do
        self.values = {name: t.clone() for name, t in weights}
        self.loaded = list(self.values)


class _FakeLLM:
    """Stands in for ``vllm.LLM``: returns fixed completions and records the call."""

    def __init__(self):
        self.model = _FakeEngineModel()
        self.llm_engine = SimpleNamespace(model_executor=SimpleNamespace(driver_worker=SimpleNamespace(
            model_runner=SimpleNamespace(model=self.model))))
        self.calls = []
        self.resets = 0

    def generate(self, prompts, sampling_params, lora_request=None, use_tqdm=False):
        self.calls.append((prompts, sampling_params, lora_request))
        n = sampling_params["n"]
        return [SimpleNamespace(outputs=[_comp([10 + i, 2], "stop", 2) if k == 0 else _comp([11, 12, 13])
                                         for k in range(n)]) for i, _ in enumerate(prompts)]

    def reset_prefix_cache(self):
        self.resets += 1


@pytest.fixture
def fake_vllm(monkeypatch):
    mod = types.ModuleType("vllm")
    mod.SamplingParams = lambda **kw: kw
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


def test_generate_packs_the_hf_layout(fake_vllm):
    policy = torch.nn.Linear(2, 2)
    tok = SimpleNamespace(eos_token_id=2, pad_token_id=0, batch_decode=lambda rows, **k: [str(r) for r in rows])
    engine = _FakeLLM()
    b = VLLMRolloutBackend(policy, tok, model_path="unused", engine=engine,
                           sampling=SamplingParams(max_new_tokens=3, n=2))
    batch = b.generate([[5, 6, 7], [8]], seed=1)
    batch.validate()
    prompts, params, lora = engine.calls[0]
    assert prompts == [{"prompt_token_ids": [5, 6, 7]}, {"prompt_token_ids": [8]}]
    assert params["n"] == 2 and params["seed"] == 1 and params["stop_token_ids"] == [2] and lora is None
    assert batch.prompt_index.tolist() == [0, 0, 1, 1] and batch.prompt_length == 3
    assert batch.ended_with_eos.tolist() == [True, False, True, False]
    assert batch.response_token_ids(0) == [10, 2] and batch.response_token_ids(1) == [11, 12, 13]
    assert batch.prompt_token_ids(2) == [8] and batch.meta["backend"] == "vllm"
    with pytest.raises(ConfigError, match="text policies only"):
        b.generate([[1]], image_inputs=object())


def test_sync_weights_loads_full_weights_by_hf_name(fake_vllm):
    policy = torch.nn.Sequential(torch.nn.Linear(2, 2))
    engine = _FakeLLM()
    b = VLLMRolloutBackend(policy, SimpleNamespace(eos_token_id=2, pad_token_id=0), model_path="x", engine=engine)
    b.sync_weights()
    assert engine.model.loaded == ["0.weight", "0.bias"] and engine.resets == 1


def test_sync_weights_of_a_peft_policy_sends_merged_base_names(fake_vllm):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    names = set(base.state_dict())
    policy = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    engine = _FakeLLM()
    VLLMRolloutBackend(policy, SimpleNamespace(eos_token_id=2, pad_token_id=0), model_path="x",
                       engine=engine).sync_weights()
    assert set(engine.model.loaded) == names  # no base_model.model. / lora_A / base_layer names


def test_iter_full_weights_is_the_state_dict_module_by_module():
    from transformers import LlamaConfig, LlamaForCausalLM

    from saferlhf.distributed import iter_full_weights

    model = LlamaForCausalLM(LlamaConfig(vocab_size=8, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True))
    model.register_buffer("kept", torch.ones(2))  # a persistent buffer is part of the weights
    full, want = dict(iter_full_weights(model)), model.state_dict()
    assert list(full) == list(want)  # tied lm_head included under its own name; no rotary inv_freq
    assert all(torch.equal(full[k], want[k]) for k in want)


def test_sync_weights_gathers_zero3_shards_one_module_at_a_time(fake_vllm, monkeypatch):
    # A stand-in for ZeRO-3: partitioned parameters carry ds_id and hold an empty shard; the
    # stand-in GatheredParameters fills them on entry and empties them on exit.
    policy = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    full = {id(p): p.detach().clone() for p in policy.parameters()}
    want = {k: v.clone() for k, v in policy.state_dict().items()}
    for p in policy.parameters():
        p.ds_id, p.data = id(p), torch.empty(0)
    live, peak, calls = set(), [0], []

    class Gathered:
        def __init__(self, params, modifier_rank=None):
            self.params = list(params)
            calls.append((len(self.params), modifier_rank))

        def __enter__(self):
            for p in self.params:
                p.data = full[id(p)].clone()
                live.add(id(p))
            peak[0] = max(peak[0], len(live))

        def __exit__(self, *exc):
            for p in self.params:
                p.data = torch.empty(0)
                live.discard(id(p))

    ds = types.ModuleType("deepspeed")
    ds.zero = SimpleNamespace(GatheredParameters=Gathered)
    monkeypatch.setitem(sys.modules, "deepspeed", ds)
    engine = _FakeLLM()
    VLLMRolloutBackend(policy, SimpleNamespace(eos_token_id=2, pad_token_id=0), model_path="x",
                       engine=engine).sync_weights()
    assert list(engine.model.values) == list(want)
    assert all(torch.equal(engine.model.values[k], want[k]) for k in want)  # full values, not shards
    assert calls == [(2, None), (2, None)] and peak[0] == 2  # one Linear's weight and bias at a time
    assert all(p.numel() == 0 for p in policy.parameters())  # partitioned again afterwards
