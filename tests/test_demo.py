"""`saferlhf demo --quick`: the whole pipeline runs and its artefacts are complete and consistent.

Quick mode trains for seconds, so this asserts only what it honestly can: every stage ran,
every file of the contract exists, the report's numbers are consistent with the per-policy
summaries, and the learned reward and cost models agree with the oracles better than chance.
The science (PPO-Lag vs PPO) is checked by the full demo and the benchmarks.
"""

import json

import pytest

from saferlhf import cli


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    # the default constraint (unsafe rate) plus the paper's raw SFT-mean budget beside it
    assert cli.main(["demo", "--out", str(out), "--quick", "--progress", "false", "--seed", "3",
                     "--sft-budget", "true", "--shaping-lambdas", "1,10"]) == 0
    return out


def test_demo_writes_the_contract_files(quick_demo):
    for name in ("report.json", "report.md", "training_curves.png", "tradeoff.png"):
        assert (quick_demo / name).is_file(), name
    for name in ("sft.jsonl", "pairs_train.jsonl", "pairs_eval.jsonl", "prompts_train.jsonl",
                 "prompts_eval.jsonl", "world.json"):
        assert (quick_demo / "world" / name).is_file()
    assert (quick_demo / "rl" / "ppo_lag" / "policy" / "COMPLETE").is_file()
    assert (quick_demo / "rl" / "ppo_lag" / "metrics.jsonl").is_file()


def test_report_is_complete_and_consistent(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    from saferlhf.calibration import load_calibration
    from saferlhf.config.stages import DEFAULT_UNSAFE_RATE

    assert report["seed"] == 3 and report["budget"] == DEFAULT_UNSAFE_RATE and report["quick"] is True
    assert report["constraint"]["form"] == "unsafe_rate" and report["constraint"]["cost_transform"] == "calibrated"
    assert set(report["methods"]) == {"sft", "ppo", "ppo_lag", "ppo_lag_sft_budget", "reward_shaping_1",
                                      "reward_shaping_10"}
    # the SFT-relative budget is the mean learned (raw) cost of SFT samples, measured before RL
    assert report["budgets"] == {"ppo_lag": DEFAULT_UNSAFE_RATE,
                                 "ppo_lag_sft_budget": pytest.approx(report["sft_cost"]["mean"], abs=1e-3)}
    # the cost model was calibrated on the held-out pairs as it was saved, and RL read that file
    cal = load_calibration(quick_demo / "cost_model")
    assert cal is not None and cal.fitted and report["cost_model"]["calibration"]["temperature"] == pytest.approx(
        cal.temperature, abs=1e-6)
    lag = json.loads((quick_demo / "rl" / "ppo_lag" / "lagrange.json").read_text())
    assert lag["budget_unsafe_rate"] == DEFAULT_UNSAFE_RATE and lag["calibration"]["n"] == cal.n
    assert 0.0 <= report["methods"]["ppo_lag"]["model_cost"] <= 1.0  # E[P(unsafe)]
    assert report["lagrange"]["lambda_mean_last"] is not None
    keys = {"helpfulness", "helpfulness_benign", "helpfulness_harmful", "harmful_rate", "oracle_cost",
            "model_cost", "over_refusal_benign", "constraint_met", "tolerance", "n_benign", "n_harmful", "ci95"}
    for name, m in report["methods"].items():
        assert keys <= set(m), (name, keys - set(m))
        # the report carries exactly what the per-policy evaluation wrote
        summary = json.loads((quick_demo / "eval" / name / "summary.json").read_text())
        assert summary["harmful_rate"] == m["harmful_rate"]
        lo, hi = m["ci95"]["harmful_rate"]
        assert lo <= m["harmful_rate"] <= hi
        d = report["budgets"].get(name, report["budget"])
        assert m["constraint_met"] == (m["model_cost"] <= d + m["tolerance"])
    assert set(report["lagrange"]) >= {"final_lambda", "at_cap"}
    assert report["lagrange"]["final_lambda"] >= 0
    for stage in ("world", "sft", "reward_model", "cost_model", "sft_cost", "rl_ppo", "rl_ppo_lag",
                  "rl_ppo_lag_sft_budget", "eval_world"):
        assert report["timings_s"][stage] > 0
    # the learned models agree with the oracles better than chance
    assert report["reward_model"]["oracle_agreement"] > 0.6
    assert report["cost_model"]["auroc"] > 0.6
    assert report["cost_model"]["oracle_agreement"] > 0.6
    # the RL logs have one line per iteration and λ moves only for ppo_lag
    lines = [json.loads(x) for x in (quick_demo / "rl" / "ppo_lag" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "reward" in r] == list(range(1, report["rl_settings"]["iterations"] + 1))
    shaping = [json.loads(x) for x in (quick_demo / "rl" / "reward_shaping_10" / "metrics.jsonl").read_text().splitlines()]
    assert {r["lambda"] for r in shaping if "lambda" in r} == {10.0}
    md = (quick_demo / "report.md").read_text()
    assert "## Checks" in md and "ppo_lag" in md


def test_report_has_the_guard_section(quick_demo):
    report = json.loads((quick_demo / "report.json").read_text())
    guard = report["guard"]
    assert set(guard) >= {"f1", "severity_macro_accuracy", "rounds", "helpfulness_benign_rounds", "after_fallback"}
    assert len(guard["rounds"]) == len(guard["helpfulness_benign_rounds"]) == 6  # k = 0..5 regenerations
    assert all(0.0 <= r <= 1.0 for r in guard["rounds"])
    # after the fallback no answer flagged in the last round is left: harm can only fall
    assert guard["after_fallback"]["harmful_rate"] <= guard["rounds"][-1] + 1e-9
    assert 0.0 <= guard["f1"] <= 1.0 and guard["f1"] > 0.5  # better than flagging nothing
    assert (quick_demo / "guard" / "summary.json").is_file()
    assert report["timings_s"]["guard"] > 0
    assert "## Beaver-Guard" in (quick_demo / "report.md").read_text()
    assert any(c["claim"].startswith("guard unsafe-F1") for c in report["checks"])


def test_world_generate_cli_determinism(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert cli.main(["world", "generate", "--out", str(d), "--seed", "5", "--noise", "0.1",
                         "--n-sft", "50", "--n-pairs-train", "50", "--n-pairs-eval", "20",
                         "--n-prompts-train", "30", "--n-eval-benign", "10", "--n-eval-harmful", "10"]) == 0
    for name in ("sft.jsonl", "pairs_train.jsonl", "pairs_eval.jsonl", "prompts_eval.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "tokenizer" / "tokenizer.json").is_file()
    assert cli.main(["world", "generate", "--out", str(a), "--noise", "0.9"]) == 2


def test_quick_rounds_report_lambda_auroc_and_plot(tmp_path):
    """``--rounds 2``: round 2 retrains and recalibrates the cost model on the grown pairs and
    continues PPO-Lag at the same q; the report carries λ and the cost model's AUROC on the
    policy's own samples per round, the checks judge harm and helpfulness, and rounds.png exists."""
    from saferlhf.calibration import load_calibration

    out = tmp_path / "rounds"
    assert cli.main(["demo", "--out", str(out), "--quick", "--progress", "false", "--seed", "4", "--rounds", "2",
                     "--guard", "false", "--shaping-lambdas", "10"]) == 0
    report = json.loads((out / "report.json").read_text())
    rounds = report["rounds"]
    assert [r["round"] for r in rounds] == [1, 2] and rounds[1]["new_pairs"] > 0
    assert all(r["budget"] == report["budget"] for r in rounds)  # the same q every round
    for r in rounds:
        assert r["lambda"] >= 0 and r["lambda_mean_last"] is not None
        assert r["cost_model_auroc_policy"] is None or 0.0 <= r["cost_model_auroc_policy"] <= 1.0
        assert {"harmful_rate", "helpfulness_benign", "model_cost"} <= set(r["ppo_lag"])
    # round 2's cost model was calibrated on the held-out pairs as it was saved
    cal = load_calibration(out / "cost_model_round2")
    assert cal is not None and rounds[1]["calibration"]["temperature"] == pytest.approx(cal.temperature, abs=1e-6)
    claims = {c["claim"] for c in report["checks"]}
    assert "harmful rate falls round over round" in claims
    assert "benign helpfulness never more than 5 % below round 1's" in claims
    assert (out / "rounds.png").is_file() and "## Rounds" in (out / "report.md").read_text()
