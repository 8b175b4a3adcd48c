"""Safe RLHF: one PPO-family loop; the algorithm only picks the advantage combiner.

``saferlhf rl --algo ppo|ppo_lag|reward_shaping|grpo_lag`` (DESIGN §5–§7). Each iteration:

1. sample a prompt batch (each process its own prompts) and ``n`` responses per prompt with
   the rollout backend, keeping token ids end to end;
2. score: reward R and cost C at the last real response token (re-tokenised only when a
   scorer's tokenizer or template differs from the policy's), old and reference log-probs
   and both critics' values — each exactly once per rollout batch, frozen models under
   ``inference_mode`` (a batch used for one update takes its old log-probs from that update's
   forward instead, where that is the same number: :func:`reuses_training_logprobs`);
3. per-token streams with the KL split between them, GAE per stream, the advantage
   combiner of the algorithm, and one multiplier update (after this batch's costs enter the
   window, before the policy update);
4. ``ppo_epochs`` passes of mini-batches: clipped policy loss (+ PTX, + β·k3 for the
   critic-free variant), clipped value losses;
5. metrics, periodic held-out evaluation, atomic checkpoints that resume exactly.

Algorithms (the combiners in :data:`ALGOS`):

* ``ppo``: reward stream ``r_t = −β k_t + 1[t=T] R``; ``A = A_r``.
* ``ppo_lag``: reward stream as above, cost stream ``c_t = +β k_t + 1[t=T] C``;
  ``A = (A_r − λ A_c)/(1 + λ)`` with λ learned; the effective KL coefficient is β for any λ.
* ``reward_shaping``: one critic on ``R − λ₀ C`` with KL ``−β k_t`` and a fixed λ₀.
* ``grpo_lag``: no critic; group-centred R and C combined as ``(Â_r − λ Â_c)/(1+λ)`` per
  sequence; KL enters the loss as ``β · k3``.

Conventions (DESIGN §5; tested in ``tests/test_rl_trainer.py``):

* old, reference and training log-probs all come from :func:`forward_logprobs` (a plain
  forward pass on ``logits / temperature`` with position ids following the padding), never
  from ``generate``; dropout is off, so on the first PPO epoch the ratio is 1 for every
  response token (logged as ``train/ratio_first_minibatch_max_dev``);
* ``logp[t]``, ``V[t]``, ``k_t`` and the streams share the (B, R) response grid: column t is
  response token t, predicted from the prefix ending at column ``P − 1 + t``;
* terminal R and C sit on the last real response token (EOS, or the last token of a
  truncated response; ``truncation_penalty`` is added to R when there is no EOS), and are
  clipped to ±``clip_score`` in every mode.

Vision-language policies (Safe RLHF-V): when ``--policy`` is a VLM folder (a
``VLMProcessor`` beside the model) the prompts' images (the records' ``image`` field) are
loaded once, expanded into the prompt ids by the processor, and travel with the rollout
(``batch.image_inputs``): generation, old / reference / training log-probs, critic values and
the reward / cost scorers all see the image of their row (mini-batches select the images of
their rows). ``actor_freeze`` / ``critic_freeze`` freeze parts of the VLMs
(``vision_tower``, ``projector``, ``language_model``). A scorer that is a text model (or a VLM
whose processor differs) re-tokenises the prompt and the decoded response; a text scorer
never sees the image.

Tests and benchmarks can replace the learned scorers by plain functions
``fn(batch: RolloutBatch, prompts: list, texts: list[str]) -> Tensor (B,)`` through
``SafeRLTrainer(cfg, reward_fn=..., cost_fn=...)``; the CLI path never does.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf import losses as L
from saferlhf.calibration import CostCalibration, cost_calibration_for
from saferlhf.config import ConfigError
from saferlhf.config.stages import RLConfig
from saferlhf.distributed import (
    backward_step,
    full_state_dict_if_sharded,
    inference_context,
    loads_partitioned,
    make_rl_accelerator,
    partitioned_loading,
    prepare_models,
    rl_model_roles,
    shard_frozen_models,
)
from saferlhf.errors import NonFiniteLossError
from saferlhf.hub import hub_data_options_for
from saferlhf.io import atomic_dir, describe_source
from saferlhf.lagrange import (
    LagrangeMultiplier,
    transform_cost,
    unsafe_boundary,
)
from saferlhf.models.checkpoint import load_template, read_meta, save_policy
from saferlhf.models.loading import apply_lora, load_causal_lm
from saferlhf.models.policy import ReferenceModel, disable_dropout, forward_logprobs
from saferlhf.models.score_model import ScoreModel
from saferlhf.models.scorers import (  # noqa: F401 - FrozenScorer, FunctionScorer: public names of this module
    BatchScoreFn,
    FrozenScorer,
    FunctionScorer,
    make_scorer,
)
from saferlhf.models.tiny_vlm import freeze_vlm_parts
from saferlhf.processing import as_processor, load_processor
from saferlhf.rollout import make_rollout_backend
from saferlhf.rollout.base import RolloutBatch, SamplingParams
from saferlhf.trainers.common import (
    MetricsLogger,
    TrainerState,
    epoch_batches,
    load_training_checkpoint,
    make_optimizer,
    progress_bar,
    save_run_config,
    save_training_checkpoint,
    seed_everything,
)

ScoreFn = BatchScoreFn
"""``fn(batch, prompts, texts) -> (B,)``: a scorer given as a function on rollout batches."""

# ----------------------------------------------------------------------------- scoring


def critic_values_all(critic, batch_seq: torch.Tensor, batch_mask: torch.Tensor, prompt_length: int,
                      **vision: Any) -> torch.Tensor:
    """Values V[t] aligned with ``logp[t]``, (B, R, D): the critic's scores at column ``P − 1 + t``
    (D = 1, or one head per stream for a shared reward/cost critic).

    The state before response token t is the prefix ending at column P − 1 + t, the same
    column whose logits give token t's log-prob. ``vision``: the rows' vision inputs for a VLM
    critic (``pixel_values`` …).
    """
    scores = critic(input_ids=batch_seq, attention_mask=batch_mask, **vision).scores
    return scores[:, prompt_length - 1: -1].float()


# ----------------------------------------------------------------------------- combiners


@dataclass
class RolloutTensors:
    """Everything computed once per rollout batch (all (B, R) unless noted)."""

    mask: torch.Tensor
    logp_old: torch.Tensor | None  # None until the update when it reuses the training forward's
    logp_ref: torch.Tensor
    kl: torch.Tensor  # per-token KL estimate of the streams (k1 or k3), 0 outside the mask
    reward: torch.Tensor  # (B,) raw terminal reward (after the truncation penalty)
    cost: torch.Tensor | None  # (B,) raw terminal cost
    values: dict[str, torch.Tensor] = field(default_factory=dict)
    returns: dict[str, torch.Tensor] = field(default_factory=dict)
    stream_advantages: dict[str, torch.Tensor] = field(default_factory=dict)
    advantages: torch.Tensor | None = None


def _clip(x: torch.Tensor, cfg: RLConfig) -> torch.Tensor:
    return x if cfg.clip_score is None else x.clamp(-cfg.clip_score, cfg.clip_score)


def _stream_gae(t: RolloutTensors, cfg: RLConfig, name: str, score: torch.Tensor, sign: float) -> torch.Tensor:
    """GAE of one stream: ``x_t = −sign·β k_t + 1[t=T] clip(score)`` with the critic ``name``."""
    stream = L.shaped_token_rewards(score, t.kl, t.mask, cfg.kl_coeff, cfg.clip_score, sign=sign)
    adv, ret = L.gae(stream, t.values[name], t.mask, gamma=cfg.gamma, lam=cfg.gae_lambda)
    t.returns[name] = ret
    t.stream_advantages[name] = adv
    return adv


def combine_ppo(t: RolloutTensors, cfg: RLConfig, lam: float) -> torch.Tensor:
    """``A = A_r`` (reward stream ``−β k_t + 1[t=T] R``)."""
    return _stream_gae(t, cfg, "reward", t.reward, +1.0)


def combine_ppo_lag(t: RolloutTensors, cfg: RLConfig, lam: float) -> torch.Tensor:
    """``A = (A_r − λ A_c)/(1+λ)``; reward stream ``−β k_t + R``, cost stream ``+β k_t + C``,
    so the KL parts add up to ``−β k_t`` whatever λ."""
    adv_r = _stream_gae(t, cfg, "reward", t.reward, +1.0)
    adv_c = _stream_gae(t, cfg, "cost", t.cost, -1.0)
    return L.combine_advantages(adv_r, adv_c, lam)


def combine_reward_shaping(t: RolloutTensors, cfg: RLConfig, lam: float) -> torch.Tensor:
    """One critic on ``clip(R) − λ₀ clip(C)`` with KL ``−β k_t`` (λ₀ fixed)."""
    return _stream_gae(t, cfg, "reward", _clip(t.reward, cfg) - lam * _clip(t.cost, cfg), +1.0)


def combine_grpo_lag(t: RolloutTensors, cfg: RLConfig, lam: float) -> torch.Tensor:
    """Group-centred ``(Â_r − λ Â_c)/(1+λ)`` per sequence, broadcast over its tokens (no KL
    here: the critic-free variant carries it as a ``β·k3`` loss term)."""
    seq_adv = L.grpo_lag_advantages(_clip(t.reward, cfg), _clip(t.cost, cfg), cfg.n_samples, lam,
                                    baseline="mean")
    return seq_adv[:, None] * t.mask.float()


@dataclass(frozen=True)
class Algo:
    combine: Callable[[RolloutTensors, RLConfig, float], torch.Tensor]
    critics: tuple[str, ...]
    learns_lambda: bool
    uses_cost: bool
    kl_in_loss: bool = False


ALGOS: dict[str, Algo] = {
    "ppo": Algo(combine_ppo, ("reward",), learns_lambda=False, uses_cost=False),
    "ppo_lag": Algo(combine_ppo_lag, ("reward", "cost"), learns_lambda=True, uses_cost=True),
    "reward_shaping": Algo(combine_reward_shaping, ("reward",), learns_lambda=False, uses_cost=True),
    "grpo_lag": Algo(combine_grpo_lag, (), learns_lambda=True, uses_cost=True, kl_in_loss=True),
}


def reuses_training_logprobs(cfg: RLConfig, algo: Algo, batch_size: int, iteration: int) -> bool:
    """Whether iteration ``iteration`` takes its old log-probs from the training forward
    (detached) instead of a separate no-grad forward over the rollout batch.

    Only where that is the same number: the batch is used once (one PPO epoch, one mini-batch
    over all of it), so the policy of the first and only update is the one that sampled the
    batch (ratio exactly 1, dropout off), and nothing before the update reads the old
    log-probs (the KL is a loss term, not part of a reward stream: ``kl_in_loss``). With
    several mini-batches the policy moves between them, so the rollout-time log-probs are not
    reusable past the first. Every ``log_every``-th iteration (and the first) still runs the
    separate forward, so ``train/ratio_first_minibatch_max_dev`` keeps checking that the two
    agree.
    """
    return (algo.kl_in_loss and cfg.ppo_epochs == 1 and cfg.mini_batch_size >= batch_size
            and iteration % max(1, cfg.log_every) != 0)


# ----------------------------------------------------------------------------- the trainer


def _load_prompts(source: Any, **hub_options) -> list:
    return [r.prompt for r in _load_prompt_records(source, **hub_options)]


def _load_prompt_records(source: Any, **hub_options) -> list:
    """Prompt records of a path / hub id (``hub_options``: its split / config / revision,
    :func:`saferlhf.hub.hub_data_options`), a ``datasets.Dataset`` or a list of dicts."""
    from saferlhf.data import load_prompts

    records = load_prompts(source, **hub_options).records
    if not records:
        raise ConfigError(f"--prompts {describe_source(source)}: no prompts found")
    return records


def _require(value: Any, flag: str, what: str) -> None:
    if value is None:
        raise ConfigError(f"missing {flag}: the trainer needs {what}")


_MUST_BE_FINITE = ("reward", "cost", "kl", "train/policy_loss", "train/reward_value_loss",
                   "train/cost_value_loss", "train/ptx_loss", "train/kl_k3")


def _truncate_jsonl(path: Path, key: str, max_step: int) -> None:
    """Drop the lines of a JSONL log written after ``max_step`` (a run killed after its last
    checkpoint logged steps that the resumed run will log again)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get(key, 0) <= max_step:
                keep.append(line)
        except json.JSONDecodeError:  # a line cut by the crash
            continue
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(k + "\n" for k in keep))
    tmp.replace(path)


# iterations averaged by SafeRLTrainer.constraint_summary (where the multiplier settled)
LAST_ITERATIONS = 20


class SafeRLTrainer:
    """The PPO-family trainer (TRL conventions)::

        trainer = SafeRLTrainer(RLConfig(out="runs/rl", algo="ppo_lag"), policy=model,
                                processing_class=tokenizer, reward_model=rm, cost_model=cm,
                                train_dataset=prompts)
        metrics = trainer.train()
        trainer.save_model("runs/rl/policy")

    ``policy``: a ``PreTrainedModel`` (text or VLM) or a path / hub id (default: ``args.policy``).
    ``processing_class``: a tokenizer, any HF processor, or a :class:`~saferlhf.processing.Processor`
    (default: the one saved beside a policy path; required with a policy object).
    ``reward_model`` / ``cost_model``: a saferlhf :class:`ScoreModel`, an HF
    ``*ForSequenceClassification`` (``num_labels == 1``), a path, or a callable
    ``fn(prompts, completions, **kw) -> list[float]`` (default: ``args.reward_model`` /
    ``args.cost_model``). ``train_dataset`` / ``eval_dataset``: a ``datasets.Dataset``, a list of
    dicts, or a path / hub id of prompt records (default: ``args.prompts`` / ``args.eval_prompts``).
    Critics start from the reward / cost model when it is a saferlhf score model, else from the
    policy backbone. ``reward_fn`` / ``cost_fn``: scorers on whole rollout batches,
    ``fn(batch, prompts, texts) -> (B,)`` (tests, benchmarks).

    :meth:`from_config` is what the CLI calls: every source from the config's paths.
    """

    def __init__(self, args: RLConfig, *, policy: Any = None, processing_class: Any = None, reward_model: Any = None,
                 cost_model: Any = None, train_dataset: Any = None, eval_dataset: Any = None, accelerator=None,
                 reward_fn: ScoreFn | None = None, cost_fn: ScoreFn | None = None,
                 cost_calibration: CostCalibration | None = None) -> None:
        cfg = self.args = self.cfg = args
        if cfg.algo not in ALGOS:
            raise ConfigError(f"unknown algo {cfg.algo!r}; expected one of {sorted(ALGOS)}")
        cfg.validate()
        self.algo = ALGOS[cfg.algo]
        policy = cfg.policy if policy is None else policy
        reward_src = reward_fn or (cfg.reward_model if reward_model is None else reward_model)
        cost_src = cost_fn or (cfg.cost_model if cost_model is None else cost_model)
        train_dataset = cfg.prompts if train_dataset is None else train_dataset
        _require(policy, "--policy", "a policy (args.policy or policy=)")
        _require(reward_src, "--reward-model", "a reward model (args.reward_model or reward_model=)")
        _require(train_dataset, "--prompts", "training prompts (args.prompts or train_dataset=)")
        if self.algo.uses_cost and cost_src is None:
            raise ConfigError(f"--algo {cfg.algo} needs --cost-model (only ppo runs without one)")
        seed_everything(cfg.seed)
        self.accelerator = accelerator or make_rl_accelerator(
            cfg.precision, roles=rl_model_roles(self._critic_names(), uses_cost=self.algo.uses_cost),
            micro_batch_size=cfg.mini_batch_size, max_grad_norm=cfg.max_grad_norm)
        dev = self.accelerator.device

        # Under ZeRO-3 every model read from a folder is built partitioned (deepspeed.zero.Init),
        # and nothing partitioned is copied: the reference and critics load from their folders.
        self._partitioned = loads_partitioned(self.accelerator) and isinstance(policy, (str, os.PathLike))
        self._policy_source = policy
        policy_model = self._load_policy(policy, processing_class)
        self.reference = self._make_reference(policy, policy_model)
        self.reward_scorer = self._scorer(reward_src, reward_fn is not None, cfg.normalize_reward, dev,
                                          role="reward_model")
        self.cost_scorer = None if cost_src is None else self._scorer(cost_src, cost_fn is not None,
                                                                    cfg.normalize_cost, dev, role="cost_model")
        # The unsafe-rate form reads P(unsafe) through the cost model's calibration.json.
        self.cost_calibration = None
        if cfg.cost_transform == "calibrated" and cost_src is not None:
            self.cost_calibration = cost_calibration or cost_calibration_for(cost_src)
        critics, self.critic_streams = self._build_critics(policy_model, dev)
        self._prepare(policy_model, critics)
        self.lagrange = LagrangeMultiplier(
            cfg.multiplier_config(),
            reduce_fn=self.accelerator.gather if self.accelerator.num_processes > 1 else None)
        self.accelerator.register_for_checkpointing(self.lagrange)

        self.backend = self._make_backend(policy)
        self.sampling = SamplingParams(temperature=cfg.temperature, top_p=cfg.top_p,
                                       top_k=cfg.top_k or None, max_new_tokens=cfg.max_new_tokens,
                                       repetition_penalty=cfg.repetition_penalty, n=cfg.n_samples)
        eval_dataset = cfg.eval_prompts if eval_dataset is None else eval_dataset
        records = _load_prompt_records(train_dataset, **hub_data_options_for(train_dataset, cfg, "prompts", "data"))
        eval_records = None
        if eval_dataset is not None:
            hub = hub_data_options_for(eval_dataset, cfg, "eval_prompts", "eval_data")
            eval_records = _load_prompt_records(eval_dataset, **hub)
        self.prompts = [r.prompt for r in records]
        self.eval_prompts = [r.prompt for r in eval_records] if eval_records else None
        self.prompt_images = [list(r.images) for r in records]
        self.eval_prompt_images = [list(r.images) for r in eval_records] if eval_records else None
        self.prompt_sources = [r.source for r in records]
        self.eval_prompt_sources = [r.source for r in eval_records] if eval_records else None
        self.ptx = self._load_ptx() if cfg.ptx_data else None
        self.state = TrainerState()
        self._last_samples: list[dict[str, Any]] = []
        self._last_eval_samples: list[dict[str, Any]] = []

    @classmethod
    def from_config(cls, cfg: RLConfig, **kwargs: Any) -> SafeRLTrainer:
        """The trainer of a config whose sources are all paths (what ``saferlhf rl`` runs)."""
        from saferlhf.preflight import check_stage

        check_stage(cfg, "rl")  # models, tokenizer, --out: before any work
        return cls(cfg, **kwargs)

    @property
    def tokenizer(self):
        """The policy's processor (it passes tokenizer attributes through)."""
        return self.processor

    # ------------------------------------------------------------------ models
    def _load_policy(self, policy: Any, processing_class: Any):
        """The trainable policy (LoRA applied, parts frozen, dropout off, on the device); sets
        ``processor``, ``template`` and ``policy_meta``."""
        cfg = self.cfg
        if isinstance(policy, (str, os.PathLike)):
            processor = as_processor(processing_class) if processing_class is not None else load_processor(policy)
            self.template = load_template(policy, processor)
            self.policy_meta = read_meta(policy)
            with self._loading("policy", policy):
                model = load_causal_lm(policy, dtype=self._load_dtype,
                                       gradient_checkpointing=cfg.gradient_checkpointing)
        else:
            if processing_class is None:
                raise ConfigError("a policy object needs processing_class= (its tokenizer or processor)")
            processor = as_processor(processing_class)
            self.template = processor.template
            self.policy_meta = {}
            model = policy
            if cfg.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
                model.gradient_checkpointing_enable()
        self.processor = processor
        if (cfg.actor_freeze or cfg.critic_freeze) and processor.modality == "text":
            raise ConfigError("actor_freeze / critic_freeze name parts of a vision-language model; "
                              f"the policy {describe_source(policy)} is a text model")
        if cfg.ptx_data and processor.modality != "text":
            raise ConfigError("the PTX loss is not available for vision-language policies yet (drop --ptx-data)")
        if cfg.lora_r:
            model = apply_lora(model, {"r": cfg.lora_r, "alpha": cfg.lora_alpha,
                                       "target_modules": list(cfg.lora_targets) or "all-linear"})
        if cfg.actor_freeze:  # after LoRA: adapters inside a frozen part stay frozen too
            freeze_vlm_parts(model, cfg.actor_freeze)
        disable_dropout(model)  # dropout would make the first-epoch ratio differ from 1
        return model.to(self.accelerator.device)

    @property
    def _load_dtype(self) -> str:
        return "bf16" if self.cfg.precision == "bf16" else "fp32"

    def _loading(self, role: str, source: Any):
        """:func:`~saferlhf.distributed.partitioned_loading` of ``role`` when this run loads
        partitioned and ``source`` is a folder; a no-op context otherwise."""
        import contextlib

        if self._partitioned and isinstance(source, (str, os.PathLike)):
            return partitioned_loading(self.accelerator, role, source)
        return contextlib.nullcontext(False)

    def _make_reference(self, policy: Any, policy_model) -> ReferenceModel:
        """π_ref, made before training: the LoRA-disabled policy (no copy), else a frozen copy of
        the policy, or under ZeRO-3 the policy's folder loaded again, partitioned."""
        from saferlhf.models.loading import is_peft_model

        if self._partitioned and not is_peft_model(policy_model):
            with self._loading("reference", policy):
                return ReferenceModel(policy_model, ref_model=load_causal_lm(policy, dtype=self._load_dtype))
        return ReferenceModel(policy_model)

    def _make_backend(self, policy: Any):
        """The rollout backend of ``--backend``: HF ``generate`` on the live policy (default), or a
        colocated vLLM engine started from the policy folder and re-synced after every update
        (LoRA policies as adapters); log-probs always come from the training model."""
        cfg = self.cfg
        extra: dict[str, Any] = {}
        if cfg.backend == "vllm":
            if not isinstance(policy, (str, os.PathLike)):
                raise ConfigError("--backend vllm starts its engine from the policy's folder: pass the policy as a path")
            if self.processor.modality != "text":
                raise ConfigError("--backend vllm samples text policies only; use --backend hf for a VLM policy")
            extra = {"model_path": str(policy), "lora": bool(cfg.lora_r), "seed": cfg.seed}
        return make_rollout_backend(cfg.backend, self.policy, self.processor, unwrap=self.accelerator.unwrap_model,
                                    **extra)

    def _scorer(self, source: Any, batch_fn: bool, normalize: bool, device: torch.device, *, role: str):
        if batch_fn:
            return FunctionScorer(source, device)
        # Frozen scorers are only read: bf16 weights when the run is bf16 (half the memory).
        dtype = "bf16" if self.cfg.precision == "bf16" else None
        with self._loading(role, source):
            return make_scorer(source, self.processor, self.template, normalize=normalize, device=device,
                               dtype=dtype)

    def _critic_names(self) -> tuple[str, ...]:
        """The critics :meth:`_build_critics` makes: one per stream, or ``shared``."""
        streams = self.algo.critics
        return ("shared",) if self.cfg.critic_mode == "shared" and len(streams) > 1 else tuple(streams)

    def _prepare(self, policy, critics: dict[str, ScoreModel]) -> None:
        """Optimisers, then each trained model through :func:`~saferlhf.distributed.prepare_models`
        (roles ``policy`` and ``<name>_critic``): under DeepSpeed one engine per model on its own
        plugin, under FSDP one ``prepare`` per model, otherwise one ``prepare`` of all. Under
        ZeRO-3 the frozen models (the reference copy, the reward and cost models) are partitioned
        as inference engines; otherwise they stay on the device as loaded."""
        cfg, acc = self.cfg, self.accelerator
        actor_opt = make_optimizer(policy.parameters(), lr=cfg.actor_lr, weight_decay=cfg.weight_decay)
        models = {"policy": (policy, actor_opt)}
        for n, c in critics.items():
            models[f"{n}_critic"] = (c, make_optimizer(c.parameters(), lr=cfg.critic_lr, weight_decay=cfg.weight_decay))
        prepared = prepare_models(acc, models)
        self.policy, self.actor_opt = prepared["policy"]
        self.critics = {n: prepared[f"{n}_critic"][0] for n in critics}
        self.critic_opts = {n: prepared[f"{n}_critic"][1] for n in critics}
        frozen = {"reference": self.reference.module if self.reference.mode != "disabled_adapter" else None,
                  "reward_model": getattr(self.reward_scorer, "model", None),
                  "cost_model": getattr(self.cost_scorer, "model", None)}
        self._frozen_engines = shard_frozen_models(acc, frozen)

    # ------------------------------------------------------------------ data
    def _load_ptx(self):
        from saferlhf.data import load_sft
        from saferlhf.trainers.sft import encode_sft_examples

        records = load_sft(self.cfg.ptx_data).records
        return encode_sft_examples(records, self.processor, self.template, 128)

    def _prompt_batch(self, iteration: int) -> list:
        """This process's prompts of rollout batch ``iteration`` (depends only on the seed,
        the iteration, the rank and the world size, so a resumed run sees the same ones)."""
        return [self.prompts[i] for i in self._prompt_indices(iteration)]

    def _prompt_indices(self, iteration: int) -> list[int]:
        """Indices into ``self.prompts`` of rollout batch ``iteration`` (see :meth:`_prompt_batch`)."""
        acc, n, bs = self.accelerator, len(self.prompts), self.cfg.rollout_batch_size
        per_epoch = max(1, math.ceil(n / (bs * acc.num_processes)))
        epoch, k = divmod(iteration, per_epoch)
        batches = epoch_batches(n, bs, seed=self.cfg.seed, epoch=epoch, rank=acc.process_index,
                                world_size=acc.num_processes)
        idx = batches[k % len(batches)]
        if len(idx) < bs:  # top up the last short batch so every batch has the same size
            extra = np.random.default_rng([self.cfg.seed, iteration, acc.process_index]).choice(n, bs - len(idx))
            idx = idx + extra.tolist()
        return list(idx)

    # ------------------------------------------------------------------ rollout
    def _rollout(self, prompts: list, seed: int, sampling: SamplingParams | None = None,
                 images: list | None = None, sources: list | None = None):
        """Sample responses for ``prompts``. ``images``: each prompt's image references, read by
        the processor (a text processor ignores them; a VLM processor loads and caches them, and
        a missing or corrupt image raises :class:`~saferlhf.data.multimodal.ImageLoadError`
        naming the prompt's record)."""
        enc = self.processor.encode_prompts(prompts, images, sources=sources)
        batch = self.backend.generate(enc.ids, sampling=sampling or self.sampling, seed=seed,
                                      **({"image_inputs": enc.image_inputs} if enc.image_inputs is not None else {}))
        if enc.images is not None:
            batch.meta["images"] = [enc.images[i] for i in batch.prompt_index.tolist()]
        rep_prompts = [prompts[i] for i in batch.prompt_index.tolist()]
        texts = batch.response_texts or [
            self.processor.decode(r[m.bool()], skip_special_tokens=True)
            for r, m in zip(batch.responses, batch.response_mask)
        ]
        return batch, rep_prompts, texts

    def _score(self, batch, prompts, texts) -> tuple[torch.Tensor, torch.Tensor | None]:
        reward = self.reward_scorer.score(batch, prompts, texts).clone()
        cost = self.cost_scorer.score(batch, prompts, texts).clone() if self.cost_scorer is not None else None
        if cost is not None:
            cost = transform_cost(cost, self.cfg.cost_transform, self.cost_calibration)
        if self.cfg.truncation_penalty is not None:
            truncated = ~batch.ended_with_eos.to(reward.device)
            reward = reward + self.cfg.truncation_penalty * truncated.float()
        return reward, cost

    def _global_mean(self, x: torch.Tensor) -> float:
        """Mean over every process's rollouts (the local mean on one process)."""
        if self.accelerator.num_processes > 1:
            x = self.accelerator.gather(x.contiguous())
        return x.float().mean().item()

    @torch.no_grad()
    def make_experience(self, iteration: int) -> tuple[RolloutBatch, RolloutTensors, dict[str, float]]:
        """Rollouts of ``iteration`` and everything computed once per rollout batch, then the
        multiplier update and the combined advantages."""
        cfg, acc = self.cfg, self.accelerator
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        indices = self._prompt_indices(iteration)
        prompts = [self.prompts[i] for i in indices]
        seed = cfg.seed * 1_000_003 + iteration * acc.num_processes + acc.process_index
        images = [self.prompt_images[i] for i in indices] if self.prompt_images is not None else None
        batch, rep_prompts, texts = self._rollout(prompts, seed, images=images,
                                                  sources=[self.prompt_sources[i] or f"prompt {i}" for i in indices])
        batch = batch.to(acc.device)
        timings["time/generate"] = time.perf_counter() - t0

        t1 = time.perf_counter()
        reward, cost = self._score(batch, rep_prompts, texts)
        P = batch.prompt_length
        mask = batch.response_mask.float()
        lp_vision = self._logprob_vision(batch.sequences, batch.image_inputs)
        critic_vision = self._critic_vision(batch.sequences, batch.image_inputs)
        reuse = reuses_training_logprobs(cfg, self.algo, len(batch), iteration)
        with inference_context():  # each frozen / old model runs once per rollout batch (no_grad under ZeRO-3)
            self.policy.eval()
            logp_old = None if reuse else forward_logprobs(
                self.policy, batch.sequences, batch.attention_mask, prompt_length=P, temperature=cfg.temperature,
                response_mask=batch.response_mask, **lp_vision)
            logp_ref = self.reference.logprobs(batch.sequences, batch.attention_mask, prompt_length=P,
                                               temperature=cfg.temperature, response_mask=batch.response_mask,
                                               **lp_vision)
            values = {}
            for cname, critic in self.critics.items():
                critic.eval()
                v = critic_values_all(critic, batch.sequences, batch.attention_mask, P, **critic_vision)
                for stream, head in self.critic_streams[cname]:
                    values[stream] = v[..., head] * mask
        # Inference tensors cannot be saved for backward: clone them into ordinary tensors.
        logp_old, logp_ref = None if reuse else logp_old.clone(), logp_ref.clone()
        t = RolloutTensors(mask=mask, logp_old=logp_old, logp_ref=logp_ref, kl=torch.zeros_like(mask), reward=reward,
                           cost=cost, values={k: v.clone() for k, v in values.items()})
        kl_stats = {} if reuse else self._set_kl(t)
        timings["time/score"] = time.perf_counter() - t1

        # One multiplier update per rollout batch: this batch's episode costs enter the
        # window first, then λ moves, and the policy update below uses the new λ.
        lag_stats: dict[str, float] = {}
        if self.algo.learns_lambda:
            lag_stats = self.lagrange.step(cost)
        lam = 0.0 if cfg.algo == "ppo" else self.lagrange.value
        adv = self.algo.combine(t, cfg, lam)
        if cfg.whiten_advantages:  # only ever after combining (never per stream)
            adv = L.masked_whiten(adv, mask)
        t.advantages = adv.detach()

        stats = self._experience_stats(batch, t, lam, {**kl_stats, **timings}, lag_stats)
        self._last_samples = [
            {"prompt": p if isinstance(p, str) else json.dumps(p), "response": r,
             "reward": float(reward[i]), "cost": None if cost is None else float(cost[i]),
             "length": int(batch.response_lengths[i]), "eos": bool(batch.ended_with_eos[i])}
            for i, (p, r) in enumerate(zip(rep_prompts[:4], texts[:4]))
        ]
        return batch, t, stats

    def _experience_stats(self, batch: RolloutBatch, t: RolloutTensors, lam: float, extra: dict[str, float],
                          lag_stats: dict[str, float]) -> dict[str, float]:
        """The metrics of one rollout batch (means over every process's rollouts)."""
        cfg, mask, reward, cost, adv = self.cfg, t.mask, t.reward, t.cost, t.advantages
        lengths = batch.response_lengths.float()
        stats: dict[str, float] = {
            "reward": self._global_mean(reward),
            "reward_std": reward.std().item() if len(reward) > 1 else 0.0,
            "response_length": self._global_mean(lengths),
            "eos_rate": self._global_mean(batch.ended_with_eos.float()),
            "lambda": lam,
            "advantage_mean": L.masked_mean(adv, mask).item(),
            "advantage_std": L.masked_var(adv, mask).sqrt().item(),
        }
        for name in self.algo.critics:
            stats[f"critic/{name}_explained_variance"] = L.explained_variance(
                t.values[name], t.returns[name], mask).item()
            stats[f"critic/{name}_value_mean"] = L.masked_mean(t.values[name], mask).item()
            stats[f"critic/{name}_return_mean"] = L.masked_mean(t.returns[name], mask).item()
        if cost is not None:
            unsafe = (cost > unsafe_boundary(cfg.cost_transform)).float()
            stats.update({"cost": self._global_mean(cost), "unsafe_rate": self._global_mean(unsafe)})
            if not self.algo.learns_lambda:
                # J_C of the batch, for comparison with the budget (no multiplier to track it).
                stats.update({"J_C": stats["cost"], "J_C_minus_d": stats["cost"] - cfg.budget})
        for k in ("J_C", "J_C_minus_d", "at_cap", "updated"):
            if k in lag_stats:
                stats["lambda_updated" if k == "updated" else k] = float(lag_stats[k])
        stats.update(extra)
        return stats

    def _set_kl(self, t: RolloutTensors) -> dict[str, float]:
        """``t.kl`` (the streams' per-token KL) from the old and reference log-probs; returns
        the batch's ``kl`` (per sequence) and ``kl_token`` statistics."""
        k1 = L.kl_k1(t.logp_old, t.logp_ref) * t.mask
        t.kl = k1 if self.cfg.kl_estimator == "k1" else L.kl_k3(t.logp_old, t.logp_ref) * t.mask
        return {"kl": self._global_mean(k1.sum(-1)), "kl_token": L.masked_mean(k1, t.mask).item()}

    # ------------------------------------------------------------------ vision inputs
    def _logprob_vision(self, seq: torch.Tensor, image_inputs) -> dict[str, Any]:
        """``forward_logprobs`` kwargs for rows holding ``image_inputs`` (empty for text)."""
        return self.processor.vision_logprob_kwargs(seq, image_inputs)

    def _build_critics(self, policy, dev) -> tuple[dict[str, ScoreModel], dict[str, list]]:
        """The critics and, per critic, the streams its value heads estimate: ``{critic: [(stream,
        head)]}``. ``separate``: one critic per stream, each from its score model (or the
        policy). ``shared``: one backbone, started from the reward model, with one value head
        per stream (the reward head copied from the reward model, the cost head fresh): one
        critic forward and backward per mini-batch instead of two (DESIGN §11)."""
        cfg, streams = self.cfg, self.algo.critics
        scorers = {"reward": self.reward_scorer, "cost": self.cost_scorer}

        def start(name: str, role: str) -> ScoreModel:
            scorer = scorers[name]
            source = getattr(scorer, "source", None)
            if cfg.critic_init == "policy" or source is None:
                if self._partitioned:  # from the policy's folder: a partitioned policy cannot be copied
                    with self._loading(role, self._policy_source):
                        return ScoreModel.from_backbone(self._policy_source, score_type="critic",
                                                        dtype=self._load_dtype)
                return ScoreModel.from_backbone(policy, score_type="critic", dtype=None)
            if isinstance(source, ScoreModel):
                return source.copy_as_critic()
            with self._loading(role, source):
                return ScoreModel.from_pretrained(source, normalize=False, score_type="critic")

        if cfg.critic_mode == "shared" and len(streams) > 1:
            first = start(streams[0], "shared_critic")
            # first is ours alone: its backbone is taken over (no copy, so a partitioned one works too)
            critic = ScoreModel.from_backbone(first, score_type="critic", score_dim=len(streams), dtype=None,
                                              seed=cfg.seed, copy=False)
            with torch.no_grad():  # the first stream keeps its score model's head as its value head
                critic.score_head.weight[0].copy_(first.score_head.weight[0])
                if critic.score_head.bias is not None and first.score_head.bias is not None:
                    critic.score_head.bias[0].copy_(first.score_head.bias[0])
                critic.score_head.weight[1:].zero_()  # the other heads start at V = 0
                if critic.score_head.bias is not None:
                    critic.score_head.bias[1:].zero_()
            built = {"shared": critic}
            plan = {"shared": [(name, k) for k, name in enumerate(streams)]}
        else:
            built = {name: start(name, f"{name}_critic") for name in streams}
            plan = {name: [(name, 0)] for name in streams}
        for critic in built.values():
            if cfg.critic_lora_r:  # a LoRA score model it started from is merged first: one adapter
                critic.merge_lora().apply_lora({"r": cfg.critic_lora_r, "alpha": cfg.lora_alpha,
                                                "target_modules": list(cfg.lora_targets) or "all-linear"})
            if cfg.gradient_checkpointing:
                critic.gradient_checkpointing_enable()
            if cfg.critic_freeze:
                freeze_vlm_parts(critic, cfg.critic_freeze)
            disable_dropout(critic)
            critic.to(dev)
        return built, plan

    def _critic_vision(self, seq: torch.Tensor, image_inputs) -> dict[str, Any]:
        """Model kwargs of a critic (ScoreModel) for rows holding ``image_inputs`` (empty for text)."""
        return self.processor.model_kwargs(seq, image_inputs)

    # ------------------------------------------------------------------ update
    def _ptx_loss(self, minibatch: int) -> torch.Tensor:
        from saferlhf.trainers.sft import collate_sft

        rng = np.random.default_rng([self.cfg.seed, self.state.step, minibatch, 7,
                                     self.accelerator.process_index])
        idx = rng.choice(len(self.ptx), min(self.cfg.mini_batch_size, len(self.ptx)), replace=False)
        batch = collate_sft([self.ptx[i] for i in idx], self.processor.pad_token_id)
        batch = {k: v.to(self.accelerator.device) for k, v in batch.items()}
        logits = self.policy(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return L.sft_loss(logits, batch["labels"])

    def ppo_update(self, batch: RolloutBatch, t: RolloutTensors) -> dict[str, float]:
        """``ppo_epochs`` passes of shuffled mini-batches over the rollout batch."""
        cfg, acc = self.cfg, self.accelerator
        B, P = len(batch), batch.prompt_length
        acc_stats: dict[str, list[float]] = {}

        def add(d: dict[str, Any]) -> None:
            for k, v in d.items():
                acc_stats.setdefault(k, []).append(float(v))

        self.policy.train()
        for c in self.critics.values():
            c.train()
        mb_counter = 0
        for epoch in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=torch.Generator().manual_seed(cfg.seed + self.state.step * 31 + epoch))
            for start in range(0, B, cfg.mini_batch_size):
                idx = order[start:start + cfg.mini_batch_size].to(acc.device)
                seq, am = batch.sequences[idx], batch.attention_mask[idx]
                mask = t.mask[idx]
                mb_images = None if batch.image_inputs is None else batch.image_inputs.select(idx.tolist())
                logp, ent = forward_logprobs(self.policy, seq, am, prompt_length=P, temperature=cfg.temperature,
                                             return_entropy=True, response_mask=batch.response_mask[idx],
                                             **self._logprob_vision(seq, mb_images))
                if t.logp_old is None:  # the batch's one update: its forward gives the old log-probs
                    t.logp_old = torch.empty_like(t.mask).index_copy_(0, idx, logp.detach())
                    add(self._set_kl(t))
                elif epoch == 0 and start == 0:
                    # Nothing has been updated yet: the ratio must be exactly 1 on every token.
                    dev = (torch.exp(logp.detach() - t.logp_old[idx]) - 1).abs() * mask
                    add({"train/ratio_first_minibatch_max_dev": dev.max().item()})
                pl, pst = L.policy_loss(logp, t.logp_old[idx], t.advantages[idx], mask,
                                        clip_eps=cfg.clip_eps, agg=cfg.loss_agg)
                loss = pl
                if self.algo.kl_in_loss:
                    # No critic carries the KL: it is a loss term β·k3 instead.
                    kl3 = L.aggregate(L.kl_k3(logp, t.logp_ref[idx]), mask, cfg.loss_agg)
                    loss = loss + cfg.kl_coeff * kl3
                    add({"train/kl_k3": kl3.item()})
                if self.ptx is not None:
                    ptx = self._ptx_loss(mb_counter)
                    loss = loss + cfg.ptx_coeff * ptx
                    add({"train/ptx_loss": ptx.item()})
                gn = backward_step(acc, self.policy, self.actor_opt, loss, max_grad_norm=cfg.max_grad_norm)
                if gn is not None:
                    add({"train/grad_norm": float(gn)})
                add({"train/policy_loss": pl.item(), "train/entropy": L.masked_mean(ent.detach(), mask).item(),
                     **{f"train/{k}": v for k, v in pst.items()}})
                mb_critic_vision = self._critic_vision(seq, mb_images)
                for cname, critic in self.critics.items():
                    v_all = critic_values_all(critic, seq, am, P, **mb_critic_vision)
                    critic_loss = 0.0
                    for name, head in self.critic_streams[cname]:  # a shared critic: the sum of its heads' losses
                        vl, vst = L.value_loss(v_all[..., head], t.values[name][idx], t.returns[name][idx], mask,
                                               clip_eps_v=cfg.clip_eps_value, agg=cfg.loss_agg)
                        critic_loss = critic_loss + vl
                        add({f"train/{name}_value_loss": vl.item(),
                             **{f"train/{name}_value_{k}": val for k, val in vst.items()}})
                    backward_step(acc, critic, self.critic_opts[cname], critic_loss, max_grad_norm=cfg.max_grad_norm)
                mb_counter += 1
        out = {k: float(np.nanmean(v)) if not all(math.isnan(x) for x in v) else float("nan")
               for k, v in acc_stats.items()}
        if "train/ratio_max" in acc_stats:
            out["train/ratio_max"] = float(np.max(acc_stats["train/ratio_max"]))
        return out

    def train_step(self) -> dict[str, float]:
        """One iteration: rollouts, scores, multiplier, PPO update. Returns its metrics."""
        it = self.state.step
        batch, tensors, stats = self.make_experience(it)
        t2 = time.perf_counter()
        stats.update(self.ppo_update(batch, tensors))
        self.backend.sync_weights(self.policy)  # a separate engine samples the updated policy next
        stats["time/train"] = time.perf_counter() - t2
        stats["time/iteration"] = stats["time/generate"] + stats["time/score"] + stats["time/train"]
        self.state.step += 1
        return stats

    # ------------------------------------------------------------------ eval
    @torch.no_grad()
    def evaluate(self, prompts: list | None = None, *, limit: int = 256) -> dict[str, float]:
        """Score one sample per held-out prompt (fixed seed, the training sampling settings)."""
        images = sources = None
        if prompts is None and self.eval_prompts:
            images = self.eval_prompt_images[:limit] if self.eval_prompt_images is not None else None
            sources = [s or f"eval prompt {i}" for i, s in enumerate(self.eval_prompt_sources[:limit])]
        prompts = (prompts or self.eval_prompts or [])[:limit]
        if not prompts:
            return {}
        sampling = SamplingParams(temperature=self.cfg.temperature, top_p=self.cfg.top_p,
                                  top_k=self.cfg.top_k or None, max_new_tokens=self.cfg.max_new_tokens,
                                  repetition_penalty=self.cfg.repetition_penalty, n=1)
        batch, rep, texts = self._rollout(prompts, seed=self.cfg.seed + 99_991, sampling=sampling,
                                          images=images, sources=sources)
        batch = batch.to(self.accelerator.device)
        reward, cost = self._score(batch, rep, texts)
        out = {"reward": reward.mean().item(), "response_length": batch.response_lengths.float().mean().item()}
        if cost is not None:
            unsafe = (cost > unsafe_boundary(self.cfg.cost_transform)).float()
            out.update({"cost": cost.mean().item(), "unsafe_rate": unsafe.mean().item(),
                        "J_C_minus_d": cost.mean().item() - self.cfg.budget})
        self._last_eval_samples = [
            {"prompt": p if isinstance(p, str) else json.dumps(p), "response": r, "reward": float(reward[i]),
             "cost": None if cost is None else float(cost[i])}
            for i, (p, r) in enumerate(zip(rep[:8], texts[:8]))
        ]
        return out

    # ------------------------------------------------------------------ run
    def train(self) -> dict[str, Any]:
        cfg, acc = self.cfg, self.accelerator
        out = Path(cfg.out)
        if cfg.resume:
            loaded = load_training_checkpoint(acc, out)
            if loaded is not None:
                self.state = loaded
                acc.print(f"[rl] resumed from iteration {self.state.step}")
        if acc.is_main_process:
            save_run_config(out, cfg)
            if self.state.step > 0:
                for name in ("metrics.jsonl", "samples.jsonl", "eval_samples.jsonl"):
                    _truncate_jsonl(out / name, "step" if name == "metrics.jsonl" else "iteration",
                                    self.state.step)
        logger = MetricsLogger(out, report_to=cfg.report_to, is_main=acc.is_main_process,
                               run_name=f"rl-{cfg.algo}", console_every=cfg.log_every,
                               resume=self.state.step > 0, config=cfg)
        if acc.is_main_process and self.state.step == 0:
            for name in ("samples.jsonl", "eval_samples.jsonl"):
                (out / name).unlink(missing_ok=True)
        progress, task = progress_bar(cfg.iterations, f"rl {cfg.algo}", enabled=cfg.progress and acc.is_main_process)
        progress.update(task, completed=self.state.step)
        history: list[dict[str, float]] = []
        with progress:
            while self.state.step < cfg.iterations:
                stats = self.train_step()
                step = self.state.step
                if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.iterations:
                    stats.update({f"eval/{k}": v for k, v in self.evaluate().items()})
                    self._write_samples(out / "eval_samples.jsonl", step, self._last_eval_samples)
                # Some metrics are legitimately NaN (explained variance of a constant target);
                # a non-finite loss, score or KL ends the run with the step and the metric.
                for k, v in stats.items():
                    if isinstance(v, float) and (math.isinf(v) or (math.isnan(v) and k in _MUST_BE_FINITE)):
                        raise NonFiniteLossError(
                            f"iteration {step}: metric '{k}' is {v}; stopping. Lower --actor-lr / --critic-lr, "
                            "keep --max-grad-norm on, or check the reward and cost models' outputs.")
                logger.log(step, stats, printer=progress.console.print)
                history.append(stats)
                if step % cfg.log_every == 0 or step == 1:
                    self._write_samples(out / "samples.jsonl", step, self._last_samples)
                info = f"R {stats['reward']:.2f}"
                if "cost" in stats:
                    info += f" C {stats['cost']:.2f} λ {stats['lambda']:.2f}"
                progress.update(task, advance=1, info=info)
                if cfg.save_every and step % cfg.save_every == 0 and step < cfg.iterations:
                    save_training_checkpoint(acc, out, self.state)
        final_eval = self.evaluate()
        if final_eval:
            logger.log(self.state.step, {f"eval/{k}": v for k, v in final_eval.items()}, console=True)
            self._write_samples(out / "eval_samples.jsonl", self.state.step, self._last_eval_samples)
        logger.close()
        self.save(out)
        return {"history": history, "final_eval": final_eval, "lambda": self.lagrange.value,
                "at_cap": bool(self.lagrange.at_cap), "constraint": self.constraint_summary(history)}

    def constraint_summary(self, history: list[dict[str, float]], last: int = LAST_ITERATIONS) -> dict[str, Any]:
        """What was constrained, in which units, and how the run ended. λ oscillates around
        the value that holds the budget, so one final snapshot can sit anywhere in a swing: the
        means over the ``last`` iterations (λ, J_C, the realised unsafe rate) say where the run
        settled; the saved policy is the last iterate."""
        cfg = self.cfg
        out: dict[str, Any] = {
            "form": "unsafe_rate" if cfg.budget_unsafe_rate is not None else "mean_cost",
            "cost_transform": cfg.cost_transform, "budget": cfg.budget,
            "budget_unsafe_rate": cfg.budget_unsafe_rate,
            "calibration": self.cost_calibration.to_dict() if self.cost_calibration is not None else None,
            "final_lambda": self.lagrange.value, "at_cap": bool(self.lagrange.at_cap), "last_iterations": last,
        }
        tail = history[-last:]
        for key in ("lambda", "J_C", "cost", "unsafe_rate", "reward"):
            vals = [h[key] for h in tail if key in h and math.isfinite(h[key])]
            out[f"{key}_mean_last"] = float(np.mean(vals)) if vals else None
        return out

    def _write_samples(self, path: Path, step: int, samples: list[dict[str, Any]]) -> None:
        if not self.accelerator.is_main_process or not samples:
            return
        with path.open("a") as fh:
            for s in samples:
                fh.write(json.dumps({"iteration": step, **s}) + "\n")

    def save_model(self, output_dir: str | os.PathLike | None = None) -> Path:
        """Save the policy (merged when LoRA) with its processor as a ``save_pretrained`` folder
        (default ``<out>/policy``); on the main process only."""
        out = Path(output_dir) if output_dir is not None else Path(self.cfg.out) / "policy"
        self.accelerator.wait_for_everyone()
        full = full_state_dict_if_sharded(self.accelerator, self.policy)  # ZeRO-3 / FSDP: on every rank
        if self.accelerator.is_main_process:
            self._save_policy(out, full)
        return out

    def _save_policy(self, out: Path, state_dict: dict[str, Any] | None = None) -> None:
        save_policy(self.accelerator.unwrap_model(self.policy), self.processor, out, template=self.template,
                    meta={"stage": f"rl-{self.cfg.algo}", "iterations": self.state.step,
                          "lambda": self.lagrange.value,
                          "sampling": {"temperature": self.cfg.temperature, "top_p": self.cfg.top_p}},
                    state_dict=state_dict)

    def save(self, out: Path) -> None:
        """Final artefacts: ``policy/`` (merged when LoRA), ``{reward,cost}_critic/`` (or
        ``shared_critic/``: one value head per stream),
        ``lagrange.json`` — each written atomically, on the main process only."""
        acc = self.accelerator
        acc.wait_for_everyone()
        # Sharded weights (ZeRO-3 / FSDP) are gathered collectively first; None when unsharded.
        policy_state = full_state_dict_if_sharded(acc, self.policy)
        critic_states = {name: full_state_dict_if_sharded(acc, c) for name, c in self.critics.items()}
        if not acc.is_main_process:
            return
        out = Path(out)
        self._save_policy(out / "policy", policy_state)
        for name, critic in self.critics.items():
            with atomic_dir(out / f"{name}_critic") as tmp:
                acc.unwrap_model(critic).save_pretrained(tmp, state_dict=critic_states[name])
        tmp_json = out / ".lagrange.json.tmp"
        tmp_json.write_text(json.dumps(
            {"final_lambda": self.lagrange.value, "at_cap": bool(self.lagrange.at_cap),
             "budget": self.cfg.budget, "budget_unsafe_rate": self.cfg.budget_unsafe_rate,
             "cost_transform": self.cfg.cost_transform,
             "calibration": self.cost_calibration.to_dict() if self.cost_calibration is not None else None,
             "state": self.lagrange.state_dict()}, indent=2, default=float))
        tmp_json.replace(out / "lagrange.json")


def run_rl(cfg: RLConfig) -> dict[str, Any]:
    return SafeRLTrainer.from_config(cfg).train()
