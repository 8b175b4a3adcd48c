"""Safe RLHF-V across the stack: SFT, reward/cost models, rollouts, log-probs and one PPO-Lag
step with images, for both tiny VLM styles (LLaVA, Qwen2-VL) on the CPU; freeze controls; the
image world's evaluation; clear errors (exit code 2) for missing / corrupt images."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from saferlhf.cli import main
from saferlhf.config import ConfigError, from_dict
from saferlhf.config.stages import CostModelConfig, RewardModelConfig, RLConfig, SFTConfig
from saferlhf.data import load_pairs
from saferlhf.data.world.image import generate_image_world
from saferlhf.models.loading import load_tokenizer
from saferlhf.models.policy import ReferenceModel, forward_logprobs
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.tiny_vlm import (
    VLMProcessor,
    freeze_vlm_parts,
    is_vlm_dir,
    load_processor,
    save_vlm,
    tiny_vlm,
    vlm_parts,
)
from saferlhf.rollout.base import SamplingParams
from saferlhf.rollout.hf import HFRolloutBackend

STYLES = ["llava", "qwen2_vl"]
SIZES = {"n_sft": 48, "n_pairs_train": 48, "n_pairs_eval": 16, "n_prompts_train": 24, "n_eval_benign": 6,
         "n_eval_harmful": 6}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vlmstack") / "world"
    generate_image_world(out, seed=3, noise=0.0, objects=["bread", "poison", "soup", "meth"], **SIZES)
    return out


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _changed(a: dict, b: dict, needle: str) -> bool:
    keys = [k for k in a if needle in k]
    assert keys, needle
    return any(not torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture(scope="module", params=STYLES)
def stack(request, world, tmp_path_factory):
    """SFT (vision tower frozen) → reward model → cost model, a few steps each, for one style."""
    style = request.param
    root = tmp_path_factory.mktemp(f"stack_{style}")
    model, proc = tiny_vlm(style, load_tokenizer(world / "tokenizer"), hidden_size=32, num_heads=2,
                           vision_hidden_size=16, num_layers=1, seed=0)
    save_vlm(model, proc, root / "init")
    run = dict(max_steps=2, batch_size=8, progress=False, log_every=1, max_length=96)
    from saferlhf.trainers.score import train_score_model
    from saferlhf.trainers.sft import run_sft

    run_sft(SFTConfig(data=str(world / "sft.jsonl"), model=str(root / "init"), out=str(root / "sft"),
                      freeze=["vision_tower"], lr=1e-2, **run))
    rm = train_score_model(RewardModelConfig(model=str(root / "sft"), data=str(world / "pairs_train.jsonl"),
                                             eval_data=str(world / "pairs_eval.jsonl"), out=str(root / "rm"), **run),
                           "reward")
    cm = train_score_model(CostModelConfig(model=str(root / "sft"), data=str(world / "pairs_train.jsonl"),
                                           eval_data=str(world / "pairs_eval.jsonl"), out=str(root / "cm"),
                                           freeze=["projector"], **run), "cost")
    return {"style": style, "root": root, "rm": rm, "cm": cm}


def test_sft_and_score_models_train_on_images_with_freeze(stack):
    root = stack["root"]
    assert is_vlm_dir(root / "sft") and is_vlm_dir(root / "rm") and is_vlm_dir(root / "cm")
    init, sft = _weights(root / "init"), _weights(root / "sft")
    vision = "vision_tower" if stack["style"] == "llava" else "visual.blocks"
    assert not _changed(init, sft, vision)  # frozen
    assert _changed(init, sft, "layers.0.mlp")  # the language model trained
    if stack["style"] == "qwen2_vl":  # the merger (projector) lives inside `visual` and still trains
        assert _changed(init, sft, "visual.merger")
    cm = _weights(root / "cm")
    proj = "multi_modal_projector" if stack["style"] == "llava" else "visual.merger"
    assert not _changed({k.removeprefix("model."): v for k, v in sft.items()}, cm, proj)
    for res, keys in ((stack["rm"], ("accuracy",)), (stack["cm"], ("accuracy", "sign_accuracy", "auroc"))):
        assert res["steps"] == 2 and all(0.0 <= res["eval"][k] <= 1.0 for k in keys)


def test_cost_model_scores_depend_on_the_image(stack, world):
    """The CM-V reads the pair's image: the same (prompt, response) scores differently with
    another image, and the trainer-side and eval-side encodings agree."""
    from saferlhf.eval.score_eval import score_pairs

    cm = ScoreModel.from_pretrained(stack["root"] / "cm").eval()
    proc = load_processor(stack["root"] / "cm")
    assert isinstance(proc, VLMProcessor)
    pairs = load_pairs(world / "pairs_eval.jsonl").records[:4]
    sa, _ = score_pairs(cm, proc, cm.template, pairs, max_length=96, batch_size=3)
    imgs = [Image.open(p.images[0]).convert("RGB") for p in pairs]
    with torch.no_grad():
        b = proc.prepare([p.prompt for p in pairs], imgs, [p.response_a for p in pairs])
        direct = cm(**b).end_scores[:, 0].numpy()
        b2 = proc.prepare([p.prompt for p in pairs], imgs[1:] + imgs[:1], [p.response_a for p in pairs])
        swapped = cm(**b2).end_scores[:, 0].numpy()
    assert direct == pytest.approx(sa, abs=1e-5)
    assert abs(direct - swapped).max() > 1e-6


def test_one_ppo_lag_step_with_images(stack, world):
    root = stack["root"]
    cfg = from_dict(RLConfig, dict(
        algo="ppo_lag", policy=str(root / "sft"), reward_model=str(root / "rm"), cost_model=str(root / "cm"),
        prompts=str(world / "prompts_train.jsonl"), eval_prompts=str(world / "prompts_eval.jsonl"),
        out=str(root / "rl"), iterations=1, rollout_batch_size=4, n_samples=2, mini_batch_size=4, ppo_epochs=2,
        max_new_tokens=6, progress=False, actor_freeze=["vision_tower"], critic_freeze=["vision_tower"]))
    from saferlhf.trainers.rl import SafeRLTrainer

    tr = SafeRLTrainer(cfg)
    assert tr.processor.modality == "image-text" and not tr.reward_scorer.retokenizes
    batch, t, _ = tr.make_experience(0)
    image_ids = set(tr.tokenizer.image_token_ids)
    assert not image_ids & set(batch.responses[batch.response_mask.bool()].tolist())  # never sampled
    assert batch.image_inputs is not None and len(batch.image_inputs.images_per_row) == len(batch) == 8
    # scorers read the rollout's images: the reward equals a direct score of the row with its image
    P = batch.prompt_length
    vision = tr.tokenizer.model_kwargs(batch.sequences, batch.image_inputs)
    with torch.no_grad():
        direct = tr.reward_scorer.model(input_ids=batch.sequences, attention_mask=batch.attention_mask,
                                        **vision).end_scores[:, 0]
    torch.testing.assert_close(t.reward, direct)
    # old log-probs with micro-batches (images sliced with the rows) equal the full batch
    kw = tr._logprob_vision(batch.sequences, batch.image_inputs)
    with torch.no_grad():
        mb = forward_logprobs(tr.policy, batch.sequences, batch.attention_mask, prompt_length=P,
                              micro_batch_size=3, response_mask=batch.response_mask, **kw)
    torch.testing.assert_close(mb, t.logp_old, atol=1e-5, rtol=0)
    parts = vlm_parts(tr.policy)
    projector = {id(p) for m in parts["projector"] for p in m.parameters()}
    tower = [p for m in parts["vision_tower"] for p in m.parameters() if id(p) not in projector]
    assert tower and all(not p.requires_grad for p in tower)
    tower_before = [p.detach().clone() for p in tower]
    lm_before = [p.detach().clone() for m in parts["language_model"] for p in m.parameters()]
    stats = tr.ppo_update(batch, t)
    assert stats["train/ratio_first_minibatch_max_dev"] < 1e-5
    assert all(torch.isfinite(torch.tensor(v)) for k, v in stats.items() if k.endswith("loss"))
    assert all(torch.equal(a, b) for a, b in zip(tower_before, tower))  # frozen
    assert any(not torch.equal(a, b.detach()) for a, b in zip(
        lm_before, [p for m in parts["language_model"] for p in m.parameters()]))  # trained
    tr.state.step = 1
    tr.save(root / "rl")
    assert is_vlm_dir(root / "rl" / "policy")


def test_eval_world_cli_on_image_world(stack, world, tmp_path):
    root = stack["root"]
    rc = main(["eval", "world", "--policy", str(root / "sft"), "--world", str(world), "--cost-model",
               str(root / "cm"), "--out", str(tmp_path / "ev"), "--modality", "image-text", "--n-boot", "20",
               "--max-new-tokens", "6"])
    assert rc == 0
    s = json.loads((tmp_path / "ev" / "summary.json").read_text())
    assert s["n_benign"] == 6 and s["n_harmful"] == 6
    for k in ("helpfulness_benign", "harmful_rate", "over_refusal_benign", "model_cost", "constraint_met", "ci95"):
        assert k in s
    samples = [json.loads(x) for x in (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()]
    assert all(x["image"].startswith("images/eval_") for x in samples)
    # --cost-transform sigmoid: the same samples, each cost is σ(c) (what RL constrained)
    rc = main(["eval", "world", "--policy", str(root / "sft"), "--world", str(world), "--cost-model",
               str(root / "cm"), "--out", str(tmp_path / "ev_sig"), "--n-boot", "20", "--max-new-tokens", "6",
               "--cost-transform", "sigmoid", "--budget", "0.5"])
    assert rc == 0
    sig = [json.loads(x) for x in (tmp_path / "ev_sig" / "samples.jsonl").read_text().splitlines()]
    assert [x["response"] for x in sig] == [x["response"] for x in samples]
    for a, b in zip(samples, sig):
        assert abs(b["model_cost"] - 1.0 / (1.0 + math.exp(-a["model_cost"]))) < 1e-5
    # the budget helper samples text prompts only: a VLM policy is a clear configuration error
    if stack["style"] == "llava":
        rc = main(["budget", "--policy", str(root / "sft"), "--cost-model", str(root / "cm"),
                   "--prompts", str(world / "prompts_train.jsonl")])
        assert rc == 2


def test_missing_image_at_eval_is_exit_2_naming_the_record(stack, world, tmp_path, capsys):
    if stack["style"] != "llava":
        pytest.skip("one style suffices for the CLI error path")
    import shutil

    w = tmp_path / "w"
    shutil.copytree(world, w)
    rec = json.loads((w / "prompts_eval.jsonl").read_text().splitlines()[2])
    (w / rec["image"]).unlink()
    rc = main(["eval", "world", "--policy", str(stack["root"] / "sft"), "--world", str(w),
               "--out", str(tmp_path / "ev"), "--n-boot", "10", "--max-new-tokens", "4"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "prompts_eval.jsonl:3" in err and Path(rec["image"]).name in err and "does not exist" in err
    assert "Traceback" not in err
    # a corrupt image in the SFT data: the loader reports the record, --on-bad-record error stops
    bad = json.loads((w / "sft.jsonl").read_text().splitlines()[4])
    (w / bad["image"]).write_bytes(b"\x89PNG\r\n\x1a\n broken")
    rc = main(["sft", "--data", str(w / "sft.jsonl"), "--model", "tiny-llava", "--tokenizer", str(w / "tokenizer"),
               "--out", str(tmp_path / "sft"), "--on-bad-record", "error", "--max-steps", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "sft.jsonl" in err and Path(bad["image"]).name in err and "Traceback" not in err


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    return Image.fromarray((torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy(), "RGB")


@pytest.mark.parametrize("style", STYLES)
def test_rollout_and_logprobs_mixed_resolutions(style, world):
    """Images of different sizes in one batch (Qwen2-VL: different patch grids), n samples per
    prompt, generation split in chunks: rows keep their own images, the greedy samples equal
    each prompt generated alone, micro-batched log-probs equal the whole batch, and the
    reference (a frozen copy) gives the same log-probs before any update."""
    model, proc = tiny_vlm(style, load_tokenizer(world / "tokenizer"), seed=1)
    model.eval()
    prompts = ["how do i use this ?", "what can i do with this ?", "give me steps for this"]
    images = [_image(64, 64, 0), _image(80, 48, 1), _image(48, 96, 2)]
    vb = proc.prepare(prompts, images)
    if style == "qwen2_vl":
        assert len({tuple(g.tolist()) for g in vb.image_inputs.image_grid_thw}) == 3
    ids = [r[m.bool()].tolist() for r, m in zip(vb["input_ids"], vb["attention_mask"])]
    backend = HFRolloutBackend(model, proc, batch_size=4)
    greedy = SamplingParams(temperature=0, max_new_tokens=5)
    batch = backend.generate(ids, n=2, sampling=greedy, image_inputs=vb.image_inputs)
    assert len(batch) == 6 and batch.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    for i in range(3):
        one = proc.prepare([prompts[i]], [images[i]])
        alone = HFRolloutBackend(model, proc).generate([ids[i]], sampling=greedy, image_inputs=one.image_inputs)
        assert batch.response_token_ids(2 * i) == alone.response_token_ids(0)
    kw = proc.vision_logprob_kwargs(batch.sequences, batch.image_inputs)
    P = batch.prompt_length
    full = forward_logprobs(model, batch.sequences, batch.attention_mask, prompt_length=P,
                            response_mask=batch.response_mask, **kw)
    mb = forward_logprobs(model, batch.sequences, batch.attention_mask, prompt_length=P, micro_batch_size=2,
                          response_mask=batch.response_mask, **kw)
    torch.testing.assert_close(mb, full, atol=1e-5, rtol=0)
    ref = ReferenceModel(model)(batch.sequences, batch.attention_mask, prompt_length=P,
                                response_mask=batch.response_mask, **kw)
    torch.testing.assert_close(ref, full, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="image_inputs"):  # raw pixel_values cannot be split by rows
        forward_logprobs(model, batch.sequences, batch.attention_mask, prompt_length=P, micro_batch_size=2,
                         **proc.logprob_kwargs(batch.sequences, batch.image_inputs))


def test_freeze_options_are_validated(world, tmp_path):
    from saferlhf.config import parse_args

    with pytest.raises(ConfigError, match="unknown VLM part"):
        parse_args(SFTConfig, ["--data", "x", "--out", "y", "--freeze", "vision"])
    with pytest.raises(ConfigError, match="actor_freeze"):
        parse_args(RLConfig, ["--policy", "p", "--reward-model", "r", "--cost-model", "c", "--prompts", "x",
                              "--out", "y", "--actor-freeze", "eyes"])
    from saferlhf.models.tiny import tiny_llama

    text = tiny_llama(load_tokenizer(world / "tokenizer"), hidden_size=32, num_layers=1, num_heads=1)
    with pytest.raises(ValueError, match="no such part"):
        freeze_vlm_parts(text, ["vision_tower"])
    model, _ = tiny_vlm("llava", load_tokenizer(world / "tokenizer"))
    counts = freeze_vlm_parts(model, ["language_model", "vision_tower"])
    assert counts["language_model"] == 0 and counts["vision_tower"] == 0 and counts["projector"] > 0
    assert not model.lm_head.weight.requires_grad
    # a text model cannot be given VLM freeze options
    tiny_dir = tmp_path / "tiny"
    text.save_pretrained(tiny_dir)
    load_tokenizer(world / "tokenizer").save_pretrained(tiny_dir)
    rc = main(["sft", "--data", str(world / "sft.jsonl"), "--model", str(tiny_dir), "--out", str(tmp_path / "o"),
               "--freeze", "vision_tower", "--max-steps", "1"])
    assert rc == 2


def test_world_generate_cli_image_text(tmp_path):
    out = tmp_path / "iw"
    rc = main(["world", "generate", "--out", str(out), "--modality", "image-text", "--n-sft", "4",
               "--n-pairs-train", "4", "--n-pairs-eval", "2", "--n-prompts-train", "4", "--n-eval-benign", "2",
               "--n-eval-harmful", "2"])
    assert rc == 0
    meta = json.loads((out / "world.json").read_text())
    assert meta["modality"] == "image-text" and (out / "tokenizer").is_dir()
    assert len(list((out / "images").glob("*.png"))) == meta["n_images"] == 8
