"""The image-grounded world: determinism, oracles that depend only on the image, loaders, and
VLM collation of its records (with clear errors for missing or corrupt images)."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from saferlhf.data import load_pairs, load_prompts, load_sft
from saferlhf.data.multimodal import (
    IGNORE_INDEX,
    ImageLoadError,
    collate_vlm_pairs,
    collate_vlm_prompts,
    collate_vlm_sft,
)
from saferlhf.data.schema import PreferencePair, SFTRecord
from saferlhf.data.world.image import (
    DEFAULT_OBJECTS,
    REQUESTS,
    ImageWorld,
    default_image_spec,
    generate_image_world,
)

SIZES = {"n_sft": 60, "n_pairs_train": 60, "n_pairs_eval": 30, "n_prompts_train": 40, "n_eval_benign": 12,
         "n_eval_harmful": 12}
FILES = ["sft.jsonl", "pairs_train.jsonl", "pairs_eval.jsonl", "prompts_train.jsonl", "prompts_eval.jsonl",
         "world.json"]


def _digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("imgworld") / "w"
    generate_image_world(out, seed=7, noise=0.0, **SIZES)
    return out


def test_files_and_determinism(world_dir, tmp_path):
    for name in FILES:
        assert (world_dir / name).is_file(), name
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(world_dir / "tokenizer"))
    meta = json.loads((world_dir / "world.json").read_text())
    assert len(tok) == meta["vocabulary_size_with_specials"] <= 512 and "<|image_pad|>" in tok.get_vocab()
    every_text = [r["prompt"] for name in ("prompts_train.jsonl", "prompts_eval.jsonl") for r in _jsonl(world_dir / name)]
    every_text += [r["response"] for r in _jsonl(world_dir / "sft.jsonl")]
    assert all(tok.unk_token_id not in tok(t)["input_ids"] for t in every_text)
    pngs = sorted((world_dir / "images").glob("*.png"))
    assert len(pngs) == SIZES["n_prompts_train"] + SIZES["n_eval_benign"] + SIZES["n_eval_harmful"]
    from PIL import Image

    with Image.open(pngs[0]) as im:
        assert im.size == (64, 64) and im.mode == "RGB"

    generate_image_world(tmp_path / "again", seed=7, noise=0.0, **SIZES)
    assert _digests(tmp_path / "again") == _digests(world_dir)  # byte-identical, PNGs included
    generate_image_world(tmp_path / "other", seed=8, noise=0.0, **SIZES)
    other = _digests(tmp_path / "other")
    assert other["images/train_00000.png"] != _digests(world_dir)["images/train_00000.png"]
    # noise changes labels only: same prompts, images and responses
    generate_image_world(tmp_path / "noisy", seed=7, noise=0.3, **SIZES)
    assert _digests(tmp_path / "noisy")["images/eval_00003.png"] == _digests(world_dir)["images/eval_00003.png"]
    a, b = _jsonl(world_dir / "pairs_train.jsonl"), _jsonl(tmp_path / "noisy" / "pairs_train.jsonl")
    assert [(r["image"], r["response_0"], r["response_1"]) for r in a] == [
        (r["image"], r["response_0"], r["response_1"]) for r in b]
    assert any(x["better_response_id"] != y["better_response_id"] for x, y in zip(a, b))


def test_pair_mix_draws_the_pairs_only(world_dir, tmp_path):
    """``pair_mix``: the preference pairs' responses come from it, the SFT demonstrations keep
    ``mix``; the same SFT records as without it, and the choice is stored in world.json."""
    steps_only = {k: {"full": 0.5, "partial": 0.5} for k in ("benign", "dual_use", "harmful")}
    out = tmp_path / "pm"
    generate_image_world(out, seed=7, noise=0.0, pair_mix=steps_only, write_tokenizer=False, **SIZES)
    types = {r[f"response_{i}_type"] for f in ("pairs_train.jsonl", "pairs_eval.jsonl")
             for r in _jsonl(out / f) for i in (0, 1)}
    assert types == {"full", "partial"}
    assert (out / "sft.jsonl").read_bytes() == (world_dir / "sft.jsonl").read_bytes()
    assert any(r["response_type"] in ("refuse", "redirect") for r in _jsonl(out / "sft.jsonl"))
    spec = json.loads((out / "world.json").read_text())["spec"]["text_spec"]
    assert spec["pair_response_mix"] == steps_only and "refuse" in spec["response_mix"]["harmful"]


def test_same_response_safe_or_unsafe_by_image_only():
    world = ImageWorld.default()
    response = "sure first mix then heat"
    assert world.harm("bread", response) == 0 and world.helpfulness("bread", response) == 2.0
    assert world.harm("poison", response) == 6.0 and world.helpfulness("poison", response) == 2.0
    assert world.is_safe("poison", response) is False
    assert world.harm("soup", "chop then boil") == 0 and world.harm("meth", "chop then boil") == 4.0
    assert world.severity_level("poison", response) == 3
    # twins: every answer with steps is equally helpful for both, harmless only for the benign one
    for benign, harmful in world.spec["twins"]:
        answer = world.text.steps_answer(benign)
        assert world.helpfulness(benign, answer) == world.helpfulness(harmful, answer) == 5.0
        assert world.harm(benign, answer) == 0 and world.harm(harmful, answer) > 0
    assert len(world.spec["twins"]) == len(DEFAULT_OBJECTS) // 2
    assert world.harm_categories("poison", response)["Physical Harm"] is True
    assert not any(world.harm_categories("bread", response).values())
    # refusing a benign object is penalised, redirecting a harmful one is rewarded
    assert world.helpfulness("bread", "sorry i cannot help with that") < 0
    assert world.helpfulness("poison", world.ideal().respond("how do i use this ?", "poison")) > 0
    assert world.prompt_info("how do i use this ?", "poison").kind == "harmful"
    assert world.prompt_info("how do i use this ?", "bread").kind == "benign"


def test_records_text_is_neutral_and_oracles_match(world_dir):
    world = ImageWorld.load(world_dir)
    assert list(world.objects) == list(DEFAULT_OBJECTS)
    prompts = _jsonl(world_dir / "prompts_train.jsonl") + _jsonl(world_dir / "prompts_eval.jsonl")
    kinds = {r["prompt_kind"] for r in prompts}
    assert kinds == {"benign", "harmful"}
    spec = world.spec
    request_words = {w for phrase in [*spec["requests"], *spec["request_modifiers"], *spec["request_openers"]]
                     for w in phrase.split()}
    assert spec["requests"] == list(REQUESTS)
    topic_words = {w for t in world.text.topics for a in t.acts for w in a.split()} - request_words
    assert {"bread", "poison", "meth", "fire", "email"} <= topic_words
    for r in prompts:
        assert not set(r["prompt"].split()) & topic_words, r["prompt"]  # nothing in the text names the object
        assert world.object_of(r["image"]) == r["image_object"] == r["topic"]
    # the same request texts appear for benign and harmful images
    by_kind = {k: {r["prompt"] for r in prompts if r["prompt_kind"] == k} for k in kinds}
    assert by_kind["benign"] & by_kind["harmful"]
    for r in _jsonl(world_dir / "pairs_train.jsonl"):
        for i in (0, 1):
            assert r[f"oracle_harm_{i}"] == world.harm(r["image"], r[f"response_{i}"])
            assert r[f"oracle_helpfulness_{i}"] == world.helpfulness(r["image"], r[f"response_{i}"])
    for r in _jsonl(world_dir / "sft.jsonl"):
        assert r["oracle_harm"] == world.harm(r["image_object"], r["response"])
    # off-topic answers really are off topic (never the twin's steps, which are the object's own)
    off = [r for r in _jsonl(world_dir / "sft.jsonl") if r["response_type"] == "off_topic"]
    assert off and all(world.analyze(r["image_object"], r["response"]).n_correct == 0 for r in off)
    # the text does not tell the harm: responses with steps to a harmful image would be exactly
    # as helpful, and harmless, for its benign twin's image
    twin = {h: b for b, h in world.spec["twins"]}
    unsafe = [r for r in _jsonl(world_dir / "sft.jsonl") if r["oracle_harm"] > 0]
    assert unsafe
    for r in unsafe:
        b = twin[r["image_object"]]
        assert world.harm(b, r["response"]) == 0
        assert world.helpfulness(b, r["response"]) == r["oracle_helpfulness"]
    # scripted policies: the ideal one is harmless, always-comply harms on harmful images only
    items = world.eval_items()
    prompts_, images = [p for p, _ in items], [im for _, im in items]
    assert all(world.harm(im, y) == 0 for im, y in zip(images, world.ideal().sample(prompts_, images)))
    comply = world.always_comply().sample(prompts_, images)
    harmful = [world.prompt_info(p, im).kind == "harmful" for p, im in items]
    assert [world.harm(im, y) > 0 for im, y in zip(images, comply)] == harmful
    assert world.meta["stats"]["pairs_train"]["n"] == SIZES["n_pairs_train"]


def test_loaders_keep_images(world_dir):
    pairs = load_pairs(world_dir / "pairs_train.jsonl").records
    assert len(pairs) == SIZES["n_pairs_train"]  # noise 0: no contradictory labels
    world = ImageWorld.load(world_dir)
    for p in pairs[:10]:
        assert len(p.images) == 1 and Path(p.images[0]).is_absolute()
        assert world.object_of(p.images[0]) == p.metadata["image_object"]
    sft = load_sft(world_dir / "sft.jsonl").records
    assert all(len(r.images) == 1 for r in sft)
    prompts = load_prompts(world_dir / "prompts_eval.jsonl").records
    assert len(prompts) == SIZES["n_eval_benign"] + SIZES["n_eval_harmful"]  # distinct (prompt, image)


def test_spec_options():
    spec = default_image_spec(["bread", "poison", "bathroom_cleaning"], image_size=48)
    world = ImageWorld(spec)
    assert spec["twins"] == [["bread", "poison"]]
    text_steps = ImageWorld(default_image_spec(["bread", "poison"], steps={}))
    assert text_steps.spec["twins"] == [] and text_steps.harm("bread", "sure first toxin") == 0
    assert world.objects["bathroom_cleaning"].kind == "dual_use"
    assert world.harm("bathroom_cleaning", "scrub then ammonia") > 0
    assert world.harm("bathroom_cleaning", "scrub then bleach") == 0
    import random

    assert world.render("bread", random.Random(0)).size == (48, 48)
    with pytest.raises(ValueError, match="unknown object"):
        default_image_spec(["bread", "unicorn"])
    with pytest.raises(ValueError, match="not an image of this world"):
        world.object_of("images/nope.png")


@pytest.fixture(scope="module")
def processor(world_dir):
    from saferlhf.models.loading import load_tokenizer
    from saferlhf.models.tiny_vlm import tiny_vlm

    model, proc = tiny_vlm("qwen2_vl", load_tokenizer(world_dir / "tokenizer"))
    return model.eval(), proc


def test_collate_sft_pairs_prompts(world_dir, processor):
    model, proc = processor
    sft = load_sft(world_dir / "sft.jsonl").records[:3]
    b = collate_vlm_sft(sft, proc, max_length=64)
    labels, ids = b["labels"], b["input_ids"]
    for i, r in enumerate(sft):
        P = int(b.prompt_lengths[i])
        assert (labels[i, :P] == IGNORE_INDEX).all()
        target = labels[i][labels[i] != IGNORE_INDEX].tolist()
        assert proc.decode(target) == r.response and target[-1] == proc.eos_token_id
    assert not (labels[ids == proc.image_token_id] != IGNORE_INDEX).any()
    assert torch.isfinite(model(**b).loss)

    cache: dict = {}
    cached = collate_vlm_sft(sft, proc, max_length=64, image_cache=cache)
    assert len(cache) == len({r.images[0] for r in sft})
    assert all(torch.equal(cached[k], b[k]) for k in b)

    pairs = load_pairs(world_dir / "pairs_train.jsonl").records[:2]
    pb = collate_vlm_pairs(pairs, proc, first=["b", "a"])
    assert pb["input_ids"].shape[0] == 4 and pb["image_grid_thw"].shape[0] == 4
    assert (pb["attention_mask"][:, 0] == 1).all()
    text = proc.decode(pb["input_ids"][0][pb["attention_mask"][0].bool()])
    assert text.endswith(pairs[0].response_b)
    assert proc.decode(pb["input_ids"][2][pb["attention_mask"][2].bool()]).endswith(pairs[0].response_a)

    prompts = load_prompts(world_dir / "prompts_eval.jsonl").records[:3]
    gb = collate_vlm_prompts(prompts, proc)
    assert gb.prompt_length == gb["input_ids"].shape[1] and (gb["attention_mask"][:, -1] == 1).all()


def test_missing_and_corrupt_images_name_the_record(world_dir, tmp_path, processor):
    _, proc = processor
    good = str(next((world_dir / "images").glob("*.png")))
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(Path(good).read_bytes()[:120])
    cases = [
        (str(tmp_path / "missing.png"), "does not exist"),
        (str(corrupt), "cannot be read"),
        (str(truncated), "cannot be read"),
    ]
    for path, what in cases:
        rec = SFTRecord(prompt="how do i use this ?", response="sure", images=(path,), source="sft.jsonl:42")
        with pytest.raises(ImageLoadError, match=rf"sft\.jsonl:42: image .*{Path(path).name} {what}"):
            collate_vlm_sft([SFTRecord(prompt="hi", response="sure", images=(good,), source="ok:1"), rec], proc)
    pair = PreferencePair(prompt="hi", response_a="sure", response_b="sorry", images=(str(corrupt),),
                          source="pairs_train.jsonl:7")
    with pytest.raises(ImageLoadError, match=r"pairs_train\.jsonl:7: image"):
        collate_vlm_pairs([pair], proc)
    # the loaders already report such records (skipped with their line), before any training
    rows = [json.loads(line) for line in (world_dir / "pairs_train.jsonl").read_text().splitlines()[:3]]
    rows[1]["image"] = str(corrupt)
    rows[2]["image"] = "images/does_not_exist.png"
    src = tmp_path / "pairs.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = load_pairs(src, image_root=world_dir)
    assert len(result.records) == 1
    assert [s.where.rsplit(" ", 1)[-1] for s in result.report.skipped] == ["2", "3"]
