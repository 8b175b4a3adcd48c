"""LoRA models saved from a gathered state dict (the ZeRO-3 / FSDP final save, where the live
layers hold only shards): the merged policy equals peft's own ``merge_and_unload``."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM

from saferlhf.data.templates import template_for
from saferlhf.models.checkpoint import save_policy
from saferlhf.models.loading import apply_lora, peft_merged_weights
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_gpt2, tiny_llama


@pytest.mark.parametrize("kind", ["llama", "gpt2"])  # gpt2: Conv1D layers (fan-in-fan-out)
def test_merged_weights_from_a_state_dict_equal_peft_merge(kind, tmp_path):
    tok = build_word_level_tokenizer(list("abcdefgh"))
    build = tiny_llama if kind == "llama" else tiny_gpt2
    model = apply_lora(build(tok, hidden_size=32, num_layers=2, num_heads=4, seed=0),
                       {"r": 4, "alpha": 12, "target_modules": "all-linear"})
    with torch.no_grad():  # a trained adapter: B is zero at init, so give every LoRA matrix values
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    want = copy.deepcopy(model).merge_and_unload().state_dict()  # peft's merge, on a copy
    got = peft_merged_weights(model, model.state_dict())
    assert set(got) == set(want)
    for k in want:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=1e-5)

    # save_policy with the gathered state writes that merged model, loadable on its own
    ids = torch.tensor([[1, 2, 3, 4]])
    model.eval()
    save_policy(model, tok, tmp_path / "policy", template=template_for(tok), state_dict=model.state_dict())
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-4)
