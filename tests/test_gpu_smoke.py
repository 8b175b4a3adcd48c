"""The GPU smoke driver's CPU path (``--tiny``): every phase runs and ``gpu_smoke.json`` holds
the figures the GPU run reports (the GPU run itself cannot happen here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_shell_wrapper_parses():
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/gpu_smoke.sh")], check=False).returncode == 0


@pytest.mark.slow
def test_tiny_smoke_run_writes_every_phase(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_smoke", ROOT / "benchmarks/gpu_smoke.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path), "--tiny", "--skip-vllm"]) == 0
    res = json.loads((tmp_path / "gpu_smoke.json").read_text())
    phases = res["phases"]
    for name in ("sft", "reward-model", "cost-model", "ppo_lag_hf", "train_probe", "generate_hf"):
        assert phases[name]["ok"], (name, phases[name])
        assert phases[name]["tokens_per_s"] > 0 and "peak_memory_gib" in phases[name]
    assert phases["ppo_lag_hf"]["iterations"] == 1
    assert "mfu" in phases["sft"] and "mfu" in phases["train_probe"]
    assert res["model"]["params"] > 0 and res["total_seconds"] > 0
