"""One entry point: ``saferlhf <stage> [--config FILE.yaml] [--key value ...]``.

Stages are registered with their config dataclass and a runner. Runners import their heavy
modules lazily so that ``saferlhf --help`` answers at once.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module

from saferlhf.config import ConfigError, help_text, parse_args


@dataclass(frozen=True)
class Stage:
    name: str  # e.g. "sft" or "world generate"
    config: str  # "module:Class" of the config dataclass
    runner: str  # "module:function" taking the config
    summary: str

    def load(self, ref: str):
        module, _, attr = ref.partition(":")
        return getattr(import_module(module), attr)


_S = "saferlhf.config.stages"
_G = "saferlhf.guard.config"
STAGES: list[Stage] = [
    Stage("data summary", f"{_S}:DataSummaryConfig", "saferlhf.data.summary:run_summary",
          "load a dataset through its adapter and print what it holds"),
    Stage("world generate", f"{_S}:WorldGenerateConfig", "saferlhf.eval.world_cli:run_world_generate",
          "write the verifiable safety world: SFT data, dual-preference pairs, prompts, oracles"),
    Stage("eval world", f"{_S}:EvalWorldConfig", "saferlhf.eval.world_cli:run_eval_world",
          "ground-truth evaluation of a policy in the world (helpfulness, harm, intervals)"),
    Stage("sft", f"{_S}:SFTConfig", "saferlhf.trainers.sft:run_sft",
          "supervised fine-tuning on response tokens (tiny model from scratch or any causal LM)"),
    Stage("reward-model", f"{_S}:RewardModelConfig", "saferlhf.trainers.score:run_reward_model",
          "train the helpfulness reward model (Bradley-Terry on better_response_id)"),
    Stage("cost-model", f"{_S}:CostModelConfig", "saferlhf.trainers.score:run_cost_model",
          "train the harmlessness cost model (ranking + sign classification; cost > 0 = unsafe)"),
    Stage("eval score-model", f"{_S}:EvalScoreModelConfig", "saferlhf.eval.score_eval:run_eval_score_model",
          "offline accuracy / sign accuracy / AUROC / oracle agreement of a reward or cost model"),
    Stage("demo", f"{_S}:DemoConfig", "saferlhf.recipes.text_demo:run_demo_cli",
          "the whole Safe RLHF pipeline in the verifiable world, with a report (what `make demo` runs)"),
    Stage("export", f"{_S}:ExportConfig", "saferlhf.guard.export:run_export",
          "write a reward/cost model or a guard's unsafe log-odds as the backbone's standard "
          "*ForSequenceClassification (num_labels=1) + model card"),
    Stage("rl", f"{_S}:RLConfig", "saferlhf.trainers.rl:run_rl",
          "Safe RLHF: ppo | ppo_lag | reward_shaping | grpo_lag from an SFT policy"),
    Stage("plan", f"{_S}:PlanConfig", "saferlhf.plan:run_plan",
          "per-GPU memory of every model of an RL recipe under ddp/fsdp/zero2/zero3/zero3-offload, and a verdict"),
    Stage("dpo", f"{_S}:DPOConfig", "saferlhf.trainers.preference:run_dpo",
          "direct preference optimisation for safety: dpo | safe_dpo | sacpo | c_dpo from an SFT policy"),
    Stage("calibrate", f"{_S}:CalibrateConfig", "saferlhf.calibration:run_calibrate",
          "refit a cost model's P(unsafe) = sigmoid((c - offset)/T) on held-out labelled pairs (calibration.json)"),
    Stage("budget", f"{_S}:BudgetConfig", "saferlhf.budget:run_budget",
          "cost distribution of policy samples under the cost model, and the budget d for a target unsafe rate"),
    Stage("guard train", f"{_G}:GuardTrainConfig", "saferlhf.trainers.guard:run_guard_train",
          "train a guard (unsafe / severity / harm-category heads); --preset prompt-moderation: real-text MiniLM"),
    Stage("guard moderate", f"{_G}:GuardModerateConfig", "saferlhf.guard.moderate:run_guard_moderate",
          "moderate a JSONL of prompts [+ responses]: one verdict line (safe, severity, categories, score) each"),
    Stage("guard generate", f"{_G}:GuardGenerateConfig", "saferlhf.guard.generate:run_guard_generate",
          "guarded generation: generate, moderate, regenerate flagged answers, refuse as the last resort"),
    Stage("eval guard", f"{_G}:EvalGuardConfig", "saferlhf.eval.guard_eval:run_eval_guard",
          "guard metrics: accuracy, F1/precision/recall, FPR, AUPRC, per-category F1, severity, calibration"),
    Stage("generate", f"{_S}:GenerateConfig", "saferlhf.eval.generate:run_generate",
          "a policy's completions for a prompts file or named set: one JSONL line per prompt, in order"),
    Stage("eval prompts", f"{_S}:EvalPromptsConfig", "saferlhf.eval.prompts:run_eval_prompts",
          "sample a policy on real prompts; reward / cost / unsafe rate (+ guard) per category, with intervals"),
    Stage("eval arena", f"{_S}:EvalArenaConfig", "saferlhf.eval.arena:run_eval_arena",
          "policy A vs B on the same prompts: win/tie/loss, the safe/unsafe transition table, optional LLM judge"),
]


def _find_stage(argv: list[str]) -> tuple[Stage | None, list[str]]:
    best: Stage | None = None
    for stage in STAGES:
        words = stage.name.split()
        if argv[: len(words)] == words and (best is None or len(words) > len(best.name.split())):
            best = stage
    if best is None:
        return None, argv
    return best, argv[len(best.name.split()):]


def _print_main_help() -> None:
    print("usage: saferlhf <stage> [--config FILE.yaml] [--key value ...]\n")
    print("Constrained (safe) alignment: Safe RLHF, Safe RLHF-V, Beaver-Guard.\n\nstages:")
    width = max(len(s.name) for s in STAGES)
    for s in STAGES:
        print(f"  {s.name:<{width}}  {s.summary}")
    print("\n`saferlhf <stage> --help` lists every option of a stage with its default.")
    print("Models and data may be local paths or hub ids (org/name[@revision]), read from the local HF\n"
          "cache: offline by default; `saferlhf --online <stage> ...` (or HF_HUB_OFFLINE=0) allows downloads.")
    print("--debug (any stage): show the traceback of an error as well as its message.")


def _print_stage_help(stage: Stage, cfg_cls) -> None:
    print(f"usage: saferlhf {stage.name} [--config FILE.yaml] [--key value ...]\n")
    print(f"{stage.summary}\n\noptions:")
    print("  --config FILE.yaml  load options from YAML (flags given after it override it)")
    for flag, kind, desc in help_text(cfg_cls):
        print(f"  {flag} ({kind})\n      {desc}")


def _quiet_hf_progress() -> None:
    """Our own progress bars report the stages; hide the per-file loading bars of HF libraries."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:  # pragma: no cover
        pass


def _groups() -> dict[str, list[Stage]]:
    """Stages by their first word, for the multi-word ones (``guard``, ``eval``, ...)."""
    out: dict[str, list[Stage]] = {}
    for s in STAGES:
        words = s.name.split()
        if len(words) > 1:
            out.setdefault(words[0], []).append(s)
    return out


def _print_group_help(group: str, stages: list[Stage], file=None) -> None:
    print(f"usage: saferlhf {group} <{'|'.join(s.name.split(' ', 1)[1] for s in stages)}> "
          "[--config FILE.yaml] [--key value ...]\n\nsubcommands:", file=file)
    width = max(len(s.name) for s in stages)
    for s in stages:
        print(f"  {s.name:<{width}}  {s.summary}", file=file)
    print(f"\n`saferlhf {group} <subcommand> --help` lists its options.", file=file)


def main(argv: list[str] | None = None) -> int:
    from saferlhf.faults import EXIT_USER, debug_enabled, report

    argv = list(sys.argv[1:] if argv is None else argv)
    debug, argv = debug_enabled(argv)
    # Offline unless asked: hub ids resolve from the local HF cache (saferlhf.hub); `--online`
    # (anywhere on the line) or an explicit HF_HUB_OFFLINE=0 lets downloads through.
    from saferlhf.hub import ONLINE_FLAG, set_online

    online = ONLINE_FLAG in argv
    argv = [a for a in argv if a != ONLINE_FLAG]
    set_online(online)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in {"-h", "--help", "help"}:
        _print_main_help()
        return 0
    stage, rest = _find_stage(argv)
    if stage is None:
        group = _groups().get(argv[0])
        if group is not None and (len(argv) == 1 or argv[1] in {"-h", "--help"}):
            asked = len(argv) > 1
            _print_group_help(argv[0], group, file=None if asked else sys.stderr)
            return 0 if asked else EXIT_USER
        prefix = [s.name for s in STAGES if s.name.split()[0] == argv[0]]
        hint = f" Did you mean: {', '.join(prefix)}?" if prefix else ""
        print(f"saferlhf: unknown stage {' '.join(argv[:2])!r}.{hint} "
              f"Stages: {', '.join(s.name for s in STAGES)}", file=sys.stderr)
        return 2
    cfg_cls = stage.load(stage.config)
    if any(a in {"-h", "--help"} for a in rest):
        _print_stage_help(stage, cfg_cls)
        return 0
    try:
        cfg = parse_args(cfg_cls, rest)
    except ConfigError as e:
        return report(stage.name, e, debug=debug)
    _quiet_hf_progress()
    from saferlhf.preflight import PLANNING_STAGES

    if stage.name not in PLANNING_STAGES:  # a plan reads a recipe: its model paths need not exist here
        try:
            from saferlhf.hub import resolve_config_models

            resolve_config_models(cfg)
        except FileNotFoundError as e:
            return report(stage.name, e, debug=debug)
    from saferlhf.errors import NonFiniteLossError

    try:
        from saferlhf.data.validation import bad_record_limit
        from saferlhf.preflight import check_stage
        from saferlhf.runlock import claim_output

        runner: Callable = stage.load(stage.runner)
        with claim_output(stage.name, cfg), bad_record_limit(getattr(cfg, "max_bad_fraction", None)):
            check_stage(cfg, stage.name)
            result = runner(cfg)
    except NonFiniteLossError as e:
        print(f"saferlhf {stage.name}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"saferlhf {stage.name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the error boundary: user errors exit 2, bugs exit 1
        return report(stage.name, e, debug=debug)
    return int(result) if isinstance(result, int) else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
