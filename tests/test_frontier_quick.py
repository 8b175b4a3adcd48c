"""``benchmarks/frontier.py --quick``: the plumbing of the frontier benchmark (not its science).

Every method of both families trains from the same SFT policy, every policy (and SFT) is
evaluated against the oracles with intervals, and the three outputs are written and agree with
the per-policy evaluations. The quick sizes train for seconds; docs/frontier.md has the real run.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _frontier():
    spec = importlib.util.spec_from_file_location("frontier_bench", ROOT / "benchmarks" / "frontier.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_frontier_quick_writes_every_method_with_intervals(tmp_path):
    bench = _frontier()
    assert bench.main(["--out", str(tmp_path), "--quick", "--seeds", "0", "--workers", "1"]) == 0
    for name in ("frontier.json", "frontier.md", "frontier.png"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    result = json.loads((tmp_path / "frontier.json").read_text())
    methods = result["per_seed"]["0"]["methods"]
    assert len(result["lambdas"]) >= 4
    want = {"sft", "ppo", "ppo_lag", "grpo_lag", "dpo", "safe_dpo", "sacpo", "c_dpo"}
    want |= {f"reward_shaping_{lam:g}" for lam in result["lambdas"]}
    assert set(methods) == want
    for name, m in methods.items():
        lo, hi = m["ci95"]["harmful_rate"]
        assert lo <= m["harmful_rate"] <= hi, name
        lo, hi = m["ci95"]["helpfulness_benign"]
        assert lo <= m["helpfulness_benign"] <= hi, name
        summary = json.loads((tmp_path / "seed_0" / "eval" / name / "summary.json").read_text())
        assert summary["harmful_rate"] == m["harmful_rate"]
    # every DPO policy is a save_pretrained folder next to its metrics
    for name in ("dpo", "safe_dpo", "sacpo", "c_dpo"):
        d = tmp_path / "seed_0" / "dpo" / name
        assert (d / "COMPLETE").is_file() and (d / "metrics.jsonl").is_file()
    assert "lagrange" in result["per_seed"]["0"]["extras"]["c_dpo"]
    md = (tmp_path / "frontier.md").read_text()
    assert all(f"| {n} |" in md for n in want)
