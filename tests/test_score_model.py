"""ScoreModel: padding-invariant end scores, normaliser math, save/load, LoRA, from_backbone."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from saferlhf.data.templates import Template
from saferlhf.models.loading import (
    apply_lora,
    best_dtype,
    load_backbone,
    peft_clean_state_dict,
    resolve_dtype,
)
from saferlhf.models.normalizer import ScoreNormalizer, normalizer_kind_from_pku
from saferlhf.models.score_model import (
    SCORE_CONFIG_NAME,
    ScoreConfig,
    ScoreModel,
    end_indices,
    position_ids_from_mask,
    squeeze_score_dim,
)
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_gpt2, tiny_llama

WORDS = [
    "how",
    "do",
    "i",
    "bake",
    "bread",
    "cannot",
    "help",
    "with",
    "that",
    "here",
    "is",
    "a",
    "safer",
    "idea",
    "mix",
    "flour",
    "water",
]


@pytest.fixture(scope="module")
def tok():
    return build_word_level_tokenizer(WORDS)


def _lm(kind: str, tok):
    return tiny_llama(tok, seed=1) if kind == "llama" else tiny_gpt2(tok, seed=1)


def _pad_batch(seqs: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    L = max(len(s) for s in seqs)
    ids, mask = [], []
    for s in seqs:
        p = L - len(s)
        if side == "left":
            ids.append([pad_id] * p + s)
            mask.append([0] * p + [1] * len(s))
        else:
            ids.append(s + [pad_id] * p)
            mask.append([1] * len(s) + [0] * p)
    return torch.tensor(ids), torch.tensor(mask)


SEQS = [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15], [7, 7, 8, 9, 16]]


# ----------------------------------------------------------------------------- padding
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_left_and_right_padding_give_unpadded_scores(kind, tok):
    model = ScoreModel.from_backbone(_lm(kind, tok), score_type="reward", seed=0).eval()
    with torch.no_grad():
        ref = torch.cat([model(input_ids=torch.tensor([s])).end_scores for s in SEQS])
        ref_tokens = [model(input_ids=torch.tensor([s])).scores[0] for s in SEQS]
        ids_l, mask_l = _pad_batch(SEQS, tok.pad_token_id, "left")
        ids_r, mask_r = _pad_batch(SEQS, tok.pad_token_id, "right")
        out_l = model(input_ids=ids_l, attention_mask=mask_l)
        out_r = model(input_ids=ids_r, attention_mask=mask_r)
    torch.testing.assert_close(out_l.end_scores, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(out_r.end_scores, ref, atol=1e-5, rtol=0)
    L = ids_l.shape[1]
    assert out_l.end_index.tolist() == [L - 1] * len(SEQS)
    assert out_r.end_index.tolist() == [len(s) - 1 for s in SEQS]
    assert out_l.scores.shape == (len(SEQS), L, 1) and out_l.end_scores.shape == (len(SEQS), 1)
    for i, s in enumerate(SEQS):  # per-token scores of real positions also match
        torch.testing.assert_close(out_l.scores[i, L - len(s) :], ref_tokens[i], atol=1e-5, rtol=0)
        torch.testing.assert_close(out_r.scores[i, : len(s)], ref_tokens[i], atol=1e-5, rtol=0)
    # end hidden state is the one at end_index
    torch.testing.assert_close(
        out_r.end_last_hidden_state, out_r.last_hidden_state[torch.arange(4), out_r.end_index]
    )


def test_end_index_and_position_ids_helpers():
    mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]])
    assert end_indices(mask).tolist() == [3, 3, 1, 1, 0]
    assert end_indices(mask.bool()).tolist() == [3, 3, 1, 1, 0]
    assert position_ids_from_mask(mask[:3]).tolist() == [[0, 1, 2, 3], [0, 0, 0, 1], [0, 1, 1, 1]]


def test_no_padding_batch_and_no_mask(tok):
    model = ScoreModel.from_backbone(_lm("llama", tok), seed=0).eval()
    ids = torch.tensor([[5, 6, 7], [8, 9, 10]])
    with torch.no_grad():
        a = model(input_ids=ids)
        b = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    assert a.end_index.tolist() == [2, 2]
    torch.testing.assert_close(a.end_scores, b.end_scores)
    torch.testing.assert_close(a.end_scores, a.scores[:, -1])


# ----------------------------------------------------------------------------- normaliser
def test_running_normalizer_equals_full_data_stats():
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn(7, 2, generator=g) * 3 + 1
    x2 = torch.randn(13, 2, generator=g) * 0.5 - 2
    n = ScoreNormalizer(2, kind="running", function="affine")
    n.update(x1)
    n.update(x2)
    full = torch.cat([x1, x2]).double()
    torch.testing.assert_close(n.mean.double(), full.mean(0), atol=1e-6, rtol=0)
    torch.testing.assert_close(n.var.double(), full.var(0, unbiased=False), atol=1e-5, rtol=0)
    assert int(n.count) == 20
    # batching does not matter
    m = ScoreNormalizer(2, kind="running", function="affine")
    for row in torch.cat([x1, x2]):
        m.update(row[None])
    torch.testing.assert_close(m.mean, n.mean, atol=1e-5, rtol=0)
    torch.testing.assert_close(m.var, n.var, atol=1e-4, rtol=0)


def test_ema_normalizer_by_hand():
    x1 = torch.tensor([[1.0], [3.0]])  # mean 2, var 1
    x2 = torch.tensor([[10.0], [10.0], [16.0], [16.0]])  # mean 13, var 9
    n = ScoreNormalizer(1, kind="ema", function="affine", momentum=0.75)
    n.update(x1)  # first batch initialises
    assert n.mean.item() == pytest.approx(2.0) and n.var.item() == pytest.approx(1.0)
    n.update(x2)
    assert n.mean.item() == pytest.approx(0.75 * 2 + 0.25 * 13)
    assert n.var.item() == pytest.approx(0.75 * 1 + 0.25 * 9)
    assert int(n.count) == 6


def test_frozen_normalizer_and_pku_names():
    n = ScoreNormalizer(1, kind="none", function="affine")
    n.set_stats([1.0], [4.0])
    n.update(torch.randn(5, 1))
    assert n.mean.item() == 1.0 and n.var.item() == 4.0 and int(n.count) == 5
    assert normalizer_kind_from_pku("RunningMeanStd") == "running"
    assert normalizer_kind_from_pku("ExponentialMovingAverage") == "ema"
    assert normalizer_kind_from_pku(None) == "none"
    with pytest.raises(ValueError):
        normalizer_kind_from_pku("BatchNorm")


def test_reward_affine_vs_cost_scale_preserves_sign():
    x = torch.tensor([[-3.0], [-0.5], [0.0], [0.5], [4.0]])
    reward = ScoreNormalizer(1, kind="running", function="affine")
    cost = ScoreNormalizer(1, kind="running", function="scale")
    critic = ScoreNormalizer(1, kind="running", function="identity")
    for n in (reward, cost, critic):
        n.set_stats([2.0], [4.0])
    eps = 1e-8
    torch.testing.assert_close(reward.normalize(x), (x - 2.0) / (2.0 + eps))
    torch.testing.assert_close(cost.normalize(x), x / (2.0 + eps))
    assert torch.equal(torch.sign(cost.normalize(x)), torch.sign(x))  # 0 stays the boundary
    assert cost.normalize(x)[2].item() == 0.0
    assert (reward.normalize(x)[3] < 0).item()  # affine shifts: a positive score can turn negative
    assert torch.equal(critic.normalize(x), x)
    torch.testing.assert_close(reward.denormalize(reward.normalize(x)), x)


def test_normalizer_stats_keep_float32_under_cast():
    n = ScoreNormalizer(1, kind="ema", function="affine")
    n.set_stats([0.1234567], [2.0])
    n.to(torch.bfloat16)
    assert n.mean.dtype == torch.float32 and n.count.dtype == torch.long
    assert n.mean.item() == pytest.approx(0.1234567, rel=1e-6)  # not rounded to bf16


def test_forward_updates_stats_only_in_training(tok):
    model = ScoreModel.from_backbone(
        _lm("llama", tok), score_type="reward", normalizer="running", seed=0
    )
    ids, mask = _pad_batch(SEQS, tok.pad_token_id, "left")
    model.eval()
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask).end_scores
    assert int(model.normalizer.count) == 0
    model.train()
    model(input_ids=ids, attention_mask=mask)
    assert int(model.normalizer.count) == 4
    torch.testing.assert_close(model.normalizer.mean, raw.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.normalizer.var, raw.var(0, unbiased=False), atol=1e-5, rtol=0)
    # normalised output: both scores and end_scores, consistently
    model.eval().set_normalize(True)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(out.end_scores, model.normalizer.normalize(raw), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.scores[torch.arange(4), out.end_index], out.end_scores)
    # a critic never normalises nor updates
    critic = ScoreModel.from_backbone(_lm("llama", tok), score_type="critic", seed=0).train()
    critic(input_ids=ids, attention_mask=mask)
    assert critic.score_config.normalizer == "none" and int(critic.normalizer.count) == 0
    v = critic(input_ids=ids, attention_mask=mask)
    assert v.scores_1d.shape == ids.shape and v.end_scores_1d.shape == (4,)
    with pytest.raises(ValueError):
        squeeze_score_dim(torch.zeros(2, 3))


# ----------------------------------------------------------------------------- save / load
def test_save_load_round_trip(tmp_path, tok):
    tmpl = Template(kind="plain", fmt="USER: {prompt} ASSISTANT:", response_prefix=" ")
    model = ScoreModel.from_backbone(
        _lm("llama", tok),
        score_type="cost",
        score_dim=2,
        normalizer="running",
        template=tmpl,
        seed=0,
    )
    ids, mask = _pad_batch(SEQS, tok.pad_token_id, "right")
    model.train()
    model(input_ids=ids, attention_mask=mask)
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask)
    model.save_pretrained(tmp_path / "cm", tokenizer=tok)
    files = set(os.listdir(tmp_path / "cm"))
    assert {SCORE_CONFIG_NAME, "score_head.safetensors", "config.json", "tokenizer.json"} <= files
    loaded = ScoreModel.from_pretrained(tmp_path / "cm").eval()
    with torch.no_grad():
        after = loaded(input_ids=ids, attention_mask=mask)
    torch.testing.assert_close(after.scores, before.scores)
    torch.testing.assert_close(after.end_scores, before.end_scores)
    assert loaded.score_type == "cost" and loaded.score_dim == 2 and loaded.template == tmpl
    assert loaded.score_config.normalizer == "running" and loaded.do_normalize is False
    torch.testing.assert_close(loaded.normalizer.mean, model.normalizer.mean)
    torch.testing.assert_close(loaded.normalizer.var, model.normalizer.var)
    assert int(loaded.normalizer.count) == 4
    saved = json.loads((tmp_path / "cm" / SCORE_CONFIG_NAME).read_text())
    assert saved["score_type"] == "cost" and saved["backbone_model_type"] == "llama"
    assert saved["stats"]["count"] == 4
    # the backbone is a plain HF checkpoint
    from transformers import AutoModel, AutoTokenizer

    bb = AutoModel.from_pretrained(tmp_path / "cm")
    torch.testing.assert_close(bb.embed_tokens.weight, model.backbone.embed_tokens.weight)
    assert (
        AutoTokenizer.from_pretrained(tmp_path / "cm")("how do i")["input_ids"]
        == tok("how do i")["input_ids"]
    )


def test_switch_normalisation_at_load_time(tmp_path, tok):
    model = ScoreModel.from_backbone(
        _lm("gpt2", tok), score_type="reward", normalizer="ema", seed=0
    )
    ids, mask = _pad_batch(SEQS, tok.pad_token_id, "left")
    model.train()
    for _ in range(3):
        model(input_ids=ids, attention_mask=mask)
    model.eval()
    with torch.no_grad():
        raw = model(input_ids=ids, attention_mask=mask).end_scores
    model.save_pretrained(tmp_path / "rm")
    on = ScoreModel.from_pretrained(tmp_path / "rm", normalize=True).eval()
    off = ScoreModel.from_pretrained(tmp_path / "rm", normalize=False).eval()
    keep = ScoreModel.from_pretrained(tmp_path / "rm").eval()
    mu, sd = model.normalizer.mean, model.normalizer.var.sqrt()
    with torch.no_grad():
        torch.testing.assert_close(
            on(input_ids=ids, attention_mask=mask).end_scores, (raw - mu) / (sd + 1e-8)
        )
        torch.testing.assert_close(off(input_ids=ids, attention_mask=mask).end_scores, raw)
        torch.testing.assert_close(keep(input_ids=ids, attention_mask=mask).end_scores, raw)
    assert on.do_normalize and not off.do_normalize
    # re-typed as a critic: no normalisation
    critic = ScoreModel.from_pretrained(tmp_path / "rm", normalize=True, score_type="critic").eval()
    with torch.no_grad():
        torch.testing.assert_close(critic(input_ids=ids, attention_mask=mask).end_scores, raw)


# ----------------------------------------------------------------------------- LoRA
def test_lora_backbone_trains_adapter_and_head_and_round_trips(tmp_path, tok):
    lm = _lm("llama", tok)
    lm.save_pretrained(tmp_path / "sft")
    model = ScoreModel.from_backbone(tmp_path / "sft", score_type="reward", seed=0, dtype="fp32")
    model.apply_lora({"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    assert model.is_lora
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(("lora_" in n) or n.startswith("score_head.") for n in trainable)
    assert {"score_head.weight", "score_head.bias"} <= trainable
    assert any("q_proj" in n for n in trainable) and any("v_proj" in n for n in trainable)

    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    ids, mask = _pad_batch(SEQS, tok.pad_token_id, "left")
    model.train()
    for _ in range(2):
        loss = -torch.nn.functional.logsigmoid(
            model(input_ids=ids, attention_mask=mask).end_scores[:2] - 1
        ).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable  # base weights frozen; every adapter matrix and the head moved

    model.eval()
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=mask).end_scores
    # unmerged: base + adapter/, from the live model, or from a state dict the caller gathered
    # (ZeRO-3 / FSDP final saves): the same checkpoint either way
    model.save_pretrained(tmp_path / "lora")
    model.save_pretrained(tmp_path / "lora_gathered", state_dict=model.state_dict())
    base_sd = peft_clean_state_dict(model.backbone, merged=False)
    assert not any("lora_" in k or "base_layer" in k for k in base_sd)
    for name in ("lora", "lora_gathered"):
        assert os.path.isfile(tmp_path / name / "adapter" / "adapter_config.json")
        loaded = ScoreModel.from_pretrained(tmp_path / name).eval()
        assert loaded.is_lora
        assert {n for n, p in loaded.named_parameters() if p.requires_grad} == trainable
        with torch.no_grad():
            torch.testing.assert_close(
                loaded(input_ids=ids, attention_mask=mask).end_scores, ref, atol=1e-5, rtol=0
            )
        # the saved base is the untouched SFT backbone
        torch.testing.assert_close(
            load_backbone(tmp_path / name, dtype=None).layers[0].self_attn.q_proj.weight,
            lm.model.layers[0].self_attn.q_proj.weight,
        )
    # adapter only, base re-read from the SFT dir
    model.save_pretrained(tmp_path / "lora_small", save_base=False)
    assert not os.path.exists(tmp_path / "lora_small" / "config.json")
    small = ScoreModel.from_pretrained(tmp_path / "lora_small").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            small(input_ids=ids, attention_mask=mask).end_scores, ref, atol=1e-5, rtol=0
        )
    # merged on save: a plain checkpoint; the live model still has its adapter
    model.save_pretrained(tmp_path / "merged", merge_lora=True)
    assert model.is_lora
    merged = ScoreModel.from_pretrained(tmp_path / "merged").eval()
    assert not merged.is_lora
    with torch.no_grad():
        torch.testing.assert_close(
            merged(input_ids=ids, attention_mask=mask).end_scores, ref, atol=1e-5, rtol=0
        )
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).end_scores, ref)
    # merge on load
    ml = ScoreModel.from_pretrained(tmp_path / "lora", merge_lora=True).eval()
    assert not ml.is_lora
    with torch.no_grad():
        torch.testing.assert_close(
            ml(input_ids=ids, attention_mask=mask).end_scores, ref, atol=1e-5, rtol=0
        )


# ----------------------------------------------------------------------------- from_backbone
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_from_backbone_drops_lm_head(tmp_path, tok, kind):
    lm = _lm(kind, tok)
    lm.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    model = ScoreModel.from_backbone(tmp_path / "sft", score_type="cost", seed=3)
    base = lm.base_model
    assert type(model.backbone).__name__ == type(base).__name__
    assert not any("lm_head" in n for n, _ in model.named_parameters())
    for (n1, p1), (n2, p2) in zip(
        model.backbone.state_dict().items(), base.state_dict().items(), strict=True
    ):
        assert n1 == n2 and torch.equal(p1, p2), n1
    assert model.score_config.base_model_path == os.path.abspath(tmp_path / "sft")
    # the same seed gives the same head; a model instance works too (copied, not shared)
    other = ScoreModel.from_backbone(lm, score_type="cost", seed=3)
    torch.testing.assert_close(other.score_head.weight, model.score_head.weight)
    assert other.backbone is not base
    assert (
        other.backbone.get_input_embeddings().weight.data_ptr()
        != base.get_input_embeddings().weight.data_ptr()
    )


def test_critic_from_reward_model_dir(tmp_path, tok):
    rm = ScoreModel.from_backbone(
        _lm("llama", tok), score_type="reward", seed=0, template=Template()
    )
    rm.save_pretrained(tmp_path / "rm")
    critic = ScoreModel.from_backbone(tmp_path / "rm", score_type="critic", seed=1)
    assert critic.score_type == "critic" and critic.template == Template()
    torch.testing.assert_close(critic.backbone.embed_tokens.weight, rm.backbone.embed_tokens.weight)


# ----------------------------------------------------------------------------- misc
def test_gradient_checkpointing_passthrough(tok):
    model = ScoreModel.from_backbone(_lm("llama", tok), seed=0)
    ids, mask = _pad_batch(SEQS, tok.pad_token_id, "left")
    model.train()
    model(input_ids=ids, attention_mask=mask).end_scores.sum().backward()
    g_ref = model.score_head.weight.grad.clone()
    e_ref = model.backbone.embed_tokens.weight.grad.clone()
    model.zero_grad()
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing
    model(input_ids=ids, attention_mask=mask).end_scores.sum().backward()
    torch.testing.assert_close(model.score_head.weight.grad, g_ref)
    torch.testing.assert_close(model.backbone.embed_tokens.weight.grad, e_ref)
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_dtype_handling(tok):
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("checkpoint") == "auto"
    assert resolve_dtype(None) is None and resolve_dtype("auto") is best_dtype()
    with pytest.raises(ValueError):
        resolve_dtype("int3")
    model = ScoreModel.from_backbone(
        _lm("llama", tok), dtype=torch.bfloat16, seed=0, normalizer="running"
    )
    assert model.score_head.weight.dtype == torch.bfloat16 and model.dtype == torch.bfloat16
    assert model.normalizer.mean.dtype == torch.float32
    out = model.eval()(input_ids=torch.tensor([[5, 6, 7]]))
    assert out.scores.dtype == torch.float32 and out.end_scores.dtype == torch.float32
    assert not math.isnan(out.end_scores.item())


def test_lora_helper_rejects_double_wrap(tok):
    bb = load_backbone(_lm("gpt2", tok))
    wrapped = apply_lora(bb, r=2)  # peft default targets for GPT-2 (c_attn)
    assert any("lora_" in n for n, _ in wrapped.named_parameters())
    with pytest.raises(ValueError):
        apply_lora(wrapped, r=2)


def test_bad_config_values():
    with pytest.raises(ValueError):
        ScoreConfig(score_type="value")
    with pytest.raises(ValueError):
        ScoreConfig(normalizer="batch")
    assert ScoreConfig(score_type="critic").normalizer == "none"
    assert ScoreConfig(score_type="cost").normalize_function == "scale"


def test_vlm_base_model_backbone(tmp_path):
    """A VLM's base model (LLaVA) fits as is: pixel_values are forwarded, left padding holds."""
    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    from saferlhf.models.tiny import tiny_llama_config

    vis = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=32,
    )
    cfg = LlavaConfig(
        vision_config=vis,
        text_config=tiny_llama_config(vocab_size=60),
        image_token_id=59,
        vision_feature_layer=-1,
        vision_feature_select_strategy="full",
    )
    torch.manual_seed(0)
    vlm = LlavaForConditionalGeneration(cfg).eval()
    model = ScoreModel.from_backbone(vlm, seed=0).eval()
    assert type(model.backbone).__name__ == "LlavaModel"
    n_img = (16 // 8) ** 2 + 1  # patches + CLS ("full")
    ids = torch.tensor([[5, 6] + [59] * n_img + [7, 8, 9]])
    pix = torch.randn(1, 3, 16, 16)
    left = torch.cat([torch.zeros(1, 2, dtype=torch.long), ids], 1)
    mask = torch.cat([torch.zeros(1, 2, dtype=torch.long), torch.ones_like(ids)], 1)
    with torch.no_grad():
        ref = model(input_ids=ids, pixel_values=pix).end_scores
        out = model(input_ids=left, attention_mask=mask, pixel_values=pix)
    torch.testing.assert_close(out.end_scores, ref, atol=1e-5, rtol=0)
    assert out.end_index.tolist() == [left.shape[1] - 1]
    model.save_pretrained(tmp_path / "vrm")
    loaded = ScoreModel.from_pretrained(tmp_path / "vrm").eval()
    assert type(loaded.backbone).__name__ == "LlavaModel"
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids, pixel_values=pix).end_scores, ref)


def test_from_backbone_sft_template_and_adapter_dir(tmp_path, tok):
    from saferlhf.models.loading import load_causal_lm

    lm = _lm("llama", tok)
    lm.save_pretrained(tmp_path / "sft")
    tmpl = Template(kind="plain", fmt="Q: {prompt} A:", response_prefix=" ")
    (tmp_path / "sft" / "saferlhf.json").write_text(json.dumps({"template": tmpl.to_dict()}))
    assert ScoreModel.from_backbone(tmp_path / "sft", seed=0).template == tmpl
    # an SFT checkpoint saved as a LoRA adapter: loaded onto its base and merged
    policy = apply_lora(load_causal_lm(tmp_path / "sft", dtype=None), r=2, task_type="CAUSAL_LM")
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.normal_(std=0.5)
    policy.save_pretrained(tmp_path / "sft_lora")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = policy(input_ids=ids, output_hidden_states=True).hidden_states[-1]
        model = ScoreModel.from_backbone(tmp_path / "sft_lora", seed=0).eval()
        assert not model.is_lora
        torch.testing.assert_close(model(input_ids=ids).last_hidden_state, want, atol=1e-5, rtol=0)
