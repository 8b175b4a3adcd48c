"""TRL / transformers names of config keys are aliases, on the command line and in YAML, and
``--help`` lists them beside the saferlhf names; one multiplier config serves the CLI and the API."""

from __future__ import annotations

import dataclasses

import pytest

from saferlhf.config import ConfigError, from_dict, parse_args
from saferlhf.config.base import help_text
from saferlhf.config.lagrange import LagrangeConfig
from saferlhf.config.stages import RLConfig, SFTConfig


def test_trl_names_on_the_command_line_and_in_yaml(tmp_path):
    cfg = parse_args(SFTConfig, ["--data", "d.jsonl", "--output-dir", "o", "--learning-rate", "3e-4",
                                 "--num-train-epochs", "2", "--per-device-train-batch-size", "8",
                                 "--gradient-accumulation-steps", "4", "--save-steps", "5"])
    assert (cfg.out, cfg.lr, cfg.epochs, cfg.batch_size, cfg.grad_accum, cfg.save_every) == ("o", 3e-4, 2.0, 8, 4, 5)
    yaml = tmp_path / "rl.yaml"
    yaml.write_text("output_dir: r\nkl_coef: 0.05\nnum_generations: 4\ncliprange: 0.1\nlearning_rate: 2e-5\n"
                    "missing_eos_penalty: -1.0\nalgo: grpo_lag\nmini_batch_size: 32\n")
    rl = parse_args(RLConfig, ["--config", str(yaml), "--budget", "0.25"])
    assert (rl.out, rl.kl_coeff, rl.n_samples, rl.clip_eps, rl.actor_lr, rl.truncation_penalty) == \
        ("r", 0.05, 4, 0.1, 2e-5, -1.0)
    assert rl.budget == rl.lagrange.budget == 0.25  # one setting, two spellings


def test_an_alias_and_its_key_with_different_values_is_an_error():
    with pytest.raises(ConfigError, match="'lr'.*same setting"):
        from_dict(SFTConfig, {"out": "o", "learning_rate": 1e-3, "lr": 2e-3})
    with pytest.raises(ConfigError, match="disagree"):
        from_dict(RLConfig, {"out": "o", "budget": 0.3, "lagrange": {"budget": 0.2}})


def test_help_lists_the_aliases():
    flags = {row[0] for row in help_text(RLConfig)}
    assert "--kl-coeff (alias --kl-coef)" in flags
    assert any(f.startswith("--n-samples (alias --num-generations)") for f in flags)


def test_one_multiplier_config_with_one_set_of_defaults():
    from saferlhf.config.stages import DEFAULT_UNSAFE_RATE, RATE_LAGRANGE

    # the default constraint is the unsafe rate: λ's config is LagrangeConfig's defaults at d = q
    assert RLConfig(out="o").lagrange == LagrangeConfig(budget=DEFAULT_UNSAFE_RATE)
    assert all(getattr(LagrangeConfig(), k) == v for k, v in RATE_LAGRANGE.items())
    ppo = RLConfig(out="o", algo="ppo").multiplier_config()
    assert (ppo.rule, ppo.init) == ("fixed", 0.0)
    shaping = RLConfig(out="o", algo="reward_shaping", lagrange=LagrangeConfig(init=2.5)).multiplier_config()
    assert (shaping.rule, shaping.init) == ("fixed", 2.5)
    # the cap bounds a learned λ only: a shaping run at λ₀ = 30 > λ_max = 20 runs at 30
    from saferlhf.lagrange import LagrangeMultiplier

    wide = RLConfig(out="o", algo="reward_shaping", lagrange=LagrangeConfig(init=30.0)).multiplier_config()
    assert LagrangeMultiplier(wide).value == 30.0 and not LagrangeMultiplier(wide).at_cap
    with pytest.raises(ConfigError, match="log_sgd"):
        from_dict(RLConfig, {"out": "o", "lagrange": {"rule": "log_sgd", "init": 0.0}})


def test_c_dpo_shares_ppo_lag_constraint_and_multiplier_defaults():
    # one set of defaults: c_dpo's budget and multiplier are PPO-Lag's (docs/frontier.md)
    from saferlhf.config.stages import DEFAULT_UNSAFE_RATE, DPOConfig

    dpo, rl = DPOConfig(out="o", algo="c_dpo", model="m", data="d"), RLConfig(out="o")
    assert dpo.budget_unsafe_rate == rl.budget_unsafe_rate == DEFAULT_UNSAFE_RATE and dpo.budget is None
    assert dataclasses.replace(dpo.lagrange, budget=rl.lagrange.budget) == rl.lagrange
