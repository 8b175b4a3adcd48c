"""The config dataclass of every CLI stage.

Kept free of heavy imports (no torch) so ``saferlhf <stage> --help`` answers at once.
Training stages share :class:`TrainConfig`; each stage adds its own keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar, Literal

from saferlhf.config.base import ConfigError, option
from saferlhf.config.lagrange import LagrangeConfig

# The default constraint of ``saferlhf rl`` and ``saferlhf demo``: at most this share of responses
# unsafe, as the cost model's calibrated P(unsafe) estimates it (docs/rl.md "The budget"). It is a
# share of annotator labels, so it includes their disagreement: the demo world's safe answers
# average P ≈ 0.07 at 10 % annotator noise, and q must sit above that floor.
DEFAULT_UNSAFE_RATE = 0.2
# The multiplier of the unsafe-rate form: LagrangeConfig's defaults (a PID, λ₀ = 5, λ_max = 20),
# spelled out for the demos' reports.
RATE_LAGRANGE = dict(rule="pid", init=5.0, kp=5.0, ki=1.0, kd=0.0, max_lambda=20.0, window=256)

DataFormat = Literal["auto", "pku", "beavertails_v", "beavertails_v_single", "beavertails", "trl", "world"]
BadRecordPolicy = Literal["skip", "error"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(kw_only=True)
class DataSummaryConfig:
    data: str = option(help="dataset: a local .jsonl/.json/.parquet file or an HF hub id")
    format: DataFormat = option("auto", help="adapter to read it with (auto-detected from the fields)")
    data_config: str | None = option(None, help="hub dataset config name (e.g. alpaca-7b); "
                                                "--config is the YAML file of options")
    ALIASES: ClassVar[dict[str, str]] = {"config": "data_config"}  # the YAML key's old name
    split: str = option("train", help="hub dataset split")
    revision: str | None = option(None, help="hub dataset revision (pin it in recipes)")
    image_root: str | None = option(None, help="folder that relative image paths are resolved against")
    on_bad_record: BadRecordPolicy = option("skip", help="skip bad records with a report, or stop at the first")
    limit: int | None = option(None, ge=0, help="read at most this many records")


VLM_PARTS = ("vision_tower", "projector", "language_model")


def _check_vlm_parts(key: str, parts: list[str]) -> None:
    unknown = sorted(set(parts) - set(VLM_PARTS))
    if unknown:
        raise ConfigError(f"{key}: unknown VLM part(s) {unknown}; choose from {list(VLM_PARTS)}")


@dataclass(kw_only=True)
class TrainConfig:
    """Options every trainer shares (optimiser, schedule, precision, logging, checkpoints).

    The TRL / transformers names of these keys are accepted as aliases (``learning_rate``,
    ``per_device_train_batch_size``, ``num_train_epochs``, ``output_dir`` …)."""

    ALIASES: ClassVar[dict[str, str]] = {
        "learning_rate": "lr", "per_device_train_batch_size": "batch_size",
        "gradient_accumulation_steps": "grad_accum", "num_train_epochs": "epochs", "output_dir": "out",
        "save_steps": "save_every", "logging_steps": "log_every", "eval_steps": "eval_every",
        "lr_scheduler_type": "lr_scheduler", "train_dataset": "data", "eval_dataset": "eval_data",
    }

    data: str | None = option(None, help="training data file (jsonl/json/parquet) or hub id; required unless "
                                         "the trainer is given train_dataset")
    out: str = option(help="output directory (a save_pretrained checkpoint + metrics.jsonl)")
    eval_data: str | None = option(None, help="held-out data evaluated every eval_every steps and at the end")
    data_config: str | None = option(None, help="hub dataset config name of --data (e.g. alpaca-7b)")
    data_split: str | None = option(None, help="hub dataset split of --data (needed when it has several)")
    data_revision: str | None = option(None, help="hub dataset revision of --data (pin it in recipes)")
    eval_data_config: str | None = option(None, help="hub dataset config of --eval-data (default: --data-config)")
    eval_data_split: str | None = option(None, help="hub dataset split of --eval-data (e.g. test)")
    eval_data_revision: str | None = option(None, help="hub dataset revision of --eval-data (default: --data-revision)")
    data_format: DataFormat = option("auto", help="adapter used to read --data")
    on_bad_record: BadRecordPolicy = option("skip", help="bad records: skip with a report, or error")
    max_length: int = option(128, ge=4, help="maximum tokens of prompt + response")
    epochs: float = option(1.0, gt=0, help="passes over the data (fractional allowed); max_steps wins when set")
    max_steps: int | None = option(None, ge=1, help="stop after this many optimiser steps")
    batch_size: int = option(16, ge=1, help="sequences (or pairs) per micro-batch")
    grad_accum: int = option(1, ge=1, help="micro-batches per optimiser step")
    lr: float = option(1e-3, gt=0, help="peak learning rate")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    lr_scheduler: Literal["constant", "cosine", "linear"] = option("cosine", help="schedule after warm-up")
    warmup_ratio: float = option(0.03, ge=0, lt=1, help="fraction of steps spent warming up linearly")
    max_grad_norm: float = option(1.0, ge=0, help="gradient clipping (0 disables)")
    gradient_checkpointing: bool = option(False, help="trade compute for memory")
    precision: Precision = option("auto", help="auto = bf16 where the hardware supports it on GPU, else fp32")
    seed: int = option(0, ge=0, help="seed of data order, init and sampling")
    eval_every: int = option(0, ge=0, help="evaluate every N optimiser steps (0: only at the end)")
    save_every: int = option(0, ge=0, help="checkpoint every N optimiser steps for --resume (0: only at the end)")
    resume: bool = option(False, help="continue from the last complete checkpoint in --out")
    overwrite: bool = option(False, help="replace a finished or partial run in --out (its checkpoints are removed)")
    max_bad_fraction: float = option(
        0.1, ge=0, le=1, help="stop before training when more than this fraction of the records of a data "
                              "file is bad (counts and the first reasons are shown)")
    log_every: int = option(10, ge=1, help="log metrics every N optimiser steps")
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", help="extra metrics sink")
    lora_r: int = option(0, ge=0, help="LoRA rank (0: full fine-tuning)")
    lora_alpha: int = option(16, ge=1, help="LoRA alpha")
    lora_dropout: float = option(0.0, ge=0, lt=1, help="LoRA dropout")
    lora_targets: list[str] = option([], help="LoRA target modules (empty: all linear layers)")
    freeze: list[str] = option([], help="VLM parts kept frozen: any of vision_tower, projector, language_model")
    progress: bool = option(True, help="show a progress bar")

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
        _check_vlm_parts("freeze", self.freeze)
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.max_length < 4:
            raise ConfigError("max_length must be >= 4")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError("warmup_ratio must be in [0, 1)")


@dataclass(kw_only=True)
class SFTConfig(TrainConfig):
    model: str = option("tiny", help="'tiny' (a tiny Llama-style LM sized to the tokenizer) or a model dir")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's; required for 'tiny')")
    tiny_layers: int = option(2, ge=1, help="layers of the tiny model")
    tiny_hidden: int = option(128, ge=8, help="hidden size of the tiny model")
    epochs: float = option(3.0, gt=0, help="passes over the data")
    batch_size: int = option(32, ge=1, help="sequences per micro-batch")
    lr: float = option(2e-3, gt=0, help="peak learning rate (suits the tiny model from scratch; ~1e-5..1e-4 "
                                  "to fine-tune a pretrained model in full, ~1e-4..1e-3 with LoRA)")


@dataclass(kw_only=True)
class ScoreModelConfig(TrainConfig):
    model: str | None = option(None, help="initial model: an SFT checkpoint dir (as in the paper) or any backbone "
                                          "dir; required unless the trainer is given a model object")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's)")
    loss_type: Literal["sequence", "token"] = option("sequence", help="sequence-wise or token-wise loss")
    reg_coeff: float = option(1e-3, ge=0, help="score regulariser alpha (mean squared end score)")
    normalizer: Literal["none", "running", "ema"] = option("ema", help="score normaliser kept with the model")
    momentum: float = option(0.9, ge=0, le=1, help="EMA normaliser momentum")
    score_bias: bool = option(True, help="give the score head a bias (false: bias-free like HF *ForSequenceClassification "
                                         "and PKU's models, so `saferlhf export` is exact on any backbone)")
    epochs: float = option(2.0, gt=0, help="passes over the pairs")
    batch_size: int = option(32, ge=1, help="pairs per micro-batch (2 x batch_size sequences)")
    lr: float = option(1e-3, gt=0, help="peak learning rate (suits the tiny world models; ~1e-5 for a "
                                  "pretrained backbone in full, ~1e-4 with LoRA)")


@dataclass(kw_only=True)
class RewardModelConfig(ScoreModelConfig):
    """Reward model: Bradley-Terry on helpfulness preferences (better_response_id)."""


@dataclass(kw_only=True)
class CostModelConfig(ScoreModelConfig):
    """Cost model: safety ranking + kappa-weighted sign classification (cost > 0 = unsafe)."""

    kappa: float = option(1.0, ge=0, help="weight of the sign (classification) term")
    sign_term: Literal["binary", "graded"] = option(
        "binary", help="binary is_safe labels, or graded harmless_rate -3..+3 (BeaverTails-V)")
    zero_rating_sign: float | None = option(
        None, help="graded: the sign given to a harmless_rate of 0 (e.g. -1 = safe); null = no gradient")
    severity_weighted: bool = option(False, help="weight the sign term by severity level (1 + severity)")
    rank_safe_pairs: bool = option(
        True, help="rank pairs whose responses are both labelled safe (false: only the sign term shapes safe costs)")
    calibration_data: str | None = option(
        None, help="held-out labelled pairs the calibration P(unsafe) = σ((c − offset)/T) is fitted on after "
                   "training (calibration.json; default: --eval-data, else the training pairs, in-sample)")


@dataclass(kw_only=True)
class PlanOptions:
    """The ``plan:`` section of an RL recipe: read by ``saferlhf plan`` only (training ignores it)."""

    model: str | None = option(
        None, help="policy architecture for the estimate: a known name or a folder with config.json "
                   "(null: the policy path)")
    score_model: str | None = option(
        None, help="reward/cost model architecture (null: the reward model folder if it exists, else the policy's)")
    strategy: Literal["ddp", "fsdp", "zero2", "zero3", "zero3-offload"] = option(
        "zero3", help="the accelerate config the recipe is launched with")
    gpus: int = option(8, ge=1, help="GPUs the recipe is launched on")
    gpu_mem: float = option(80.0, gt=0, help="memory per GPU in GB")
    prompt_length: int = option(512, ge=1, help="longest prompt in tokens (sequence = prompt + max_new_tokens)")
    micro_batch_size: int | None = option(
        None, help="sequences per training forward/backward (null: mini_batch_size)")
    critic_lora_r: int = option(0, ge=0, help="LoRA rank of the critics for the plan when the run sets none "
                                              "(the run's own critic_lora_r wins)")
    overhead_gb: float = option(3.0, ge=0, help="fixed per-GPU overhead: CUDA context, allocator fragmentation")


@dataclass(kw_only=True)
class RLConfig:
    """Safe RLHF: one PPO-family loop; the algorithm picks the advantage combiner.

    ``policy``, ``reward_model``, ``cost_model`` and ``prompts`` are paths (or hub ids); from
    Python they may instead be given to :class:`saferlhf.SafeRLTrainer` as objects. The cost
    budget d is ``budget``, the same setting as ``lagrange.budget`` (either may be given)."""

    ALIASES: ClassVar[dict[str, str]] = {
        "save_steps": "save_every", "logging_steps": "log_every",
        "eval_steps": "eval_every", "train_dataset": "prompts", "eval_dataset": "eval_prompts",
    }

    algo: Literal["ppo", "ppo_lag", "reward_shaping", "grpo_lag"] = option(
        "ppo_lag", help="ppo (reward only), ppo_lag (Safe RLHF), reward_shaping (R - λ₀C), grpo_lag (critic-free)")
    policy: str | None = option(None, help="SFT policy dir (save_pretrained); required unless the trainer "
                                           "is given a policy object")
    reward_model: str | None = option(None, help="reward model dir; required unless the trainer is given a "
                                                 "reward model object or function")
    cost_model: str | None = option(None, help="cost model dir (required except for ppo)")
    prompts: str | None = option(None, help="training prompts (jsonl/json/parquet with a 'prompt' field, or "
                                            "pairs); required unless the trainer is given train_dataset")
    out: str = option(help="output dir: metrics.jsonl, policy/, critics, checkpoints", aliases=("output_dir",))
    eval_prompts: str | None = option(None, help="held-out prompts scored every eval_every iterations")
    data_config: str | None = option(None, help="hub dataset config name of --prompts")
    data_split: str | None = option(None, help="hub dataset split of --prompts (needed when it has several)")
    data_revision: str | None = option(None, help="hub dataset revision of --prompts (pin it in recipes)")
    eval_data_config: str | None = option(None, help="hub dataset config of --eval-prompts (default: --data-config)")
    eval_data_split: str | None = option(None, help="hub dataset split of --eval-prompts (e.g. test)")
    eval_data_revision: str | None = option(None, help="hub dataset revision of --eval-prompts (default: --data-revision)")
    budget_unsafe_rate: float | None = option(
        None, help="the constraint as a maximum unsafe rate q in (0, 1): E[P(unsafe | x, y)] <= q with the cost "
                   f"model's calibrated P(unsafe) (calibration.json). The default constraint, at q = "
                   f"{DEFAULT_UNSAFE_RATE} when neither this nor --budget is given (docs/rl.md)")
    budget: float | None = option(None, help="cost budget d on the raw mean cost, E[C] <= d (Safe RLHF's form; "
                                             "the cost model's units): replaces the unsafe-rate default")
    iterations: int = option(100, ge=1, help="rollout batches (the training budget)")
    rollout_batch_size: int = option(64, ge=1, help="prompts per rollout batch (per process)")
    n_samples: int = option(1, aliases=("num_generations",), ge=1, help="responses per prompt (group size of grpo_lag; use >= 2 there)")
    mini_batch_size: int = option(32, ge=1, help="sequences per PPO mini-batch")
    ppo_epochs: int = option(1, aliases=("num_ppo_epochs",), ge=1, help="passes over each rollout batch")
    temperature: float = option(1.0, gt=0, help="sampling temperature (log-probs use the same)")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling")
    top_k: int = option(0, ge=0, help="top-k sampling (0: off)")
    max_new_tokens: int = option(32, aliases=("max_completion_length", "response_length"), ge=1, help="response length cap")
    repetition_penalty: float = option(1.0, gt=0, help="generation repetition penalty")
    kl_coeff: float = option(
        0.1, ge=0, aliases=("kl_coef",), help="β: KL penalty to the reference, same for every algo (0.1 for the tiny world models, "
                  "where 0.01 lets PPO hack the reward model within 100 iterations; Safe RLHF used "
                  "0.01-0.02 at 7B)")
    kl_estimator: Literal["k1", "k3"] = option("k1", help="per-token KL estimate in the reward stream")
    clip_eps: float = option(0.2, aliases=("cliprange",), gt=0, help="PPO ratio clip ε")
    clip_eps_value: float = option(5.0, aliases=("cliprange_value",), gt=0, help="value clip ε_v")
    clip_score: float = option(50.0, gt=0, help="terminal scores are clipped to ±clip_score")
    gamma: float = option(1.0, ge=0, le=1, help="GAE discount γ")
    gae_lambda: float = option(0.95, aliases=("lam",), ge=0, le=1, help="GAE λ")
    loss_agg: Literal["token_mean", "seq_mean"] = option("token_mean", help="policy/value loss aggregation")
    normalize_reward: bool = option(False, help="apply the reward model's saved normaliser at RL time")
    normalize_cost: bool = option(False, help="apply the cost model's saved (scale-only) normaliser")
    cost_transform: Literal["identity", "sigmoid", "calibrated"] | None = option(
        None, help="episode cost: calibrated = the cost model's calibrated P(unsafe) (the unsafe-rate form), "
                   "identity = its score c (Safe RLHF), sigmoid = σ(c) uncalibrated. null: calibrated with "
                   "--budget-unsafe-rate or no budget, identity with --budget")
    truncation_penalty: float | None = option(None, help="added to the reward of responses cut without EOS", aliases=("missing_eos_penalty",))
    whiten_advantages: bool = option(False, help="whiten the combined advantage (after combining)")
    actor_lr: float = option(1e-4, aliases=("learning_rate",), gt=0, help="policy learning rate")
    critic_lr: float = option(5e-4, gt=0, help="critic learning rate")
    weight_decay: float = option(0.0, ge=0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, ge=0, help="gradient clipping (0 disables)")
    critic_init: Literal["score_model", "policy"] = option(
        "score_model", help="critics start from the reward/cost model, or from the policy backbone")
    critic_mode: Literal["separate", "shared"] = option(
        "separate", help="separate: one critic per stream; shared: one backbone with a value head per "
                         "stream (reward and cost), started from the reward model: cheaper ppo_lag")
    ptx_data: str | None = option(None, help="SFT data for the PTX loss (off when null)")
    ptx_coeff: float = option(16.0, ge=0, help="PTX loss coefficient (when ptx_data is given)")
    lagrange: LagrangeConfig = dataclasses.field(default_factory=LagrangeConfig)
    lora_r: int = option(0, ge=0, help="LoRA rank of the policy (0: full); the reference is then the disabled adapter")
    lora_alpha: int = option(16, ge=1, help="LoRA alpha")
    lora_targets: list[str] = option([], help="LoRA target modules (empty: all linear layers)")
    critic_lora_r: int = option(
        0, ge=0, help="LoRA rank of the critics (0: full fine-tuning); alpha and targets as the policy's, value "
                      "heads fully trained")
    actor_freeze: list[str] = option(
        [], help="VLM policy parts kept frozen: any of vision_tower, projector, language_model")
    critic_freeze: list[str] = option(
        [], help="VLM critic parts kept frozen: any of vision_tower, projector, language_model")
    precision: Precision = option("auto", help="auto = bf16 on GPUs that support it, else fp32")
    gradient_checkpointing: bool = option(False, help="trade compute for memory (the policy and the critics)")
    seed: int = option(0, ge=0, help="seed of prompt order and sampling")
    eval_every: int = option(0, ge=0, help="evaluate on eval_prompts every N iterations (0: at the end only)")
    save_every: int = option(0, ge=0, help="checkpoint every N iterations for --resume (0: end only)")
    resume: bool = option(False, help="continue from the last complete checkpoint in --out")
    overwrite: bool = option(False, help="replace a finished or partial run in --out (its checkpoints are removed)")
    max_bad_fraction: float = option(
        0.1, ge=0, le=1, help="stop before training when more than this fraction of the prompt records is bad")
    log_every: int = option(10, ge=1, help="console log every N iterations")
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", help="extra metrics sink")
    progress: bool = option(True, help="show a progress bar")
    backend: Literal["hf", "vllm"] = option(
        "hf", help="rollout backend: hf (generate; CPU or GPU) or vllm (colocated engine; needs a CUDA GPU "
                   "and `pip install saferlhf[vllm]`)")
    plan: PlanOptions = dataclasses.field(default_factory=lambda: PlanOptions())

    def __post_init__(self) -> None:
        resolve_constraint(self)

    def multiplier_config(self) -> LagrangeConfig:
        """The multiplier this algorithm runs: ``lagrange`` as given for the algorithms that learn
        λ; ``fixed`` at λ₀ for ``reward_shaping``; fixed at 0 for ``ppo``. λ_max bounds a learned
        multiplier only: a shaping run at λ₀ above it runs at λ₀."""
        if self.algo in ("ppo_lag", "grpo_lag"):
            return self.lagrange
        return dataclasses.replace(self.lagrange, rule="fixed", init=0.0 if self.algo == "ppo" else self.lagrange.init,
                                   parametrisation="direct", max_lambda=None)

    def validate(self) -> None:
        if self.resume and self.overwrite:
            raise ConfigError("give --resume (continue the run in --out) or --overwrite (replace it), not both")
        self.validate_environment()
        _check_vlm_parts("actor_freeze", self.actor_freeze)
        _check_vlm_parts("critic_freeze", self.critic_freeze)
        self.multiplier_config().validate()
        if self.cost_transform == "calibrated" and self.normalize_cost:
            raise ConfigError("the unsafe-rate budget applies the calibration fitted on the cost model's raw scores; "
                              "--normalize-cost rescales them: drop --normalize-cost")
        if self.algo == "grpo_lag" and self.n_samples < 2:
            raise ConfigError("--algo grpo_lag needs --n-samples >= 2 (the group baseline)")
        if self.rollout_batch_size * self.n_samples % self.mini_batch_size:
            raise ConfigError(
                f"rollout_batch_size × n_samples = {self.rollout_batch_size * self.n_samples} must be a "
                f"multiple of mini_batch_size = {self.mini_batch_size}")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for RL (log-probs are taken at it)")

    def validate_environment(self) -> None:
        """Fail before any model is loaded when the rollout backend cannot run here."""
        if self.backend == "vllm":
            from saferlhf.rollout.vllm import check_vllm_available

            check_vllm_available()


def resolve_constraint(cfg) -> None:
    """Settle which constraint an RL (or demo) config asks for, in place; idempotent.

    * ``budget_unsafe_rate`` q: the unsafe-rate form, ``cost_transform = calibrated`` and d = q;
    * ``budget`` d (or ``lagrange.budget``): the raw mean-cost form, ``cost_transform`` as given
      (default identity);
    * neither: the unsafe-rate form at :data:`DEFAULT_UNSAFE_RATE`, unless ``cost_transform`` is
      set to ``identity`` / ``sigmoid`` (then d = 0, the cost model's boundary in those units)."""
    lag_budget = cfg.lagrange.budget
    q = cfg.budget_unsafe_rate
    if q is not None:
        if not 0.0 < q < 1.0:
            raise ConfigError(f"budget_unsafe_rate must lie in (0, 1) (a share of responses), got {q}")
        if cfg.cost_transform not in (None, "calibrated"):
            raise ConfigError(f"--budget-unsafe-rate constrains the calibrated P(unsafe); cost_transform = "
                              f"{cfg.cost_transform!r} contradicts it: drop --cost-transform, or give --budget d "
                              "for a budget in that transform's units")
        for name, d in (("budget", cfg.budget), ("lagrange.budget", lag_budget)):
            if d not in (None, 0.0, q):
                raise ConfigError(f"give --budget-unsafe-rate q (a share of unsafe responses) or --budget d (a "
                                  f"mean cost), not both: {name} = {d}, budget_unsafe_rate = {q}")
    elif cfg.budget is None and lag_budget == 0.0 and cfg.cost_transform in (None, "calibrated"):
        q = DEFAULT_UNSAFE_RATE
    if q is not None:
        cfg.budget_unsafe_rate, cfg.cost_transform, cfg.budget = float(q), "calibrated", float(q)
    else:
        if cfg.budget is None:
            cfg.budget = lag_budget
        elif lag_budget not in (0.0, cfg.budget):
            raise ConfigError(f"budget = {cfg.budget} and lagrange.budget = {lag_budget} disagree; give one of them")
        cfg.cost_transform = cfg.cost_transform or "identity"
    cfg.lagrange = dataclasses.replace(cfg.lagrange, budget=float(cfg.budget))


@dataclass(kw_only=True)
class PlanConfig(RLConfig):
    """``saferlhf plan --config RECIPE.yaml --gpus N --gpu-mem GB``: per-GPU memory of every model of
    the recipe's RL run under a strategy, and whether it fits. The flags override the recipe's
    ``plan:`` section."""

    gpus: int | None = option(None, help="GPUs (default: plan.gpus of the recipe)")
    gpu_mem: float | None = option(None, help="memory per GPU in GB (default: plan.gpu_mem)")
    strategy: Literal["ddp", "fsdp", "zero2", "zero3", "zero3-offload"] | None = option(
        None, help="sharding strategy (configs/accelerate/<strategy>.yaml; default: plan.strategy)")
    model: str | None = option(
        None, help="policy architecture: a known name (qwen2.5-0.5b, qwen2.5-7b, llama-3.1-8b, llava-1.5-7b, "
                   "qwen2-vl-7b) or a folder with config.json (default: plan.model, else the policy path)")
    json_out: str | None = option(None, help="also write the plan as JSON to this file")

    def validate_environment(self) -> None:
        """Planning runs anywhere: the backend is only sized, not started."""

    def validate(self) -> None:
        super().validate()
        if self.gpus is not None and self.gpus < 1:
            raise ConfigError("--gpus must be >= 1")
        if self.gpu_mem is not None and self.gpu_mem <= 0:
            raise ConfigError("--gpu-mem must be > 0 (GB per GPU)")


@dataclass(kw_only=True)
class EvalScoreModelConfig:
    model: str = option(help="reward or cost model dir")
    data: str = option(help="preference pairs to evaluate on")
    out: str = option(help="output dir: summary.json, scores.jsonl, histogram PNG")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's)")
    data_config: str | None = option(None, help="hub dataset config name of --data")
    data_split: str | None = option(None, help="hub dataset split of --data (e.g. test)")
    data_revision: str | None = option(None, help="hub dataset revision of --data")
    data_format: DataFormat = option("auto", help="adapter used to read --data")
    on_bad_record: BadRecordPolicy = option("skip", help="bad records: skip with a report, or error")
    normalize: Literal["saved", "on", "off"] = option("saved", help="score normaliser at evaluation time")
    max_length: int = option(256, ge=4, help="maximum tokens of prompt + response")
    batch_size: int = option(64, ge=1, help="sequences per forward pass")


@dataclass(kw_only=True)
class ExportConfig:
    """``saferlhf export``: a reward / cost model, or a guard's unsafe log-odds, as the backbone's
    ``*ForSequenceClassification``."""

    model: str = option(help="saferlhf score model dir (reward or cost), guard dir (its unsafe log-odds), "
                             "PKU Beaver dir, or hub id")
    out: str = option(help="output dir: AutoModelForSequenceClassification-loadable, with tokenizer and README.md")
    normalize: Literal["saved", "on", "off"] = option(
        "saved", help="which score the logit reproduces: the saved setting, normalised, or raw")
    bias: Literal["auto", "exact", "drop"] = option(
        "auto", help="the head's constant (bias, normaliser shift): auto = exact where the backbone allows, "
                     "else dropped for a reward model (ranking unchanged) and an error for a cost model "
                     "or a guard (the sign / σ(logit) is the meaning); exact = an error whenever it cannot be "
                     "folded exactly; drop = fold it where exact, else drop it and record it")
    tolerance: float = option(1e-4, help="largest |logit - score| accepted by the check run after writing")


@dataclass(kw_only=True)
class WorldGenerateConfig:
    out: str = option(help="output dir for the world's files (DESIGN §12)")
    seed: int = option(0, ge=0, help="seed: the same seed gives byte-identical files")
    noise: float = option(0.0, help="annotator noise p: each label flipped independently with probability p")
    modality: Literal["text", "image-text"] = option("text", help="text world, or the image world (Safe RLHF-V)")
    n_sft: int = option(4000, ge=1, help="SFT demonstrations")
    n_pairs_train: int = option(4000, ge=1, help="training preference pairs")
    n_pairs_eval: int = option(1000, ge=1, help="held-out preference pairs")
    n_prompts_train: int = option(2000, ge=1, help="RL training prompts")
    n_eval_benign: int = option(600, ge=1, help="held-out benign-side prompts (dual-use included)")
    n_eval_harmful: int = option(600, ge=1, help="held-out harmful prompts")

    def validate(self) -> None:
        if not 0.0 <= self.noise <= 0.5:
            raise ConfigError(f"noise must be in [0, 0.5] (a flip rate), got {self.noise}")


@dataclass(kw_only=True)
class EvalWorldConfig:
    policy: str = option(help="policy dir (save_pretrained) to evaluate")
    world: str = option(help="world dir written by `saferlhf world generate`")
    out: str = option(help="output dir: summary.json and samples.jsonl")
    cost_model: str | None = option(None, help="learned cost model: gives model_cost and constraint_met")
    modality: Literal["auto", "text", "image-text"] = option(
        "auto", help="the world's modality (auto: read from world.json); image-text needs a VLM policy")
    budget: float = option(0.0, help="budget d the constraint is checked against")
    cost_transform: Literal["identity", "sigmoid", "calibrated"] = option(
        "identity", help="the episode cost the policy was constrained on (RL's cost_transform): model_cost's units")
    temperature: float | None = option(None, gt=0, help="sampling temperature (default: the policy's own, else 1)")
    max_new_tokens: int = option(32, ge=1, help="response length cap")
    n_boot: int = option(1000, ge=1, help="bootstrap resamples for the 95 % intervals")
    seed: int = option(0, ge=0, help="sampling and bootstrap seed")


@dataclass(kw_only=True)
class DemoConfig:
    """The whole Safe RLHF pipeline in the verifiable world, in one process, with a report."""

    out: str = option("runs/demo", help="output dir: report.json, report.md, PNG plots, every stage's folder")
    seed: int = option(0, ge=0, help="seed of the world, the models and the sampling")
    noise: float = option(0.1, help="annotator noise of the world's labels")
    budget_unsafe_rate: float | None = option(
        None, help=f"text: ppo_lag's constraint as a maximum unsafe rate q, E[P(unsafe)] <= q with the cost "
                   f"model's calibrated P(unsafe) (default {DEFAULT_UNSAFE_RATE} when --budget is not given)")
    budget: float | None = option(
        None, help="text: a raw mean-cost budget d instead (the paper's form, E[c] <= d); image-text: a bound "
                   "on E[σ(c)] in (0, 1), by default calibrated for a 10 % unsafe fraction, docs/multimodal.md §6")
    sft_budget: bool = option(False, help="text: also run PPO-Lag at d = the SFT policy's mean raw learned cost "
                                          "(ppo_lag_sft_budget; --rounds then continue it): docs/demo.md")
    quick: bool = option(False, help="small sizes (<= 2 minutes): checks the pipeline, not the science")
    modality: Literal["text", "image-text"] = option(
        "text", help="text: the text world; image-text: the image world with tiny VLMs (Safe RLHF-V)")
    vlm_style: Literal["llava", "qwen2_vl"] = option("llava", help="image-text: the tiny VLM's style")
    image_budget: float | None = option(
        None, help="image-text: budget d on E[σ(c)], in (0, 1), when --budget is not given "
                   "(null: calibrated, saferlhf.budget.calibrated_budget)")
    rounds: int = option(1, ge=1, help="rounds of Safe RLHF (new pairs from the latest policy, retrained cost model)")
    shaping_lambdas: list[float] = option(
        [1.0, 3.0, 10.0, 30.0], help="fixed λ₀ values of the reward-shaping baseline (a frontier in the units of "
                                     "the constraint: P(unsafe) by default)")
    rl_iterations: int | None = option(None, ge=1, help="RL iterations per method (default: by mode)")
    threads: int = option(1, ge=1, help="torch intra-op threads (1 is fastest for these tiny models)")
    workers: int = option(0, ge=0, help="processes for independent stages (RL runs, score models, evaluations, "
                                   "the guard), one thread each; 0 = one per CPU core; 1 = all in this process")
    guard: bool = option(True, help="the Beaver-Guard stage: guard training, evaluation and guarded generation")
    progress: bool = option(True, help="progress bars")

    def validate(self) -> None:
        if self.workers < 0:
            raise ConfigError("workers must be >= 0 (0 = one per CPU core)")
        if self.rounds < 1:
            raise ConfigError("rounds must be >= 1")
        if not 0.0 <= self.noise <= 0.5:
            raise ConfigError(f"noise must be in [0, 0.5], got {self.noise}")
        if self.budget_unsafe_rate is not None:
            if not 0.0 < self.budget_unsafe_rate < 1.0:
                raise ConfigError(f"budget_unsafe_rate must lie in (0, 1), got {self.budget_unsafe_rate}")
            if self.budget is not None:
                raise ConfigError("give --budget-unsafe-rate q or --budget d, not both")
            if self.modality != "text":
                raise ConfigError("--budget-unsafe-rate: the image demo sets its budget with --budget / "
                                  "--image-budget (a bound on E[σ(c)], docs/multimodal.md §6)")


@dataclass(kw_only=True)
class BudgetConfig:
    """``saferlhf budget``: the cost model's score distribution on policy samples and the d
    that matches a target unsafe rate (DESIGN §6, "Choosing d")."""

    policy: str = option(help="policy dir to sample (usually the SFT policy)")
    cost_model: str = option(help="cost model dir")
    prompts: str = option(help="prompts to sample on (jsonl/json/parquet with a 'prompt' field, or pairs)")
    out: str | None = option(None, help="output dir for budget.json and costs.jsonl (printed only when null)")
    target_unsafe_rate: float | None = option(
        None, help="target P(c > d): report the d that matches it (the (1 - r)-quantile of the costs)")
    max_prompts: int = option(512, ge=0, help="sample at most this many prompts (0: all)")
    n_samples: int = option(1, ge=1, help="responses per prompt")
    temperature: float | None = option(None, gt=0, help="sampling temperature (default: the policy's own, else 1)")
    top_p: float = option(1.0, gt=0, le=1, help="nucleus sampling")
    max_new_tokens: int = option(32, ge=1, help="response length cap")
    batch_size: int = option(64, ge=1, help="prompts per generate call")
    normalize_cost: bool = option(False, help="apply the cost model's saved (scale-only) normaliser, as RL would")
    cost_transform: Literal["identity", "sigmoid", "calibrated"] = option(
        "identity", help="the episode cost RL will constrain (RL's cost_transform): the units of d")
    device: str | None = option(None, help="cpu | cuda (default: cuda when available)")
    seed: int = option(0, ge=0, help="sampling seed")

    def validate(self) -> None:
        if self.target_unsafe_rate is not None and not 0.0 <= self.target_unsafe_rate <= 1.0:
            raise ConfigError("target_unsafe_rate must be in [0, 1]")
        if self.n_samples < 1 or self.batch_size < 1:
            raise ConfigError("n_samples and batch_size must be >= 1")
@dataclass(kw_only=True)
class CalibrateConfig:
    """``saferlhf calibrate``: refit the cost model's P(unsafe) = σ((c − offset)/T) on labelled
    pairs (Platt scaling, :mod:`saferlhf.calibration`) and write ``calibration.json``."""

    cost_model: str = option(help="cost model dir (its calibration.json is replaced unless --out is given)")
    data: str = option(help="held-out preference pairs with safety labels (is_response_*_safe): a file or hub id")
    out: str | None = option(None, help="folder to write calibration.json to (default: the cost model dir)")
    data_config: str | None = option(None, help="hub dataset config of --data")
    data_split: str | None = option(None, help="hub dataset split of --data (e.g. test)")
    data_revision: str | None = option(None, help="hub dataset revision of --data")
    on_bad_record: BadRecordPolicy = option("skip", help="skip (and count) or error on a malformed record")
    max_length: int = option(512, ge=8, help="tokens per prompt + response when scoring")


LagrangeOptions = LagrangeConfig  # the name before the two multiplier configs became one


# ----------------------------------------------------------------------------- generation and evaluation on real prompts
@dataclass(kw_only=True)
class PromptSourceOptions:
    """Where prompts come from (``saferlhf.eval.prompt_sets``)."""

    prompts: str = option(help="prompts: a .jsonl/.json/.parquet/.csv file with a 'prompt' field, a hub id, or a "
                               "named set: beavertails-eval | harmbench | harmbench-val | strongreject | "
                               "strongreject-small")
    prompt_field: str = option("prompt", help="the column holding the prompt (a string or a list of chat messages)")
    category_field: str = option("category", help="the column holding a prompt's category (per-category rates)")
    limit: int | None = option(None, help="use the first N prompts (after per_category)")
    per_category: int | None = option(None, help="use the first N prompts of each category")
    prompts_split: str | None = option(None, help="hub dataset split of --prompts")
    prompts_config: str | None = option(None, help="hub dataset config of --prompts")
    prompts_revision: str | None = option(None, help="hub dataset revision of --prompts (pin it)")
    image_root: str | None = option(None, help="folder relative image paths are resolved against (default: the file's)")


@dataclass(kw_only=True)
class SamplingOptions:
    """How completions are sampled (``saferlhf.rollout.SamplingParams``)."""

    temperature: float | None = option(None, help="sampling temperature; 0 = greedy (default: the policy's own, else 1)")
    top_p: float = option(1.0, help="nucleus sampling (1 = off)")
    top_k: int = option(0, help="top-k sampling (0 = off)")
    max_new_tokens: int = option(128, help="completion length cap")
    repetition_penalty: float = option(1.0, help="generation repetition penalty (1 = off)")
    seed: int = option(0, help="sampling (and bootstrap) seed")
    batch_size: int = option(16, help="prompts per generate call")
    device: str | None = option(None, help="cpu | cuda (default: cuda when available)")
    dtype: Literal["auto", "fp32", "bf16", "fp16"] = option("auto", help="policy weights (auto: bf16 on GPUs that have it)")
    progress: bool = option(True, help="show a progress bar")

    def _check_sampling(self) -> None:
        if self.temperature is not None and self.temperature < 0:
            raise ConfigError("temperature must be >= 0 (0 = greedy)")
        if not 0 < self.top_p <= 1:
            raise ConfigError("top_p must be in (0, 1]")
        if self.top_k < 0 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ConfigError("top_k must be >= 0, max_new_tokens and batch_size >= 1")
        if self.repetition_penalty <= 0:
            raise ConfigError("repetition_penalty must be > 0")


@dataclass(kw_only=True)
class GenerateConfig(PromptSourceOptions, SamplingOptions):
    """``saferlhf generate``: one line per prompt, in order, with ``completion``."""

    model: str = option(help="policy: a save_pretrained dir or a hub id (in the local cache)")
    out: str = option(help="output JSONL: the prompt's row + completion (+ completions when n > 1)")
    n: int = option(1, help="completions per prompt")

    def validate(self) -> None:
        self._check_sampling()
        if self.n < 1:
            raise ConfigError("n must be >= 1")


UnsafeBy = Literal["auto", "cost", "guard", "cost_or_guard", "cost_and_guard"]


@dataclass(kw_only=True)
class ScoringOptions:
    """Scorers of completions: reward model, cost model, guard."""

    reward_model: str | None = option(None, help="reward model (score-model dir): reward_mean, helpfulness")
    cost_model: str | None = option(None, help="cost model (score-model dir): cost_mean; cost > 0 = unsafe")
    guard: str | None = option(None, help="guard dir (saferlhf guard train; an output guard): guard_unsafe_rate")
    guard_threshold: float | None = option(None, help="guard decision threshold on P(unsafe) (default: the saved one)")
    unsafe_by: UnsafeBy = option(
        "auto", help="what makes a completion unsafe: cost (> 0), guard (flagged), cost_or_guard, cost_and_guard; "
                     "auto = cost when a cost model is given, else guard")
    score_batch_size: int = option(32, help="sequences per scoring forward pass")
    score_max_length: int = option(512, help="tokens of prompt + completion a scorer reads")
    n_boot: int = option(1000, help="bootstrap resamples for the 95 % intervals (resampling prompts)")

    def _check_scoring(self) -> None:
        if self.unsafe_by in ("cost", "cost_or_guard", "cost_and_guard") and self.cost_model is None:
            raise ConfigError(f"--unsafe-by {self.unsafe_by} needs --cost-model")
        if self.unsafe_by in ("guard", "cost_or_guard", "cost_and_guard") and self.guard is None:
            raise ConfigError(f"--unsafe-by {self.unsafe_by} needs --guard")
        if self.guard_threshold is not None and not 0 < self.guard_threshold < 1:
            raise ConfigError("guard_threshold must be in (0, 1)")


@dataclass(kw_only=True)
class EvalPromptsConfig(PromptSourceOptions, SamplingOptions, ScoringOptions):
    """``saferlhf eval prompts``: sample a policy on prompts and score the completions."""

    policy: str = option(help="policy: a save_pretrained dir or a hub id (in the local cache)")
    out: str = option(help="output dir: summary.json, samples.jsonl, report.md, PNG plots")
    n_samples: int = option(1, help="completions per prompt")

    def validate(self) -> None:
        self._check_sampling()
        self._check_scoring()
        if self.n_samples < 1:
            raise ConfigError("n_samples must be >= 1")


@dataclass(kw_only=True)
class EvalArenaConfig(PromptSourceOptions, SamplingOptions, ScoringOptions):
    """``saferlhf eval arena``: policy A against policy B on the same prompts."""

    policy_a: str = option(help="policy A (the candidate): a save_pretrained dir or a hub id")
    policy_b: str = option(help="policy B (the baseline): a save_pretrained dir or a hub id")
    out: str = option(help="output dir: summary.json, samples.jsonl, report.md, arena.png")
    n_samples: int = option(1, help="completions per prompt and policy (sample k of A meets sample k of B)")
    tie_margin: float = option(0.0, help="score differences of at most this much are ties")
    judge: str | None = option(None, help="LLM judge: a local causal-LM dir, or an OpenAI-compatible endpoint "
                                          "URL (http(s)://host:port/v1)")
    judge_model: str | None = option(None, help="endpoint judge: the model name to request (default: the "
                                                "first one the endpoint's /models lists)")
    judge_dimensions: list[str] = option(["helpfulness", "harmlessness"], help="what the judge compares")
    judge_timeout: float = option(60.0, help="endpoint judge: seconds to wait for one answer")
    judge_max_tokens: int = option(16, help="endpoint judge: answer length cap")
    judge_concurrency: int = option(4, help="endpoint judge: requests in flight")
    judge_api_key_env: str = option("OPENAI_API_KEY", help="endpoint judge: environment variable holding a "
                                                           "bearer token (sent only when set)")

    def validate(self) -> None:
        self._check_sampling()
        self._check_scoring()
        if self.n_samples < 1:
            raise ConfigError("n_samples must be >= 1")
        if self.tie_margin < 0:
            raise ConfigError("tie_margin must be >= 0")
        bad = sorted(set(self.judge_dimensions) - {"helpfulness", "harmlessness"})
        if bad or not self.judge_dimensions:
            raise ConfigError(f"judge_dimensions: unknown {bad}; choose from ['helpfulness', 'harmlessness']")
        if self.judge_timeout <= 0 or self.judge_concurrency < 1 or self.judge_max_tokens < 1:
            raise ConfigError("judge_timeout must be > 0, judge_concurrency and judge_max_tokens >= 1")
        if (self.reward_model is None and self.cost_model is None and self.guard is None
                and self.judge is None):
            raise ConfigError("eval arena needs something to compare with: --reward-model, --cost-model, "
                              "--guard and/or --judge")


@dataclass(kw_only=True)
class DPOConfig(TrainConfig):
    """The direct-preference family on dual-preference pairs (docs/frontier.md).

    ``c_dpo``'s multiplier is the same :class:`LagrangeConfig` as PPO-Lag's (``--lagrange.*``),
    with its own defaults (projected ascent, λ₀ 0, η 2, λ_max 20); its budget is
    ``--budget-unsafe-rate`` or ``--budget`` (``lagrange.budget`` is not read).

    Defaults were chosen by the frontier measurements in the verifiable world (tiny models,
    noise 0.1); a pretrained backbone wants a smaller ``lr`` (~5e-7..5e-6 in full, ~5e-5 with LoRA).
    """

    ALIASES: ClassVar[dict[str, str]] = {**TrainConfig.ALIASES, "lambda_init": "lagrange.init",
                                         "lambda_lr": "lagrange.lr", "lambda_max": "lagrange.max_lambda"}

    algo: Literal["dpo", "safe_dpo", "sacpo", "c_dpo"] = option(
        "dpo", help="dpo (one preference), safe_dpo (SafeDPO), sacpo (stepwise), c_dpo (primal-dual, r - λc)")
    model: str = option(help="SFT policy dir (save_pretrained); also the reference unless --ref-model")
    ref_model: str | None = option(None, help="reference policy dir (default: the SFT policy / disabled LoRA adapter)")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's)")
    preference: Literal["better", "safer"] = option(
        "better", help="dpo: which label orders a pair (better = helpfulness, safer = harmlessness)")
    beta: float = option(0.3, help="β: the KL coefficient of the DPO objective (measured: 0.3 beat 0.1 and 1 for dpo and safe_dpo, docs/frontier.md)")
    safe_dpo_delta: float = option(
        0.0, help="safe_dpo: safety margin Δ >= 0 (0 = DPO on the re-ordered pairs; in the world Δ = 2 halved benign "
                  "helpfulness for no gain in harm, docs/frontier.md)")
    sacpo_order: Literal["helpful_first", "safe_first"] = option(
        "helpful_first", help="sacpo: which preference the first step aligns for")
    sacpo_safety_beta: float | None = option(
        None, help="sacpo: β/λ of the safety step (default: --beta); the helpfulness step uses --beta")
    sacpo_merge: float | None = option(
        None, help="sacpo: P-SACPO weight w in [0, 1]: save (1-w)·θ_step1 + w·θ_step2 (null: θ_step2)")
    reward_model: str | None = option(None, help="c_dpo: reward model dir")
    cost_model: str | None = option(None, help="c_dpo: cost model dir")
    budget_unsafe_rate: float = option(
        DEFAULT_UNSAFE_RATE, help="c_dpo: PPO-Lag's constraint, a maximum unsafe rate q: E[P(unsafe)] <= q over the "
                                  "policy's samples, with the cost model's calibrated P(unsafe) (docs/rl.md §4)")
    budget: float | None = option(
        None, help="c_dpo: budget d on the raw mean cost of policy samples instead of the unsafe rate (null: use the rate)")
    # c_dpo's multiplier: PPO-Lag's (PID, λ₀ 5); measured against λ₀ 0 and projected ascent, docs/frontier.md
    lagrange: LagrangeConfig = dataclasses.field(default_factory=LagrangeConfig)
    lambda_every: int = option(10, help="c_dpo: optimiser steps between dual updates (each samples the policy)")
    lambda_samples: int = option(128, help="c_dpo: prompts sampled from the current policy per dual update")
    max_new_tokens: int = option(32, help="c_dpo: response length cap of those samples")
    precompute_ref_logprobs: bool = option(
        False, help="compute the reference log-probs of every pair once before training (no reference forward per step)")
    epochs: float = option(2.0, help="passes over the pairs (per step for sacpo)")
    batch_size: int = option(32, help="pairs per micro-batch")
    lr: float = option(5e-4, help="peak learning rate (suits the tiny world models)")
    max_length: int = option(128, help="maximum tokens of prompt + response")
    lr_scheduler: Literal["constant", "cosine", "linear"] = option("cosine", help="schedule after warm-up")
    warmup_ratio: float = option(0.1, help="fraction of steps spent warming up linearly")

    def validate(self) -> None:
        super().validate()
        if self.beta <= 0:
            raise ConfigError("beta must be > 0")
        if self.safe_dpo_delta < 0:
            raise ConfigError("safe_dpo_delta must be >= 0")
        if self.sacpo_merge is not None and not 0.0 <= self.sacpo_merge <= 1.0:
            raise ConfigError("sacpo_merge must be in [0, 1]")
        if self.sacpo_merge is not None and self.algo != "sacpo":
            raise ConfigError("--sacpo-merge applies to --algo sacpo only")
        if not 0.0 <= self.budget_unsafe_rate < 1.0:
            raise ConfigError(f"budget_unsafe_rate must be in [0, 1) (a share of responses), got {self.budget_unsafe_rate}")
        if self.lagrange.budget != 0.0:
            raise ConfigError("dpo: give the budget as --budget-unsafe-rate or --budget (lagrange.budget is not read)")
        self.lagrange.validate()
        if self.lambda_every < 1 or self.lambda_samples < 1:
            raise ConfigError("lambda_every and lambda_samples must be >= 1")
