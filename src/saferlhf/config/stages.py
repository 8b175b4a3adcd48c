"""The config dataclass of every CLI stage.

Kept free of heavy imports (no torch) so ``saferlhf <stage> --help`` answers at once.
Training stages share :class:`TrainConfig`; each stage adds its own keys.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from saferlhf.config.base import ConfigError, option

DataFormat = Literal["auto", "pku", "beavertails_v", "beavertails_v_single", "beavertails", "trl", "world"]
BadRecordPolicy = Literal["skip", "error"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(kw_only=True)
class DataSummaryConfig:
    data: str = option(help="dataset: a local .jsonl/.json/.parquet file or an HF hub id")
    format: DataFormat = option("auto", help="adapter to read it with (auto-detected from the fields)")
    config: str | None = option(None, help="hub dataset config name (e.g. alpaca-7b)")
    split: str = option("train", help="hub dataset split")
    revision: str | None = option(None, help="hub dataset revision (pin it in recipes)")
    image_root: str | None = option(None, help="folder that relative image paths are resolved against")
    on_bad_record: BadRecordPolicy = option("skip", help="skip bad records with a report, or stop at the first")
    limit: int | None = option(None, help="read at most this many records")


VLM_PARTS = ("vision_tower", "projector", "language_model")


def _check_vlm_parts(key: str, parts: list[str]) -> None:
    unknown = sorted(set(parts) - set(VLM_PARTS))
    if unknown:
        raise ConfigError(f"{key}: unknown VLM part(s) {unknown}; choose from {list(VLM_PARTS)}")


@dataclass(kw_only=True)
class TrainConfig:
    """Options every trainer shares (optimiser, schedule, precision, logging, checkpoints)."""

    data: str = option(help="training data file (jsonl/json/parquet) or hub id")
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
    max_length: int = option(128, help="maximum tokens of prompt + response")
    epochs: float = option(1.0, help="passes over the data (fractional allowed); max_steps wins when set")
    max_steps: int | None = option(None, help="stop after this many optimiser steps")
    batch_size: int = option(16, help="sequences (or pairs) per micro-batch")
    grad_accum: int = option(1, help="micro-batches per optimiser step")
    lr: float = option(1e-3, help="peak learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    lr_scheduler: Literal["constant", "cosine", "linear"] = option("cosine", help="schedule after warm-up")
    warmup_ratio: float = option(0.03, help="fraction of steps spent warming up linearly")
    max_grad_norm: float = option(1.0, help="gradient clipping (0 disables)")
    gradient_checkpointing: bool = option(False, help="trade compute for memory")
    precision: Precision = option("auto", help="auto = bf16 where the hardware supports it on GPU, else fp32")
    seed: int = option(0, help="seed of data order, init and sampling")
    eval_every: int = option(0, help="evaluate every N optimiser steps (0: only at the end)")
    save_every: int = option(0, help="checkpoint every N optimiser steps for --resume (0: only at the end)")
    resume: bool = option(False, help="continue from the last complete checkpoint in --out")
    log_every: int = option(10, help="log metrics every N optimiser steps")
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", help="extra metrics sink")
    lora_r: int = option(0, help="LoRA rank (0: full fine-tuning)")
    lora_alpha: int = option(16, help="LoRA alpha")
    lora_dropout: float = option(0.0, help="LoRA dropout")
    lora_targets: list[str] = option([], help="LoRA target modules (empty: all linear layers)")
    freeze: list[str] = option([], help="VLM parts kept frozen: any of vision_tower, projector, language_model")
    progress: bool = option(True, help="show a progress bar")

    def validate(self) -> None:
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
    tiny_layers: int = option(2, help="layers of the tiny model")
    tiny_hidden: int = option(128, help="hidden size of the tiny model")
    epochs: float = option(3.0, help="passes over the data")
    batch_size: int = option(32, help="sequences per micro-batch")
    lr: float = option(2e-3, help="peak learning rate (suits the tiny model from scratch; ~1e-5..1e-4 "
                                  "to fine-tune a pretrained model in full, ~1e-4..1e-3 with LoRA)")


@dataclass(kw_only=True)
class ScoreModelConfig(TrainConfig):
    model: str = option(help="initial model: an SFT checkpoint dir (as in the paper) or any backbone dir")
    tokenizer: str | None = option(None, help="tokenizer dir (default: the model's)")
    loss_type: Literal["sequence", "token"] = option("sequence", help="sequence-wise or token-wise loss")
    reg_coeff: float = option(1e-3, help="score regulariser alpha (mean squared end score)")
    normalizer: Literal["none", "running", "ema"] = option("ema", help="score normaliser kept with the model")
    momentum: float = option(0.9, help="EMA normaliser momentum")
    score_bias: bool = option(True, help="give the score head a bias (false: bias-free like HF *ForSequenceClassification "
                                         "and PKU's models, so `saferlhf export` is exact on any backbone)")
    epochs: float = option(2.0, help="passes over the pairs")
    batch_size: int = option(32, help="pairs per micro-batch (2 x batch_size sequences)")
    lr: float = option(1e-3, help="peak learning rate (suits the tiny world models; ~1e-5 for a "
                                  "pretrained backbone in full, ~1e-4 with LoRA)")


@dataclass(kw_only=True)
class RewardModelConfig(ScoreModelConfig):
    """Reward model: Bradley-Terry on helpfulness preferences (better_response_id)."""


@dataclass(kw_only=True)
class CostModelConfig(ScoreModelConfig):
    """Cost model: safety ranking + kappa-weighted sign classification (cost > 0 = unsafe)."""

    kappa: float = option(1.0, help="weight of the sign (classification) term")
    sign_term: Literal["binary", "graded"] = option(
        "binary", help="binary is_safe labels, or graded harmless_rate -3..+3 (BeaverTails-V)")
    zero_rating_sign: float | None = option(
        None, help="graded: the sign given to a harmless_rate of 0 (e.g. -1 = safe); null = no gradient")
    severity_weighted: bool = option(False, help="weight the sign term by severity level (1 + severity)")
    rank_safe_pairs: bool = option(
        True, help="rank pairs whose responses are both labelled safe (false: only the sign term shapes safe costs)")


@dataclass(kw_only=True)
class LagrangeOptions:
    """The multiplier (DESIGN §6). ``init`` is λ₀; for ``reward_shaping`` it is the fixed λ.

    Demo-scale default: ``projected`` with η = 0.5 (docs/rl.md §8). Safe RLHF's ``log_sgd``
    (η = 0.1) takes steps proportional to λ: after the constraint has been slack for a few
    dozen iterations λ ≈ 0.1–0.2 and it then grows ~1 % per iteration, too slow to hold a
    budget within a 100-iteration run; ``projected`` and ``pid`` react within a few."""

    rule: Literal["log_sgd", "projected", "pid", "fixed"] = option(
        "projected", help="update rule (log_sgd: Safe RLHF's; projected/pid react faster near λ = 0)")
    init: float = option(1.0, help="initial multiplier λ₀ (the fixed λ of reward_shaping)")
    lr: float = option(0.5, help="multiplier learning rate η (per unit of J_C − d per rollout batch)")
    max_lambda: float | None = option(5.0, help="cap λ_max (null: unbounded)")
    delay_steps: int = option(0, help="rollout batches before the first update")
    window: int = option(128, help="episodes in the moving window that estimates J_C")
    kp: float = option(1.0, help="pid: proportional gain")
    ki: float = option(0.2, help="pid: integral gain")
    kd: float = option(0.0, help="pid: derivative gain")


@dataclass(kw_only=True)
class RLConfig:
    """Safe RLHF: one PPO-family loop; the algorithm picks the advantage combiner."""

    algo: Literal["ppo", "ppo_lag", "reward_shaping", "grpo_lag"] = option(
        "ppo_lag", help="ppo (reward only), ppo_lag (Safe RLHF), reward_shaping (R - λ₀C), grpo_lag (critic-free)")
    policy: str = option(help="SFT policy dir (save_pretrained)")
    reward_model: str = option(help="reward model dir")
    cost_model: str | None = option(None, help="cost model dir (required except for ppo)")
    prompts: str = option(help="training prompts (jsonl/json/parquet with a 'prompt' field, or pairs)")
    out: str = option(help="output dir: metrics.jsonl, policy/, critics, checkpoints")
    eval_prompts: str | None = option(None, help="held-out prompts scored every eval_every iterations")
    data_config: str | None = option(None, help="hub dataset config name of --prompts")
    data_split: str | None = option(None, help="hub dataset split of --prompts (needed when it has several)")
    data_revision: str | None = option(None, help="hub dataset revision of --prompts (pin it in recipes)")
    eval_data_config: str | None = option(None, help="hub dataset config of --eval-prompts (default: --data-config)")
    eval_data_split: str | None = option(None, help="hub dataset split of --eval-prompts (e.g. test)")
    eval_data_revision: str | None = option(None, help="hub dataset revision of --eval-prompts (default: --data-revision)")
    budget: float = option(0.0, help="cost budget d: constraint E[C] <= d")
    iterations: int = option(100, help="rollout batches (the training budget)")
    rollout_batch_size: int = option(64, help="prompts per rollout batch (per process)")
    n_samples: int = option(1, help="responses per prompt (group size of grpo_lag; use >= 2 there)")
    mini_batch_size: int = option(32, help="sequences per PPO mini-batch")
    ppo_epochs: int = option(1, help="passes over each rollout batch")
    temperature: float = option(1.0, help="sampling temperature (log-probs use the same)")
    top_p: float = option(1.0, help="nucleus sampling")
    top_k: int = option(0, help="top-k sampling (0: off)")
    max_new_tokens: int = option(32, help="response length cap")
    repetition_penalty: float = option(1.0, help="generation repetition penalty")
    kl_coeff: float = option(
        0.1, help="β: KL penalty to the reference, same for every algo (0.1 for the tiny world models, "
                  "where 0.01 lets PPO hack the reward model within 100 iterations; Safe RLHF used "
                  "0.01-0.02 at 7B)")
    kl_estimator: Literal["k1", "k3"] = option("k1", help="per-token KL estimate in the reward stream")
    clip_eps: float = option(0.2, help="PPO ratio clip ε")
    clip_eps_value: float = option(5.0, help="value clip ε_v")
    clip_score: float = option(50.0, help="terminal scores are clipped to ±clip_score")
    gamma: float = option(1.0, help="GAE discount γ")
    gae_lambda: float = option(0.95, help="GAE λ")
    loss_agg: Literal["token_mean", "seq_mean"] = option("token_mean", help="policy/value loss aggregation")
    normalize_reward: bool = option(False, help="apply the reward model's saved normaliser at RL time")
    normalize_cost: bool = option(False, help="apply the cost model's saved (scale-only) normaliser")
    cost_transform: Literal["identity", "sigmoid"] = option(
        "identity", help="episode cost: the cost model's score c (Safe RLHF), or sigmoid(c) = its P(unsafe), "
                         "which makes the budget d a target unsafe probability in [0, 1]")
    truncation_penalty: float | None = option(None, help="added to the reward of responses cut without EOS")
    whiten_advantages: bool = option(False, help="whiten the combined advantage (after combining)")
    actor_lr: float = option(1e-4, help="policy learning rate")
    critic_lr: float = option(5e-4, help="critic learning rate")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    max_grad_norm: float = option(1.0, help="gradient clipping (0 disables)")
    critic_init: Literal["score_model", "policy"] = option(
        "score_model", help="critics start from the reward/cost model, or from the policy backbone")
    critic_mode: Literal["separate", "shared"] = option(
        "separate", help="separate: one critic per stream; shared: one backbone with a value head per "
                         "stream (reward and cost), started from the reward model: cheaper ppo_lag")
    ptx_data: str | None = option(None, help="SFT data for the PTX loss (off when null)")
    ptx_coeff: float = option(16.0, help="PTX loss coefficient (when ptx_data is given)")
    lagrange: LagrangeOptions = dataclasses.field(default_factory=LagrangeOptions)
    lora_r: int = option(0, help="LoRA rank of the policy (0: full); the reference is then the disabled adapter")
    lora_alpha: int = option(16, help="LoRA alpha")
    lora_targets: list[str] = option([], help="LoRA target modules (empty: all linear layers)")
    actor_freeze: list[str] = option(
        [], help="VLM policy parts kept frozen: any of vision_tower, projector, language_model")
    critic_freeze: list[str] = option(
        [], help="VLM critic parts kept frozen: any of vision_tower, projector, language_model")
    precision: Precision = option("auto", help="auto = bf16 on GPUs that support it, else fp32")
    gradient_checkpointing: bool = option(False, help="trade compute for memory")
    seed: int = option(0, help="seed of prompt order and sampling")
    eval_every: int = option(0, help="evaluate on eval_prompts every N iterations (0: at the end only)")
    save_every: int = option(0, help="checkpoint every N iterations for --resume (0: end only)")
    resume: bool = option(False, help="continue from the last complete checkpoint in --out")
    log_every: int = option(10, help="console log every N iterations")
    report_to: Literal["none", "tensorboard", "wandb"] = option("none", help="extra metrics sink")
    progress: bool = option(True, help="show a progress bar")
    backend: Literal["hf"] = option("hf", help="rollout backend (vllm arrives with its issue)")

    def validate(self) -> None:
        _check_vlm_parts("actor_freeze", self.actor_freeze)
        _check_vlm_parts("critic_freeze", self.critic_freeze)
        if self.algo != "ppo" and self.cost_model is None:
            raise ConfigError(f"--algo {self.algo} needs --cost-model (only ppo runs without one)")
        if self.algo == "grpo_lag" and self.n_samples < 2:
            raise ConfigError("--algo grpo_lag needs --n-samples >= 2 (the group baseline)")
        if self.rollout_batch_size * self.n_samples % self.mini_batch_size:
            raise ConfigError(
                f"rollout_batch_size × n_samples = {self.rollout_batch_size * self.n_samples} must be a "
                f"multiple of mini_batch_size = {self.mini_batch_size}")
        if self.temperature <= 0:
            raise ConfigError("temperature must be > 0 for RL (log-probs are taken at it)")


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
    max_length: int = option(256, help="maximum tokens of prompt + response")
    batch_size: int = option(64, help="sequences per forward pass")


@dataclass(kw_only=True)
class ExportConfig:
    """``saferlhf export``: a reward / cost model as the backbone's ``*ForSequenceClassification``."""

    model: str = option(help="saferlhf score model dir (reward or cost), PKU Beaver dir, or hub id")
    out: str = option(help="output dir: AutoModelForSequenceClassification-loadable, with tokenizer and README.md")
    normalize: Literal["saved", "on", "off"] = option(
        "saved", help="which score the logit reproduces: the saved setting, normalised, or raw")
    bias: Literal["auto", "exact", "drop"] = option(
        "auto", help="the head's constant (bias, normaliser shift): auto = exact where the backbone allows, "
                     "else dropped for a reward model (ranking unchanged) and an error for a cost model "
                     "(its sign means unsafe); exact = an error whenever it cannot be folded exactly; drop = fold "
                     "it where exact, else drop it and record it")
    tolerance: float = option(1e-4, help="largest |logit - score| accepted by the check run after writing")


@dataclass(kw_only=True)
class WorldGenerateConfig:
    out: str = option(help="output dir for the world's files (DESIGN §12)")
    seed: int = option(0, help="seed: the same seed gives byte-identical files")
    noise: float = option(0.0, help="annotator noise p: each label flipped independently with probability p")
    modality: Literal["text", "image-text"] = option("text", help="text world, or the image world (Safe RLHF-V)")
    n_sft: int = option(4000, help="SFT demonstrations")
    n_pairs_train: int = option(4000, help="training preference pairs")
    n_pairs_eval: int = option(1000, help="held-out preference pairs")
    n_prompts_train: int = option(2000, help="RL training prompts")
    n_eval_benign: int = option(600, help="held-out benign-side prompts (dual-use included)")
    n_eval_harmful: int = option(600, help="held-out harmful prompts")

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
    cost_transform: Literal["identity", "sigmoid"] = option(
        "identity", help="the episode cost the policy was constrained on (RL's cost_transform): model_cost's units")
    temperature: float | None = option(None, help="sampling temperature (default: the policy's own, else 1)")
    max_new_tokens: int = option(32, help="response length cap")
    n_boot: int = option(1000, help="bootstrap resamples for the 95 % intervals")
    seed: int = option(0, help="sampling and bootstrap seed")


@dataclass(kw_only=True)
class DemoConfig:
    """The whole Safe RLHF pipeline in the verifiable world, in one process, with a report."""

    out: str = option("runs/demo", help="output dir: report.json, report.md, PNG plots, every stage's folder")
    seed: int = option(0, help="seed of the world, the models and the sampling")
    noise: float = option(0.1, help="annotator noise of the world's labels")
    budget: float | None = option(
        None, help="cost budget d of ppo_lag (default: 0, the cost model's own safe/unsafe boundary; "
                   "image-text: a bound on E[σ(c)] in (0, 1), by default calibrated for a 10 % unsafe "
                   "fraction, docs/multimodal.md §6)")
    sft_budget: bool = option(True, help="also run PPO-Lag at d = the SFT policy's mean learned cost "
                                         "(ppo_lag_sft_budget; --rounds continue it): docs/demo.md")
    quick: bool = option(False, help="small sizes (<= 2 minutes): checks the pipeline, not the science")
    modality: Literal["text", "image-text"] = option(
        "text", help="text: the text world; image-text: the image world with tiny VLMs (Safe RLHF-V)")
    vlm_style: Literal["llava", "qwen2_vl"] = option("llava", help="image-text: the tiny VLM's style")
    image_budget: float | None = option(
        None, help="image-text: budget d on E[σ(c)], in (0, 1), when --budget is not given "
                   "(null: calibrated, pipeline_image.calibrated_budget)")
    rounds: int = option(1, help="rounds of Safe RLHF (new pairs from the latest policy, retrained cost model)")
    shaping_lambdas: list[float] = option([0.5, 5.0], help="fixed λ₀ values of the reward-shaping baseline")
    rl_iterations: int | None = option(None, help="RL iterations per method (default: by mode)")
    threads: int = option(1, help="torch intra-op threads (1 is fastest for these tiny models)")
    workers: int = option(0, help="processes for independent stages (RL runs, score models, evaluations, "
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
    max_prompts: int = option(512, help="sample at most this many prompts (0: all)")
    n_samples: int = option(1, help="responses per prompt")
    temperature: float | None = option(None, help="sampling temperature (default: the policy's own, else 1)")
    top_p: float = option(1.0, help="nucleus sampling")
    max_new_tokens: int = option(32, help="response length cap")
    batch_size: int = option(64, help="prompts per generate call")
    normalize_cost: bool = option(False, help="apply the cost model's saved (scale-only) normaliser, as RL would")
    cost_transform: Literal["identity", "sigmoid"] = option(
        "identity", help="the episode cost RL will constrain (RL's cost_transform): the units of d")
    device: str | None = option(None, help="cpu | cuda (default: cuda when available)")
    seed: int = option(0, help="sampling seed")

    def validate(self) -> None:
        if self.target_unsafe_rate is not None and not 0.0 <= self.target_unsafe_rate <= 1.0:
            raise ConfigError("target_unsafe_rate must be in [0, 1]")
        if self.n_samples < 1 or self.batch_size < 1:
            raise ConfigError("n_samples and batch_size must be >= 1")
