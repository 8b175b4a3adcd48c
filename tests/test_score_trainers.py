"""The offline half learns (not just runs): world → SFT → reward model → cost model → eval,
through the CLI entry, on a small world, in well under a minute on two cores.

The small world keeps 13 of the 64 topics (6 benign, 5 harmful, 2 dual-use), 800 demonstrations
and 1200 training pairs, annotator noise 0.05, and leaves out the ``off_topic`` answers (fluent
answers with another topic's steps): telling those apart needs the model to bind the request's
topic to the answer's steps, which a 2-layer model learns only from the full world's data and
steps (docs/score_models.md has the full-world numbers at the CLI defaults). Everything else is
the CLI's defaults except the step budget (SFT 60 steps, score models 2 epochs = 76 steps).
Measured on three world seeds (7, 8, 9): reward-model oracle agreement 0.96-0.97, cost-model
sign accuracy 0.95-0.96, AUROC 0.94-0.96 (vs the thresholds 0.8 / 0.85 / 0.9 asserted here);
about 25 s of CPU.
"""

from __future__ import annotations

import json

import pytest

from saferlhf.cli import main

TOPICS = {"benign": 6, "harmful": 5, "dual_use": 2}
SIZES = {"n_sft": 800, "n_pairs_train": 1200, "n_pairs_eval": 300, "n_prompts_train": 40,
         "n_eval_benign": 20, "n_eval_harmful": 20}


def _small_world(out, *, seed: int, noise: float):
    from saferlhf.data.world import generate_world
    from saferlhf.data.world.language import default_spec

    spec = default_spec()
    left = dict(TOPICS)
    topics = []
    for t in spec["topics"]:
        if left[t["kind"]] > 0:
            topics.append(t)
            left[t["kind"]] -= 1
    spec["topics"] = topics
    mix = {kind: {t: w for t, w in m.items() if t != "off_topic"} for kind, m in spec["response_mix"].items()}
    spec["contrast_pairs"]["fraction"] = 0.0  # no off-topic answers in this small world (a learning test)
    generate_world(out, seed=seed, noise=noise, spec=spec, mix=mix, **SIZES)
    return out


@pytest.mark.slow
def test_small_world_score_models_learn(tmp_path):
    world = _small_world(tmp_path / "world", seed=7, noise=0.05)
    sft = tmp_path / "sft"
    assert main(["sft", "--data", str(world / "sft.jsonl"), "--tokenizer", str(world / "tokenizer"),
                 "--model", "tiny", "--out", str(sft), "--max-steps", "60", "--progress", "false"]) == 0
    summaries = {}
    for stage, kind in (("reward-model", "reward"), ("cost-model", "cost")):
        out = tmp_path / kind
        assert main([stage, "--model", str(sft), "--data", str(world / "pairs_train.jsonl"), "--out", str(out),
                     "--epochs", "2", "--progress", "false"]) == 0
        assert (out / "metrics.jsonl").exists() and (out / "COMPLETE").exists()
        assert main(["eval", "score-model", "--model", str(out), "--data", str(world / "pairs_eval.jsonl"),
                     "--out", str(tmp_path / f"{kind}_eval")]) == 0
        summaries[kind] = json.loads((tmp_path / f"{kind}_eval" / "summary.json").read_text())

    rm, cm = summaries["reward"], summaries["cost"]
    assert rm["score_type"] == "reward" and cm["score_type"] == "cost"
    assert rm["oracle_agreement"] >= 0.8, rm
    assert cm["sign_accuracy"] >= 0.85, cm
    assert cm["auroc"] >= 0.9, cm
    # and against the truth, not only the (noisy) labels
    assert cm["oracle_auroc"] >= 0.9 and cm["oracle_agreement"] >= 0.85, cm
    # pairwise accuracy against the (noisy) labels, well above chance
    assert rm["accuracy"] > 0.7 and cm["accuracy"] > 0.7
