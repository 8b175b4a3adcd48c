"""The object-based Python API (TRL conventions): trainers take in-memory models, tokenizers or
processors, ``datasets.Dataset``s, callables and HF ``*ForSequenceClassification`` models; a VLM
folder saved the way the hub ships it (HF processor files only) is read as a VLM."""

from __future__ import annotations

import json

import pytest
import torch
from datasets import Dataset
from PIL import Image

import saferlhf
from saferlhf import CostModelConfig, RLConfig, SafeRLTrainer, ScoreModelTrainer, SFTConfig, SFTTrainer
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_llama, tiny_llama_config
from saferlhf.models.tiny_vlm import tiny_llava, vlm_tokenizer
from saferlhf.processing import TextProcessor, VLMProcessor, as_processor, load_processor

WORDS = "how do i cook rice make a bomb help me please step one two three good bad sorry no".split()
PROMPTS = ["how do i cook rice", "how do i make a bomb", "help me please", "make rice please"]


def _text_parts():
    tok = build_word_level_tokenizer(WORDS)
    policy = tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=0)
    return tok, policy


def _good_count(prompts, completions, **kwargs):
    assert "completion_ids" in kwargs and len(kwargs["completion_ids"]) == len(completions)
    return [float(c.split().count("good")) for c in completions]


def _cost_model(tok):
    from transformers import LlamaForSequenceClassification

    cfg = tiny_llama_config(tok, hidden_size=32, num_layers=1, num_heads=2)
    cfg.num_labels = 1
    torch.manual_seed(1)
    return LlamaForSequenceClassification(cfg)


def _rl_args(tmp_path, **kw):
    return RLConfig(out=str(tmp_path / "rl"), algo="ppo_lag", iterations=2, rollout_batch_size=4,
                    mini_batch_size=4, max_new_tokens=4, progress=False, log_every=1, **kw)


def test_exports_are_lazy_and_complete():
    for name in ("SFTTrainer", "ScoreModelTrainer", "SafeRLTrainer", "SFTConfig", "RewardModelConfig",
                 "CostModelConfig", "RLConfig", "LagrangeConfig"):
        assert getattr(saferlhf, name) is not None
    assert RLConfig(out="x").lagrange == saferlhf.LagrangeConfig(budget=RLConfig(out="x").budget)  # one set of defaults


def test_safe_rl_trainer_takes_objects(tmp_path):
    tok, policy = _text_parts()
    prompts = Dataset.from_list([{"prompt": p, "category": "x"} for p in PROMPTS])
    trainer = SafeRLTrainer(_rl_args(tmp_path), policy=policy, processing_class=tok, reward_model=_good_count,
                            cost_model=_cost_model(tok), train_dataset=prompts)
    assert isinstance(trainer.processor, TextProcessor)
    result = trainer.train()
    assert len(result["history"]) == 2
    assert all(torch.isfinite(torch.tensor([h["reward"], h["cost"], h["lambda"]])).all() for h in result["history"])
    lines = (tmp_path / "rl" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines if "reward" in json.loads(x)] == [1, 2]
    from transformers import AutoModelForCausalLM

    saved = trainer.save_model(tmp_path / "policy_copy")
    AutoModelForCausalLM.from_pretrained(saved)
    assert load_processor(saved).template == trainer.template


def test_policy_object_without_processing_class_is_a_clear_error(tmp_path):
    tok, policy = _text_parts()
    with pytest.raises(saferlhf.config.ConfigError, match="processing_class"):
        SafeRLTrainer(_rl_args(tmp_path), policy=policy, reward_model=_good_count, cost_model=_good_count,
                      train_dataset=[{"prompt": p} for p in PROMPTS])


def test_sft_and_score_model_trainers_take_objects(tmp_path):
    tok, policy = _text_parts()
    sft_data = Dataset.from_list([{"prompt": p, "response": "step one good"} for p in PROMPTS] * 4)
    sft = SFTTrainer(SFTConfig(out=str(tmp_path / "sft"), max_steps=3, batch_size=4, progress=False),
                     model=policy, processing_class=tok, train_dataset=sft_data)
    before = sft.model.lm_head.weight.detach().clone()
    out = sft.train()
    assert out["steps"] == 3 and not torch.equal(before, sft.model.lm_head.weight.detach())
    assert (tmp_path / "sft" / "config.json").is_file()

    pairs = [{"prompt": p, "response_0": "sorry no", "response_1": "step one bad", "better_response_id": 1,
              "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": False}
             for p in PROMPTS] * 4
    cm = ScoreModelTrainer(CostModelConfig(out=str(tmp_path / "cm"), max_steps=4, batch_size=4, lr=1e-2,
                                           progress=False),
                           model=tiny_llama(tok, hidden_size=32, num_layers=1, num_heads=2, seed=3),
                           processing_class=tok, train_dataset=Dataset.from_list(pairs), kind="cost")
    result = cm.train()
    assert result["steps"] == 4 and "loss" in result["train"]
    assert cm.model.score_type == "cost" and (tmp_path / "cm" / "config.json").is_file()


def _hub_style_llava(tmp_path):
    """A tiny LLaVA folder with only the files the hub ships (config, weights, HF processor files)."""
    from transformers import LlavaProcessor

    model, proc = tiny_llava(vlm_tokenizer(list(WORDS), style="llava"), seed=0)
    hf_proc = LlavaProcessor(image_processor=proc.image_processor, tokenizer=proc.tokenizer,
                             patch_size=16, vision_feature_select_strategy="default",
                             chat_template=proc.tokenizer.chat_template)
    folder = tmp_path / "llava-hub"
    model.save_pretrained(folder)
    hf_proc.save_pretrained(folder)
    return folder, model, proc, hf_proc


def test_hub_style_vlm_folder_reads_as_a_vlm_and_the_image_reaches_the_model(tmp_path):
    folder, model, proc, hf_proc = _hub_style_llava(tmp_path)
    assert not (folder / "vlm_processor.json").exists()
    loaded = load_processor(folder)
    assert isinstance(loaded, VLMProcessor) and loaded.num_image_tokens == proc.num_image_tokens
    wrapped = as_processor(hf_proc)  # an in-memory HF processor object
    assert isinstance(wrapped, VLMProcessor)
    red, blue = Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))
    logits = []
    for image in (red, blue):
        enc = loaded.encode_prompts(["how do i cook rice"], [[image]])
        assert enc.ids[0].count(loaded.image_token_id) == loaded.num_image_tokens
        ids = torch.tensor(enc.ids)
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=torch.ones_like(ids), **loaded.model_kwargs(ids, enc.image_inputs))
        logits.append(out.logits[0, -1])
    assert not torch.allclose(logits[0], logits[1]), "the image did not reach the model"


def test_safe_rl_trainer_with_a_vlm_and_an_hf_processor(tmp_path):
    folder, model, proc, hf_proc = _hub_style_llava(tmp_path)
    img = tmp_path / "red.png"
    Image.new("RGB", (64, 64), (255, 0, 0)).save(img)
    prompts = [{"prompt": p, "image": str(img)} for p in PROMPTS]
    trainer = SafeRLTrainer(_rl_args(tmp_path, critic_init="policy"), policy=model, processing_class=hf_proc,
                            reward_model=_good_count, cost_model=_cost_model(proc.tokenizer), train_dataset=prompts)
    assert trainer.processor.modality == "image-text"
    history = trainer.train()["history"]
    assert len(history) == 2 and all(h["time/generate"] > 0 for h in history)


def test_a_text_processor_passes_attribute_sets_to_its_tokenizer(tmp_path):
    """Setting a tokenizer attribute through the processor reaches the tokenizer: an export
    through a processor whose pad token is EOS (SmolLM2's) re-pads the saved tokenizer, so HF's
    pooling reads the score at the same token as saferlhf."""
    from transformers import AutoModelForSequenceClassification

    from saferlhf.models.export import export_sequence_classification
    from saferlhf.models.score_model import ScoreModel

    tok, policy = _text_parts()
    tok.pad_token = tok.eos_token
    proc = TextProcessor(tok)
    proc.padding_side = "left"
    assert tok.padding_side == "left" and proc.tokenizer is tok
    model = ScoreModel.from_backbone(policy, score_type="reward", score_bias=False, seed=0)
    report = export_sequence_classification(model, tmp_path / "rm_hf", tokenizer=proc)
    assert report["check"]["max_abs_diff"] < 1e-4
    seq = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm_hf")
    assert seq.config.pad_token_id != tok.eos_token_id
