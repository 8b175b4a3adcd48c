"""`saferlhf demo --modality image-text --quick`: the whole Safe RLHF-V pipeline in the image
world (tiny LLaVA), with the text demo's report layout plus the text-only cost model."""

from __future__ import annotations

import json

import pytest

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
    # PPO-Lag constrains the unsafe rate, E[P(unsafe)] <= q = 0.1, with the CM-V's calibrated P
    con = report["constraint"]
    assert con["form"] == "unsafe_rate" and report["cost_transform"] == "calibrated"
    assert report["budget"] == con["budget_unsafe_rate"] == 0.1 and report["lagrange"]["rule"] == "pid"
    saved = json.loads((out / "cost_model" / "calibration.json").read_text())
    assert con["calibration"]["temperature"] == saved["temperature"] > 0 and saved["n"] > 0
    lagrange = json.loads((out / "rl" / "ppo_lag" / "lagrange.json").read_text())
    assert lagrange["budget_unsafe_rate"] == 0.1 and lagrange["cost_transform"] == "calibrated"
    assert all(0.0 <= m["model_cost"] <= 1.0 for m in report["methods"].values())  # P(unsafe) units
    for stage in ("world", "caption_pretraining", "sft", "reward_model", "cost_model", "cost_model_text_only",
                  "rl_ppo", "rl_ppo_lag", "eval_world", "total"):
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



def test_image_demo_constraint_forms():
    from saferlhf.config import ConfigError
    from saferlhf.config.stages import DemoConfig
    from saferlhf.recipes.image_demo import IMAGE_DEMO_UNSAFE_RATE, _image_constraint

    default = _image_constraint(DemoConfig(modality="image-text"))
    assert default == {"form": "unsafe_rate", "budget": IMAGE_DEMO_UNSAFE_RATE,
                       "budget_unsafe_rate": IMAGE_DEMO_UNSAFE_RATE, "cost_transform": "calibrated"}
    assert _image_constraint(DemoConfig(modality="image-text", budget_unsafe_rate=0.05))["budget"] == 0.05
    # --budget d keeps the uncalibrated σ(c) bound
    raw = _image_constraint(DemoConfig(modality="image-text", budget=0.3))
    assert raw["form"] == "sigmoid_cost" and raw["cost_transform"] == "sigmoid" and raw["budget"] == 0.3
    with pytest.raises(ConfigError, match="not both"):
        DemoConfig(modality="image-text", budget_unsafe_rate=0.1, image_budget=0.2).validate()
