"""``saferlhf eval arena``: win/tie/loss and the safe/unsafe transition table against hand-computed
values, and the CLI on tiny random policies (A against itself: all ties; A against another
policy: the summary is the arithmetic of samples.jsonl)."""

from __future__ import annotations

import json

import eval_toy as T
import numpy as np
import pytest

from saferlhf import cli
from saferlhf.eval.arena import arena_summary, compare_scores, transition_table
from saferlhf.eval.prompts import Scores


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("arena")
    tok = T.tokenizer()
    a = T.policy(root / "a", tok, seed=0)
    return {"root": root, "a": a, "b": T.policy(root / "b", tok, seed=5, logit_scale=30.0),
            "rm": T.score_model(root / "rm", a, tok, "reward", seed=1),
            "cm": T.score_model(root / "cm", a, tok, "cost", seed=2),
            "prompts": T.write_jsonl(root / "prompts.jsonl", T.PROMPTS)}


def test_compare_scores_hand_computed():
    a = [1.0, 2.0, 3.0, 0.0, 5.0, 1.0]
    b = [0.0, 2.0, 4.0, 0.05, 1.0, 1.0]
    g = [0, 0, 1, 1, 2, 2]
    r = compare_scores(a, b, g, n_boot=0)
    assert r["counts"] == {"win": 2, "tie": 2, "loss": 2} and r["win"] == pytest.approx(1 / 3)
    assert r["win_rate_decided"] == 0.5 and r["mean_diff"] == pytest.approx((1 + 0 - 1 - 0.05 + 4 + 0) / 6)
    r = compare_scores(a, b, g, tie_margin=0.1, n_boot=0)  # |0 − 0.05| is within the margin
    assert r["counts"] == {"win": 2, "tie": 3, "loss": 1}
    r = compare_scores(a, b, g, higher_is_better=False, n_boot=0)  # costs: lower wins
    assert r["counts"] == {"win": 2, "tie": 2, "loss": 2} and r["loss"] == pytest.approx(1 / 3)
    assert compare_scores(a, b, g, higher_is_better=False, n_boot=0)["mean_diff"] == pytest.approx(
        compare_scores(a, b, g, n_boot=0)["mean_diff"])  # mean_diff is always A − B
    r = compare_scores(a, b, g, n_boot=300)
    for k in ("win", "tie", "loss"):
        assert r["ci95"][k][0] <= r[k] <= r["ci95"][k][1]
    with pytest.raises(ValueError):
        compare_scores([1.0], [1.0, 2.0], [0])


def test_transition_table_hand_computed():
    ua = [True, True, False, False, False, True, False]
    ub = [True, False, True, False, False, False, False]
    t = transition_table(ua, ub)
    assert t["n"] == 7
    assert t["counts"] == {"a_safe": {"b_safe": 3, "b_unsafe": 1}, "a_unsafe": {"b_safe": 2, "b_unsafe": 1}}
    assert t["fractions"]["a_safe"]["b_safe"] == pytest.approx(3 / 7, abs=1e-6)
    assert sum(v for row in t["counts"].values() for v in row.values()) == 7


def test_arena_summary_per_category_and_guard_fallback():
    # no cost model: harmlessness by the guard's P(unsafe), unsafe = guard flagged
    sa = Scores(reward=np.array([1.0, 0.0, 2.0, 2.0]), guard_score=np.array([0.9, 0.1, 0.2, 0.6]),
                guard_unsafe=np.array([True, False, False, True]), guard_categories=[[], [], [], []])
    sb = Scores(reward=np.array([0.0, 0.0, 3.0, 1.0]), guard_score=np.array([0.2, 0.1, 0.7, 0.6]),
                guard_unsafe=np.array([False, False, True, True]), guard_categories=[[], [], [], []])
    s = arena_summary(sa, sb, [0, 1, 2, 3], truncated_a=[False] * 4, truncated_b=[False] * 4,
                      completions_a=["x"] * 4, completions_b=["y"] * 4, categories=["c", "c", "d", None], n_boot=0)
    assert s["harmlessness"]["by"].startswith("guard") and s["unsafe_definition"] == "guard flagged"
    assert s["helpfulness"]["counts"] == {"win": 2, "tie": 1, "loss": 1}
    assert s["harmlessness"]["counts"] == {"win": 1, "tie": 2, "loss": 1}
    assert s["transition"]["counts"] == {"a_safe": {"b_safe": 1, "b_unsafe": 1}, "a_unsafe": {"b_safe": 1, "b_unsafe": 1}}
    assert set(s["per_category"]) == {"c", "d"}
    c = s["per_category"]["c"]
    assert c["n"] == 2 and c["helpfulness"]["counts"] == {"win": 1, "tie": 1, "loss": 0}
    assert c["unsafe_rate_a"] == 0.5 and c["unsafe_rate_b"] == 0.0
    assert s["policy_a"]["reward_mean"] == pytest.approx(1.25) and s["policy_b"]["guard_unsafe_rate"] == 0.5


def test_arena_policy_against_itself_is_all_ties(toy, tmp_path):
    out = tmp_path / "self"
    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["a"]), "--prompts",
                     str(toy["prompts"]), "--reward-model", str(toy["rm"]), "--cost-model", str(toy["cm"]),
                     "--n-samples", "2", "--max-new-tokens", "5", "--n-boot", "100", "--out", str(out),
                     "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    for dim in ("helpfulness", "harmlessness"):
        assert s[dim]["tie"] == 1.0 and s[dim]["counts"]["tie"] == s["n"] == 12
    t = s["transition"]["counts"]
    assert t["a_safe"]["b_unsafe"] == t["a_unsafe"]["b_safe"] == 0


def test_arena_cli_summary_is_the_arithmetic_of_its_samples(toy, tmp_path):
    out = tmp_path / "ab"
    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["b"]), "--prompts",
                     str(toy["prompts"]), "--reward-model", str(toy["rm"]), "--cost-model", str(toy["cm"]),
                     "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "100", "--out", str(out),
                     "--no-progress"]) == 0
    for name in ("summary.json", "samples.jsonl", "report.md", "arena.png", "COMPLETE"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    rows = T.read_jsonl(out / "samples.jsonl")
    assert len(rows) == s["n"] == 12 and sum(r["completion_a"] != r["completion_b"] for r in rows) >= 6
    assert all(r["id"] == T.PROMPTS[r["prompt_index"]]["id"] for r in rows)  # prompt fields kept
    ra, rb = np.array([r["reward_a"] for r in rows]), np.array([r["reward_b"] for r in rows])
    ca, cb = np.array([r["cost_a"] for r in rows]), np.array([r["cost_b"] for r in rows])
    assert [r["helpfulness"] for r in rows] == ["a" if x > y else "b" if x < y else "tie" for x, y in zip(ra, rb)]
    assert [r["harmlessness"] for r in rows] == ["a" if x < y else "b" if x > y else "tie" for x, y in zip(ca, cb)]
    h = s["helpfulness"]
    assert h["counts"] == {k: sum(r["helpfulness"] == w for r in rows) for k, w in (("win", "a"), ("tie", "tie"),
                                                                                     ("loss", "b"))}
    assert h["win"] + h["tie"] + h["loss"] == pytest.approx(1.0)
    assert h["mean_diff"] == pytest.approx((ra - rb).mean(), abs=1e-5)
    t = s["transition"]["counts"]
    assert t["a_unsafe"]["b_safe"] == sum(r["unsafe_a"] and not r["unsafe_b"] for r in rows)
    assert t["a_safe"]["b_safe"] == sum((not r["unsafe_a"]) and not r["unsafe_b"] for r in rows)
    assert s["policy_a"]["cost_mean"] == pytest.approx(ca.mean(), abs=1e-5)
    assert s["policy_b"]["unsafe_rate"] == pytest.approx((cb > 0).mean())
    assert {c: b["n"] for c, b in s["per_category"].items()} == {"benign": 6, "theft": 2, "weapons": 4}
    report = (out / "report.md").read_text()
    assert "Win / tie / loss of A" in report and "Safe/unsafe transition" in report


def test_arena_needs_a_scorer(toy, tmp_path, capsys):
    assert cli.main(["eval", "arena", "--policy-a", str(toy["a"]), "--policy-b", str(toy["b"]), "--prompts",
                     str(toy["prompts"]), "--out", str(tmp_path / "x")]) == 2
    assert "--reward-model" in capsys.readouterr().err and not (tmp_path / "x").exists()
