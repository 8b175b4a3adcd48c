"""The guard model, its checkpoint, the moderation API and the four guard CLI stages (tiny sizes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saferlhf import cli
from saferlhf.data.world import generate_world
from saferlhf.guard.config import GuardTrainConfig
from saferlhf.guard.model import Guard, GuardConfig, GuardEncoder, GuardModel, pool

SMALL = {"n_sft": 50, "n_pairs_train": 150, "n_pairs_eval": 40, "n_prompts_train": 120, "n_eval_benign": 12,
         "n_eval_harmful": 12}


@pytest.fixture(scope="module")
def world_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("guard_world")
    generate_world(out, seed=1, noise=0.1, **SMALL)
    return out


@pytest.fixture(scope="module")
def guard_dir(world_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("guard") / "g"
    rc = cli.main(["guard", "train", "--data", str(world_dir / "pairs_train.jsonl"), "--out", str(out),
                   "--tokenizer", str(world_dir / "tokenizer"), "--tiny-hidden", "32", "--tiny-layers", "1",
                   "--max-steps", "4", "--batch-size", "16", "--max-length", "48", "--no-progress"])
    assert rc == 0
    return out


def test_pooling_and_padding_side():
    h = torch.arange(2 * 3 * 1, dtype=torch.float32).reshape(2, 3, 1)
    right = torch.tensor([[1, 1, 0], [1, 1, 1]])
    left = torch.tensor([[0, 1, 1], [1, 1, 1]])
    assert pool(h, right, "last").flatten().tolist() == [1.0, 5.0]
    assert pool(h, left, "last").flatten().tolist() == [2.0, 5.0]
    assert pool(h, right, "first").flatten().tolist() == [0.0, 3.0]
    assert pool(h, right, "mean").flatten().tolist() == [0.5, 4.0]


def test_trained_guard_checkpoint_and_api(guard_dir):
    for name in ("guard_config.json", "guard_heads.safetensors", "config.json", "train_summary.json",
                 "metrics.jsonl", "COMPLETE"):
        assert (guard_dir / name).exists(), name
    cfg = json.loads((guard_dir / "guard_config.json").read_text())
    assert cfg["taxonomy"] == "pku" and len(cfg["categories"]) == 19 and cfg["moderation"] == "output"
    assert cfg["encoding"] == "template" and cfg["pooling"] == "last" and cfg["heads"]["severity"]
    assert cfg["temperature"] > 0
    guard = Guard.load(guard_dir)
    v = guard.moderate("how do i make bread ?", "first flour then mix then knead then proof finally bake")
    assert set(v) == {"safe", "severity", "categories", "score"} and 0 <= v["score"] <= 1
    assert v["safe"] == (v["score"] < guard.threshold)
    assert (v["severity"] == 0) == v["safe"] and all(c in guard.categories for c in v["categories"])
    prompts = ["how do i make poison ?", "how do i bake a cake ?", "hey how do i make meth ?"]
    responses = ["toxin then mix then heat", "sugar then eggs", "sorry i cannot help with that"]
    scores = guard.score(prompts, responses)
    assert scores.shape == (3,) and np.allclose(scores, guard(prompts, responses))
    # batch order does not change a score (sorting by length inside, padding on the right)
    one_by_one = [guard.score([p], [r])[0] for p, r in zip(prompts, responses)]
    assert np.allclose(scores, one_by_one, atol=1e-5)
    assert ((guard.cost(prompts, responses) > 0) == (scores >= guard.threshold)).all()
    assert [x["score"] for x in guard.moderate_batch(prompts, responses)] == pytest.approx(scores, abs=1e-6)
    with pytest.raises(NotImplementedError, match="text-only"):
        guard.moderate("x", images=["img.png"])
    # verdict rules: safe -> severity 0, no categories; prior corrections shift severity / categories
    k = len(guard.categories)
    guard.config.temperature, guard.config.threshold = 1.0, 0.5
    guard.config.category_bias = [-10.0] * k
    guard.config.category_bias[3] = 10.0
    guard.config.severity_bias = [0.0, 0.0, 0.0, 1.0]
    logits = {"unsafe": np.array([5.0, -5.0]), "severity": np.zeros((2, 4)), "categories": np.zeros((2, k))}
    flagged, safe = guard.verdicts_from_logits(logits)
    assert flagged["categories"] == [guard.categories[3]] and flagged["severity"] == 3 and not flagged["safe"]
    assert safe["safe"] and safe["severity"] == 0 and safe["categories"] == []
    assert flagged["score"] == pytest.approx(1 / (1 + np.exp(-5.0)), abs=1e-6)
    guard = Guard.load(guard_dir)
    # save -> load gives the same logits
    reloaded = GuardModel.from_pretrained(guard_dir)
    enc = GuardEncoder(guard.tokenizer, reloaded.guard_config)
    batch = enc.collate([enc.encode(p, r) for p, r in zip(prompts, responses)])
    with torch.no_grad():
        a, b = reloaded(**batch), guard.model(**batch)
    assert torch.allclose(a.unsafe_logits, b.unsafe_logits) and torch.allclose(a.category_logits, b.category_logits)


def test_encoder_truncation_keeps_the_request_and_the_response_head(guard_dir):
    guard = Guard.load(guard_dir)
    enc = GuardEncoder(guard.tokenizer, GuardConfig(**{**guard.config.to_dict(), "max_length": 12}))
    ids = enc.encode("please tell me how to make poison step by step at home", "toxin " * 30)["input_ids"]
    assert len(ids) == 12
    text = guard.tokenizer.decode(ids)
    assert "ASSISTANT:" in text and text.split("ASSISTANT:")[1].split()[:2] == ["toxin", "toxin"]
    prompt_only = GuardEncoder(guard.tokenizer, GuardConfig(**{**guard.config.to_dict(), "moderation": "input"}))
    assert prompt_only.encode("how do i bake a cake ?", "sugar")["input_ids"] == \
        prompt_only.encode("how do i bake a cake ?")["input_ids"]


def test_moderate_cli_in_order_and_bad_lines(guard_dir, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    rows = [{"prompt": "how do i make poison ?", "response": "toxin then mix", "id": 1, "extra": [1, 2]},
            {"prompt": "how do i bake a cake ?"},
            {"prompt": [{"role": "user", "content": "how do i grow weed ?"}], "response": "seeds then soil"}]
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.jsonl"
    assert cli.main(["guard", "moderate", "--model", str(guard_dir), "--input", str(inp), "--out", str(out)]) == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and all(set(x) == {"safe", "severity", "categories", "score"} for x in lines)
    guard = Guard.load(guard_dir)
    expected = guard.score([r["prompt"] for r in rows], [r.get("response") for r in rows])
    assert [x["score"] for x in lines] == pytest.approx(expected, abs=1e-6)

    for bad, msg in [('{"prompt": "ok"}\nnot json\n', r"in2\.jsonl:2: not valid JSON"),
                     ('{"prompt": "ok"}\n{"response": "x"}\n', r"in2\.jsonl:2: 'prompt' must be"),
                     ('{"prompt": "ok", "response": 3}\n', r"in2\.jsonl:1: 'response' must be a string"),
                     ('[1, 2]\n', r"in2\.jsonl:1: expected a JSON object"),
                     ('{"prompt": "ok"}\n\n{"prompt": "ok"}\n', r"in2\.jsonl:2: empty line"),
                     ('{"prompt": "ok", "image": "x.png"}\n', r"in2\.jsonl:1: has an image")]:
        bad_in, bad_out = tmp_path / "in2.jsonl", tmp_path / "out2.jsonl"
        bad_in.write_text(bad)
        capsys.readouterr()
        assert cli.main(["guard", "moderate", "--model", str(guard_dir), "--input", str(bad_in),
                         "--out", str(bad_out)]) == 2
        import re

        assert re.search(msg, capsys.readouterr().err), msg
        assert not bad_out.exists()


def test_eval_guard_cli(guard_dir, world_dir, tmp_path):
    out = tmp_path / "eval"
    assert cli.main(["eval", "guard", "--model", str(guard_dir), "--data", str(world_dir / "pairs_eval.jsonl"),
                     "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    for k in ("accuracy", "f1", "precision", "recall", "fpr", "auprc", "ece", "severity_macro_accuracy",
              "oracle_f1", "oracle_severity_macro_accuracy"):
        assert k in s, k
    assert len(s["severity"]["confusion_matrix"]) == 4 and s["n"] == sum(map(sum, s["severity"]["confusion_matrix"]))
    assert (out / "reliability.png").stat().st_size > 1000
    assert sum(1 for _ in (out / "predictions.jsonl").open()) == s["n"]


def test_guard_generate_cli(guard_dir, world_dir, tmp_path):
    from saferlhf.data.templates import template_for
    from saferlhf.models.checkpoint import save_policy
    from saferlhf.models.loading import load_tokenizer
    from saferlhf.models.tiny import tiny_llama

    tok = load_tokenizer(world_dir / "tokenizer")
    policy = tmp_path / "policy"
    save_policy(tiny_llama(tok, hidden_size=32, num_layers=1), tok, policy, template=template_for(tok))
    out = tmp_path / "gen"
    assert cli.main(["guard", "generate", "--policy", str(policy), "--guard", str(guard_dir),
                     "--prompts", str(world_dir / "prompts_eval.jsonl"), "--out", str(out), "--rounds", "2",
                     "--world", str(world_dir), "--limit", "10", "--max-new-tokens", "8"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert len(s["flagged_rate"]) == 3 and len(s["rounds_harmful_rate"]) == 3
    assert len(s["rounds_helpfulness_benign"]) == 3 and "harmful_rate" in s["after_fallback"]
    lines = [json.loads(x) for x in (out / "responses.jsonl").read_text().splitlines()]
    assert len(lines) == 10 and all(len(x["history"]) >= 1 for x in lines)


def test_train_config_validation():
    from saferlhf.config import ConfigError, parse_args

    with pytest.raises(ConfigError, match="--data FILE or --preset"):
        parse_args(GuardTrainConfig, ["--out", "x"])
    with pytest.raises(ConfigError, match="not both"):
        parse_args(GuardTrainConfig, ["--out", "x", "--data", "d", "--preset", "prompt-moderation"])
    from saferlhf.trainers.guard import apply_preset

    cfg = apply_preset(parse_args(GuardTrainConfig, ["--out", "x", "--preset", "prompt-moderation", "--lr", "1e-4"]))
    assert cfg.model == "minilm" and cfg.lr == 1e-4 and cfg.moderation == "input"


def test_shared_data_prompt_only_eval(guard_dir, shared_data, tmp_path):
    """BeaverTails evaluation prompts (all harmful): read as prompt-only records labelled unsafe."""
    bt = json.loads((shared_data / "beavertails-evaluation.json").read_text())
    sample = tmp_path / "bt.jsonl"
    first = {}
    for r in bt:
        first.setdefault(r["category"], r)
    sample.write_text("".join(json.dumps(r) + "\n" for r in first.values()))  # one per category
    out = tmp_path / "bt_eval"
    assert cli.main(["eval", "guard", "--model", str(guard_dir), "--data", str(sample), "--out", str(out),
                     "--assume-label", "unsafe"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 14 and s["n_unsafe"] == 14 and len(s["by_category"]) == 14
    from saferlhf.data import load_guard_records
    from saferlhf.trainers.guard import resolve_taxonomy

    pku = load_guard_records(shared_data / "pku-saferlhf" / "alpaca7b-test-sample.jsonl").records
    assert resolve_taxonomy(pku)[0] == "pku" and any(r.severity for r in pku)
