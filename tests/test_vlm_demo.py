"""`saferlhf demo --modality image-text --quick`: the whole Safe RLHF-V pipeline in the image
world (tiny LLaVA), with the text demo's report layout plus the text-only cost model."""

from __future__ import annotations

import json

from saferlhf.cli import main

M_KEYS = ("helpfulness_benign", "harmful_rate", "over_refusal_benign", "model_cost", "constraint_met", "ci95",
          "n_benign", "n_harmful")


def test_image_demo_quick_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--modality", "image-text", "--quick", "--out", str(out), "--no-progress"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["modality"] == "image-text" and report["vlm_style"] == "llava"
    assert set(report["methods"]) == {"sft", "ppo", "ppo_lag"}
    for m in report["methods"].values():
        assert all(k in m for k in M_KEYS)
        assert m["n_benign"] == 30 and m["n_harmful"] == 30
    for key in ("accuracy", "sign_accuracy", "auroc"):
        assert 0.0 <= report["cost_model"][key] <= 1.0
    assert 0.0 <= report["cost_model_text_only"]["auroc"] <= 1.0
    assert 0.0 <= report["reward_model"]["accuracy"] <= 1.0
    assert report["budget"] == -2.0 and report["lagrange"]["rule"] == "pid"
    for stage in ("world", "caption_pretraining", "sft", "reward_model", "cost_model", "cost_model_text_only",
                  "rl_ppo", "rl_ppo_lag", "eval_world", "total"):
        assert report["timings_s"][stage] >= 0
    text = (out / "report.md").read_text()
    assert "Image-aware vs text-only cost model" in text
    assert (out / "training_curves.png").is_file() and (out / "tradeoff.png").is_file()
    # every policy folder is a VLM checkpoint, evaluated on held-out (prompt, image) items
    samples = [json.loads(x) for x in (out / "eval" / "ppo_lag" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and all(s["image"].startswith("images/eval_") for s in samples)
