"""``saferlhf export`` of a guard's unsafe score, and of a cost model's ``calibration.json``.

Tiny guards built from configs in code (2 layers, 64 hidden, word-level tokenizer), no training:
the heads are set by hand so that every part of the fold (1/T, the head bias) matters.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from saferlhf.cli import main
from saferlhf.config import ConfigError
from saferlhf.guard.model import Guard, GuardConfig, GuardModel
from saferlhf.models.loading import load_backbone
from saferlhf.models.tiny import build_word_level_tokenizer, tiny_gpt2, tiny_llama

WORDS = ["how", "do", "i", "bake", "bread", "make", "a", "bomb", "mix", "flour", "water", "cannot",
         "help", "with", "that", "here", "is", "steps", "buy", "powder"]
PROMPTS = ["how do i bake bread", "how do i make a bomb", "help with a bomb", "buy powder"]
RESPONSES = ["mix flour water and bake bread", "here is a bomb", "cannot help with that", "buy powder mix powder"]
T, THRESHOLD = 1.7, 0.3


@pytest.fixture(scope="module")
def tok():
    return build_word_level_tokenizer(WORDS)


def _guard(tok, *, backbone="llama", unsafe_bias=False, bias_value=0.8, **cfg) -> Guard:
    lm = (tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4, seed=3) if backbone == "llama"
          else tiny_gpt2(tok, seed=3))
    gcfg = GuardConfig(categories=["violence", "weapons"], temperature=T, threshold=THRESHOLD,
                       unsafe_bias=unsafe_bias, heads={"unsafe": True, "severity": True, "categories": True}, **cfg)
    torch.manual_seed(0)
    model = GuardModel(load_backbone(lm), gcfg)
    with torch.no_grad():
        model.head.weight.mul_(8.0)  # logits of order 1, so a missing 1/T or bias shows
        model.head.bias.fill_(bias_value)
    return Guard(model.eval(), tok)


def _save(guard: Guard, path, tok):
    guard.model.save_pretrained(path, tokenizer=tok)
    return path


def _hf_logits(folder, guard: Guard, side: str) -> torch.Tensor:
    """The exported model's logits on the guard's own encodings of PROMPTS/RESPONSES."""
    from transformers import AutoModelForSequenceClassification

    from saferlhf.data.collate import pad_sequences

    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    seqs = [guard.encoder.encode(p, r)["input_ids"] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    ids, mask = pad_sequences(seqs, hf.config.pad_token_id, side=side)
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask).logits[:, 0].double()


def _log_odds(guard: Guard) -> torch.Tensor:
    """What ``saferlhf guard moderate`` thresholds: logit(score) = z / T."""
    return torch.as_tensor(guard.logits(PROMPTS, RESPONSES)["unsafe"] / guard.config.temperature,
                           dtype=torch.float64)


def test_exported_logit_is_the_guards_calibrated_log_odds(tmp_path, tok):
    from transformers import AutoModelForSequenceClassification

    guard = _guard(tok)
    s = sorted(guard.score(PROMPTS, RESPONSES))
    threshold = round((s[1] + s[2]) / 2, 6)  # some texts flagged, some not
    guard.config.threshold = threshold
    src = _save(guard, tmp_path / "g", tok)
    out = tmp_path / "g_hf"
    assert main(["export", "--model", str(src), "--out", str(out)]) == 0
    hf, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert type(hf).__name__ == "LlamaForSequenceClassification" and hf.config.num_labels == 1
    assert hf.config.id2label == {0: "unsafe"}
    guard = Guard.load(src)
    expected = _log_odds(guard)
    assert expected.abs().max() > 0.5 and expected.std() > 0.1  # a wrong fold cannot hide in tiny logits
    for side in ("right", "left"):
        torch.testing.assert_close(_hf_logits(out, guard, side), expected, atol=1e-4, rtol=0)
    # sigmoid(logit) is the guard's score; logit >= logit(t) is exactly its flag
    logits = _hf_logits(out, guard, "right")
    verdicts = guard.moderate_batch(PROMPTS, RESPONSES)
    assert [v["score"] for v in verdicts] == pytest.approx(torch.sigmoid(logits).tolist(), abs=1e-5)
    meta = json.loads((out / "saferlhf.json").read_text())
    assert meta["kind"] == "guard_unsafe_export" and meta["threshold"] == threshold
    assert meta["logit_threshold"] == pytest.approx(math.log(threshold / (1 - threshold)))
    assert [not v["safe"] for v in verdicts] == (logits >= meta["logit_threshold"]).tolist()
    assert len({v["safe"] for v in verdicts}) == 2  # both decisions occur, so the comparison means something
    card = (out / "README.md").read_text()
    assert "log-odds" in card and f"logit >= {meta['logit_threshold']:.6g}" in card and f"{threshold:.6g}" in card
    assert "category head (2 categories)" in card
    # saferlhf reads it back as a cost model: cost = the log-odds
    from saferlhf.data.collate import pad_sequences
    from saferlhf.data.templates import encode_prompt_response
    from saferlhf.models.score_model import ScoreModel

    sm = ScoreModel.from_pretrained(out).eval()
    assert sm.score_type == "cost"
    seqs = [encode_prompt_response(tok, sm.template, p, r)[0] for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    ids, mask = pad_sequences(seqs, tok.pad_token_id, side="right")
    with torch.no_grad():
        cost = sm(input_ids=ids, attention_mask=mask).end_scores[:, 0].double()
    torch.testing.assert_close(cost, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backbone", ["llama", "gpt2"])
def test_guard_folder_never_loads_as_sequence_classification(tmp_path, tok, backbone):
    from transformers import AutoModelForSequenceClassification

    src = _save(_guard(tok, backbone=backbone), tmp_path / "g", tok)
    assert json.loads((src / "config.json").read_text())["architectures"] == ["SaferlhfGuardModel"]
    for kw in ({}, {"num_labels": 1}, {"num_labels": 3}):
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            AutoModelForSequenceClassification.from_pretrained(src, **kw)


def test_unfoldable_head_bias_refuses_or_drops_with_the_offset(tmp_path, tok, capsys):
    guard = _guard(tok, unsafe_bias=True, bias_value=0.8)
    src = _save(guard, tmp_path / "g", tok)
    out = tmp_path / "g_hf"
    for policy in ("auto", "exact"):
        assert main(["export", "--model", str(src), "--out", str(out), "--bias", policy]) == 2
        err = capsys.readouterr().err
        assert "RMSNorm" in err and "--unsafe-bias false" in err and "--bias drop" in err
        assert not out.exists()
    assert main(["export", "--model", str(src), "--out", str(out), "--normalize", "on"]) == 2
    assert "applies to reward / cost models only" in capsys.readouterr().err
    assert main(["export", "--model", str(src), "--out", str(out), "--bias", "drop"]) == 0
    meta = json.loads((out / "saferlhf.json").read_text())
    offset = 0.8 / T
    assert meta["score_offset"] == pytest.approx(offset, abs=1e-6)
    assert meta["logit_threshold"] == pytest.approx(math.log(THRESHOLD / (1 - THRESHOLD)) - offset, abs=1e-6)
    reloaded = Guard.load(src)
    for side in ("right", "left"):
        torch.testing.assert_close(_hf_logits(out, reloaded, side) + offset, _log_odds(reloaded), atol=1e-4, rtol=0)
    assert "Offset" in (out / "README.md").read_text()


def test_head_bias_folds_into_a_layernorm_bias(tmp_path, tok):
    from saferlhf.guard.export import export_guard_unsafe

    guard = _guard(tok, backbone="gpt2", unsafe_bias=True, bias_value=-1.1)
    ln_bias = guard.model.backbone.ln_f.bias.detach().clone()
    report = export_guard_unsafe(guard, tmp_path / "x")
    assert report["fold"]["constant_goes_to"] == "norm" and report["score_offset"] == 0.0
    assert report["fold"]["constant"] == pytest.approx(-1.1 / T, abs=1e-6)
    assert torch.equal(guard.model.backbone.ln_f.bias, ln_bias)  # the live guard is left as it was
    torch.testing.assert_close(_hf_logits(tmp_path / "x", guard, "right"), _log_odds(guard), atol=1e-4, rtol=0)


def test_unsafe_bias_off_keeps_the_constant_out_of_the_logit(tok):
    guard = _guard(tok, unsafe_bias=False, bias_value=5.0)  # a stored bias entry is ignored
    w, b = guard.model.unsafe_head()
    assert b == 0.0
    batch = guard.encoder.collate([guard.encoder.encode(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    out = guard.model(**batch)
    with torch.no_grad():
        torch.testing.assert_close(out.unsafe_logits, out.pooled @ w, atol=1e-5, rtol=0)
        torch.testing.assert_close(out.severity_logits, out.pooled @ guard.model.head.weight[1:5].T + 5.0,
                                   atol=1e-5, rtol=0)
    (out.unsafe_logits.sum() + out.severity_logits.sum()).backward()
    grad = guard.model.head.bias.grad
    assert grad[0] == 0.0 and (grad[1:5] == len(PROMPTS)).all()  # the other rows keep their bias


def test_a_wrong_fold_is_caught_and_nothing_is_written(tmp_path, tok, monkeypatch):
    import saferlhf.guard.export as ge

    right = ge.guard_unsafe_fold
    monkeypatch.setattr(ge, "guard_unsafe_fold", lambda g: {**right(g), "weight": right(g)["weight"] * T})  # no 1/T
    with pytest.raises(RuntimeError, match="differ"):
        ge.export_guard_unsafe(_guard(tok), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_guards_no_hf_class_can_reproduce_are_refused(tmp_path, tok):
    from saferlhf.guard.export import export_guard_unsafe

    with pytest.raises(ConfigError, match="pools 'mean'.*--pooling last"):
        export_guard_unsafe(_guard(tok, pooling="mean"), tmp_path / "x")
    # an input (prompt-only) guard exports, but is refused as a reward / cost model
    guard = _guard(tok, moderation="input")
    report = export_guard_unsafe(guard, tmp_path / "inp")
    assert report["score_type"] is None
    hf = _hf_logits(tmp_path / "inp", guard, "left")
    torch.testing.assert_close(hf, _log_odds(guard), atol=1e-4, rtol=0)
    from saferlhf.models.score_model import ScoreModel

    with pytest.raises(ConfigError, match="cannot serve as a reward / cost model"):
        ScoreModel.from_pretrained(tmp_path / "inp")
    assert not (tmp_path / "x").exists()


def test_cost_model_calibration_is_copied_and_named_in_the_card(tmp_path, tok):
    from saferlhf.models.score_model import ScoreModel

    lm = tiny_llama(tok, hidden_size=64, num_layers=2, num_heads=4, seed=1)
    cm = ScoreModel.from_backbone(lm, score_type="cost", score_bias=False, seed=0)
    src = tmp_path / "cm"
    cm.save_pretrained(src, tokenizer=tok)
    calibration = '{"temperature": 1.5, "offset": -0.25, "n": 40}\n'
    (src / "calibration.json").write_text(calibration)
    out = tmp_path / "cm_hf"
    assert main(["export", "--model", str(src), "--out", str(out)]) == 0
    assert (out / "calibration.json").read_text() == calibration
    assert ("calibration.json maps the logit c to P(unsafe) = σ((c − offset)/temperature)"
            in (out / "README.md").read_text().replace("`", ""))
    assert json.loads((out / "saferlhf.json").read_text())["files"] == ["calibration.json"]
    # a calibration of the saved score does not fit another normalisation: refused, nothing written
    assert main(["export", "--model", str(src), "--out", str(tmp_path / "cm_on"), "--normalize", "on"]) == 2
    assert not (tmp_path / "cm_on").exists()
    # a reward model's folder has no calibration to carry
    rm = ScoreModel.from_backbone(lm, score_type="reward", score_bias=False, seed=0)
    rm.save_pretrained(tmp_path / "rm", tokenizer=tok)
    assert main(["export", "--model", str(tmp_path / "rm"), "--out", str(tmp_path / "rm_hf")]) == 0
    assert not (tmp_path / "rm_hf" / "calibration.json").exists()


def test_trained_guard_without_unsafe_bias_exports_exactly(tmp_path, tok):
    """`guard train --unsafe-bias false` (CLI) -> `export` with the default --bias auto: exact."""
    rows = [{"prompt": p, "response_0": r0, "response_1": r1, "better_response_id": 0, "safer_response_id": 0,
             "is_response_0_safe": True, "is_response_1_safe": False}
            for p in PROMPTS for r0, r1 in (("cannot help with that", "here is a bomb"),
                                            ("mix flour water", "buy powder mix powder"))]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows * 3))
    tok.save_pretrained(tmp_path / "tok")
    src, out = tmp_path / "g", tmp_path / "g_hf"
    assert main(["guard", "train", "--data", str(data), "--out", str(src), "--tokenizer", str(tmp_path / "tok"),
                 "--tiny-hidden", "32", "--tiny-layers", "1", "--max-steps", "3", "--batch-size", "8",
                 "--max-length", "32", "--unsafe-bias", "false", "--no-progress"]) == 0
    cfg = json.loads((src / "guard_config.json").read_text())
    assert cfg["unsafe_bias"] is False
    assert main(["export", "--model", str(src), "--out", str(out)]) == 0
    guard = Guard.load(src)
    assert guard.model.unsafe_head()[1] == 0.0
    for side in ("right", "left"):
        torch.testing.assert_close(_hf_logits(out, guard, side), _log_odds(guard), atol=1e-4, rtol=0)
    card = (out / "README.md").read_text()
    assert "## Data" in card and "pairs.jsonl" in card and "## Metrics" in card
