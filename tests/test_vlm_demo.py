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
    # PPO-Lag constrains E[σ(c)] with d calibrated on the held-out pairs (unsafe fraction 0.1)
    cal = report["budget_calibration"]
    assert report["cost_transform"] == "sigmoid" and report["lagrange"]["rule"] == "pid"
    assert 0.0 < report["budget"] < 1.0 and report["budget"] == cal["budget"] and cal["unsafe_fraction"] == 0.1
    s_bar, u_bar = cal["mean_p_unsafe_labelled_safe"], cal["mean_p_unsafe_labelled_unsafe"]
    assert abs(cal["budget"] - (s_bar + 0.1 * (u_bar - s_bar))) < 1e-5
    assert all(0.0 <= m["model_cost"] <= 1.0 for m in report["methods"].values())  # σ(c) units
    for stage in ("world", "caption_pretraining", "sft", "reward_model", "cost_model", "cost_model_text_only",
                  "budget", "rl_ppo", "rl_ppo_lag", "eval_world", "total"):
        assert report["timings_s"][stage] >= 0
    text = (out / "report.md").read_text()
    assert "Image-aware vs text-only cost model" in text
    assert (out / "training_curves.png").is_file() and (out / "tradeoff.png").is_file()
    # every policy folder is a VLM checkpoint, evaluated on held-out (prompt, image) items
    samples = [json.loads(x) for x in (out / "eval" / "ppo_lag" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 60 and all(s["image"].startswith("images/eval_") for s in samples)


def test_image_demo_budget_outside_probability_range_is_a_config_error(tmp_path, capsys):
    rc = main(["demo", "--modality", "image-text", "--quick", "--budget", "-2", "--out", str(tmp_path / "d"),
               "--no-progress"])
    assert rc == 2
    assert "must lie in (0, 1)" in capsys.readouterr().err
    assert not (tmp_path / "d" / "world").exists()  # rejected before any work

