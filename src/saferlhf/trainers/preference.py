"""The direct-preference family for safety: DPO, SafeDPO, SACPO (and P-SACPO), C-DPO.

``saferlhf dpo --algo dpo|safe_dpo|sacpo|c_dpo --model SFT_DIR --data PAIRS.jsonl --out DIR``
or, from Python (TRL conventions)::

    trainer = DPOTrainer(DPOConfig(...), model=policy_or_dir, processing_class=tokenizer,
                         train_dataset=pairs)          # Dataset, list of dicts or a path
    metrics = trainer.train()
    trainer.save_model("out/policy")

Every algorithm reads the dual-preference records (:class:`saferlhf.data.PreferencePair`:
``better``, ``safer``, ``safe_a/b``, severities) and orients each pair into (chosen, rejected):

* ``dpo``: by ``better`` (``--preference safer``: by ``safer``), :func:`saferlhf.losses.dpo_loss`;
* ``safe_dpo``: by ``better`` re-ordered by the safety labels (:func:`~saferlhf.losses.safe_dpo_order`)
  with the safety margin Δ (:func:`~saferlhf.losses.safe_dpo_loss`);
* ``sacpo``: two DPO steps, the second against the first step's policy as reference
  (``--sacpo-order``), optionally merged linearly with the first (``--sacpo-merge``, P-SACPO);
* ``c_dpo``: by ``r − λc`` from the trained reward and cost models (scores of the pairs computed
  once: the models are frozen); every ``lambda_every`` steps the current policy answers
  ``lambda_samples`` training prompts, the cost model scores them and λ takes one dual step
  (:class:`saferlhf.lagrange.LagrangeMultiplier`, PPO-Lag's PID by default). The constraint is PPO-Lag's:
  by default the unsafe rate E[P(unsafe)] <= ``--budget-unsafe-rate`` q with the cost model's
  calibrated P(unsafe) (:mod:`saferlhf.calibration`), and the pairs are relabelled by
  ``r − λ·P(unsafe)``; with ``--budget d`` the raw mean cost E[c] <= d and ``r − λc``.

Log-probs are sums over response tokens only: a batch is laid out as [left-padded prompt |
right-padded response] and :func:`saferlhf.models.policy.forward_logprobs` reads the token at
column P + t from the logits at column P − 1 + t. The reference is the disabled LoRA adapter
when LoRA is on, else a frozen copy (:class:`saferlhf.models.policy.ReferenceModel`); with
``--precompute-ref-logprobs`` its log-probs are computed once per pair before training.

Pairs with identical responses or contradictory labels (the safer response labelled unsafe, the
other safe) are bad records: skipped with a report (or fatal with ``--on-bad-record error``) and
counted in ``summary.json`` with the pairs that lack the label an algorithm needs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saferlhf import losses as L
from saferlhf.config import ConfigError
from saferlhf.config.stages import DPOConfig
from saferlhf.data.schema import PreferencePair
from saferlhf.data.templates import Template
from saferlhf.models.checkpoint import load_template, save_policy
from saferlhf.models.policy import (
    ReferenceModel,
    eval_mode,
    forward_logprobs,
    prepare_policy,
    unwrap_model,
)
from saferlhf.trainers.common import (
    MetricsLogger,
    TrainerState,
    check_finite,
    cpu_threads,
    encode_prompt_responses,
    make_accelerator,
    make_optimizer,
    micro_batch_stream,
    planned_steps,
    progress_bar,
    save_training_checkpoint,
    seed_everything,
    step_once_per_optimizer_step,
)
from saferlhf.trainers.loop import micro_step, start_state

ALGOS = ("dpo", "safe_dpo", "sacpo", "c_dpo")
STAGE1_DIR = "sacpo_step1"  # the first SACPO step's policy: the second step's reference


@dataclass(slots=True)
class EncodedPair:
    """One pair, tokenised: prompt ids and both responses' ids (with EOS), plus its labels.

    ``better_a`` / ``safer_a``: 1.0 when response a wins on that label, NaN when unlabelled;
    ``unsafe_a`` / ``unsafe_b``: 1.0 unsafe, 0.0 safe, NaN unknown.
    """

    prompt: list[int]
    resp_a: list[int]
    resp_b: list[int]
    better_a: float
    safer_a: float
    unsafe_a: float
    unsafe_b: float
    text_prompt: Any = None


def _flag(choice: str | None) -> float:
    return math.nan if choice is None else float(choice == "a")


def _unsafe(safe: bool | None) -> float:
    return math.nan if safe is None else float(not safe)


# ----------------------------------------------------------------------------- data


def load_preference_records(dataset: Any, cfg: DPOConfig) -> tuple[list[PreferencePair], Counter]:
    """Records from a path, a ``datasets.Dataset``, a list of dicts or of :class:`PreferencePair`.

    Loaders apply the bad-record policy (identical responses, contradictory labels → skipped and
    reported). Records given already as ``PreferencePair`` objects get the same checks here.
    Returns (records, counts of skipped records by reason).
    """
    from saferlhf.data import load_pairs
    from saferlhf.data.validation import DataError, RecordProblem, check_pair

    skipped: Counter = Counter()
    if isinstance(dataset, (list, tuple)) and dataset and all(isinstance(r, PreferencePair) for r in dataset):
        kept = []
        for i, rec in enumerate(dataset):
            try:
                check_pair(rec, lambda _w: None)
            except RecordProblem as p:
                if cfg.on_bad_record == "error":
                    raise DataError(f"train_dataset[{i}] ({rec.source or 'record'}): {p.message}. Fix: {p.fix}") from None
                warnings.warn(f"skipped train_dataset[{i}]: {p.message}", stacklevel=3)
                skipped[p.reason] += 1
                continue
            kept.append(rec)
        return kept, skipped
    source = str(dataset) if isinstance(dataset, Path) else dataset
    result = load_pairs(source, format=cfg.data_format, on_bad_record=cfg.on_bad_record)
    skipped.update(result.report.skipped_by_reason())
    return list(result.records), skipped


def encode_preference_pairs(records: list[PreferencePair], tokenizer, template: Template,
                            max_length: int) -> tuple[list[EncodedPair], int]:
    """Tokenise every pair (prompt and responses separately, EOS appended; a response that does
    not fit in ``max_length`` with its prompt is cut). Returns (pairs, number left out because
    the prompt alone fills ``max_length``)."""
    if not records:
        return [], 0
    prompts = [r.prompt for r in records]
    enc = encode_prompt_responses(tokenizer, template, prompts + prompts,
                                  [r.response_a for r in records] + [r.response_b for r in records])
    n, out, too_long = len(records), [], 0
    for i, r in enumerate(records):
        (ids_a, plen), (ids_b, _) = enc[i], enc[n + i]
        if plen >= max_length:
            too_long += 1
            continue
        room = max_length - plen
        out.append(EncodedPair(ids_a[:plen], ids_a[plen:plen + room], ids_b[plen:plen + room], _flag(r.better),
                               _flag(r.safer), _unsafe(r.safe_a), _unsafe(r.safe_b), text_prompt=r.prompt))
    return out, too_long


def collate_pairs(examples: list[EncodedPair], pad_id: int, device) -> dict[str, torch.Tensor]:
    """(2B, P + R) batch: rows 0..B-1 are responses a, rows B..2B-1 responses b, each as
    [left-padded prompt (P) | right-padded response (R)], plus the response mask (2B, R)."""
    P = max(len(e.prompt) for e in examples)
    R = max(max(len(e.resp_a), len(e.resp_b)) for e in examples)
    rows = [(e.prompt, e.resp_a) for e in examples] + [(e.prompt, e.resp_b) for e in examples]
    ids = torch.full((len(rows), P + R), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P + R), dtype=torch.long)
    for i, (p, r) in enumerate(rows):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, P - len(p):P + len(r)] = 1
    labels = {k: torch.tensor([getattr(e, k) for e in examples], dtype=torch.float32, device=device)
              for k in ("better_a", "safer_a", "unsafe_a", "unsafe_b")}
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "prompt_length": P,
            "response_mask": mask[:, P:].to(device), **labels}


def sequence_logprobs(model, batch: dict[str, Any]) -> torch.Tensor:
    """Σ_t log π(y_t | x, y_<t) over the response tokens of every row: (2B,) float32."""
    logp = forward_logprobs(model, batch["input_ids"], batch["attention_mask"],
                            prompt_length=batch["prompt_length"], response_mask=batch["response_mask"])
    return L.masked_sum(logp, batch["response_mask"], dim=-1)


# ----------------------------------------------------------------------------- schedule


def _stage_lr_lambda(stages: list[int], kind: str, warmup_ratio: float):
    """LR factor at a global step: warm-up then ``kind`` decay, restarted at each stage (SACPO's
    second step is a new DPO run)."""
    bounds = np.cumsum([0, *stages])

    def factor(step: int) -> float:
        k = int(np.searchsorted(bounds, step, side="right") - 1)
        k = min(max(k, 0), len(stages) - 1)
        n, t = stages[k], step - bounds[k]
        warm = round(warmup_ratio * n)
        if t < warm:
            return (t + 1) / (warm + 1)
        if kind == "constant":
            return 1.0
        progress = min(1.0, (t - warm) / max(1, n - warm))
        if kind == "linear":
            return max(0.0, 1.0 - progress)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


# ----------------------------------------------------------------------------- trainer


@dataclass
class _Run:
    """What the steps of one ``DPOTrainer.train`` call share."""

    model: Any
    optimizer: Any
    scheduler: Any
    state: Any
    extra: dict
    history: list
    total: int
    logger: Any = None
    progress: Any = None
    task: Any = None


class DPOTrainer:
    """Direct preference optimisation on dual-preference pairs (TRL-style constructor).

    ``model``: a ``PreTrainedModel`` or a policy dir; ``ref_model``: a model or dir (default:
    the disabled LoRA adapter, else a frozen copy of ``model`` made before training);
    ``processing_class``: the tokenizer (default: the model dir's); ``train_dataset``: a path,
    a ``datasets.Dataset``, a list of dicts or of ``PreferencePair``; ``eval_dataset``: the same,
    scored (loss, rewards, accuracy) at the end. ``reward_model`` / ``cost_model`` (c_dpo):
    score-model dirs or :class:`~saferlhf.eval.samplers.CostScorer`-like callables
    ``(prompts, responses) -> scores``; default from ``args``.
    """

    def __init__(self, args: DPOConfig, model: Any = None, ref_model: Any = None, processing_class: Any = None,
                 train_dataset: Any = None, eval_dataset: Any = None, *, reward_model: Any = None,
                 cost_model: Any = None, template: Template | None = None) -> None:
        args.validate()
        self.args = cfg = args
        if cfg.algo not in ALGOS:
            raise ConfigError(f"--algo {cfg.algo}: expected one of {ALGOS}")
        if cfg.algo == "c_dpo" and ((cfg.reward_model if reward_model is None else reward_model) is None
                                    or (cfg.cost_model if cost_model is None else cost_model) is None):
            raise ConfigError("--algo c_dpo needs --reward-model DIR and --cost-model DIR (its preferences come "
                              "from r - λc on the pairs)")
        seed_everything(cfg.seed)
        self.accelerator = make_accelerator(cfg.precision, grad_accum=cfg.grad_accum)
        model = cfg.model if model is None else model
        self.model_source = model if isinstance(model, (str, Path)) else None
        if processing_class is None:
            if self.model_source is None:
                raise ConfigError("DPOTrainer(model=<a live model>) needs processing_class= (its tokenizer)")
            from saferlhf.models.loading import load_tokenizer

            processing_class = load_tokenizer(cfg.tokenizer or self.model_source)
        self.tokenizer = processing_class
        if getattr(self.tokenizer, "image_token_ids", None) is not None:
            raise ConfigError("saferlhf dpo trains text policies; vision-language policies are not supported yet")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if template is None:
            template = load_template(self.model_source, self.tokenizer) if self.model_source else None
        if template is None:
            from saferlhf.data.templates import template_for

            template = template_for(self.tokenizer)
        self.template = template
        lora = None
        if cfg.lora_r:
            from saferlhf.trainers.sft import lora_spec

            lora = lora_spec(cfg)
        if self.model_source is not None:
            from saferlhf.models.policy import load_policy

            if not Path(self.model_source).is_dir():
                raise FileNotFoundError(f"--model {self.model_source}: not a folder (give an SFT policy dir)")
            self.model = load_policy(self.model_source, lora, dtype="fp32" if cfg.precision != "bf16" else "bf16",
                                     gradient_checkpointing=cfg.gradient_checkpointing)
        else:
            self.model = prepare_policy(model, lora, gradient_checkpointing=cfg.gradient_checkpointing)
        if isinstance(ref_model, (str, Path)) or (ref_model is None and cfg.ref_model):
            self.ref = ReferenceModel.load(ref_model or cfg.ref_model, self.model)
        else:
            self.ref = ReferenceModel(self.model, ref_model=ref_model)
        train_dataset = cfg.data if train_dataset is None else train_dataset
        records, self.skipped = load_preference_records(train_dataset, cfg)
        self.train_pairs, too_long = encode_preference_pairs(records, self.tokenizer, self.template, cfg.max_length)
        if too_long:
            self.skipped["prompt_longer_than_max_length"] += too_long
        self.n_records = len(records)
        self.eval_pairs: list[EncodedPair] = []
        if eval_dataset is not None or cfg.eval_data:
            ev, _ = load_preference_records(eval_dataset if eval_dataset is not None else cfg.eval_data, cfg)
            self.eval_pairs, _ = encode_preference_pairs(ev, self.tokenizer, self.template, cfg.max_length)
        self._reward_model, self._cost_model = reward_model, cost_model
        self.lagrange = None
        self.summary: dict[str, Any] = {}

    @classmethod
    def from_config(cls, cfg: DPOConfig) -> DPOTrainer:
        """The trainer the CLI runs: everything from ``cfg`` (model, data, score models)."""
        return cls(cfg)

    # -- the pairs each stage learns from ----------------------------------------------------

    def _stage_plan(self) -> list[tuple[str, list[int]]]:
        """[(preference, indices of the pairs that carry it)] per stage."""
        cfg = self.args

        def having(*keys: str) -> list[int]:
            return [i for i, e in enumerate(self.train_pairs) if all(not math.isnan(getattr(e, k)) for k in keys)]

        if cfg.algo == "dpo":
            prefs = [cfg.preference]
        elif cfg.algo == "safe_dpo":
            prefs = ["safe_dpo"]
        elif cfg.algo == "sacpo":
            prefs = ["better", "safer"] if cfg.sacpo_order == "helpful_first" else ["safer", "better"]
        else:
            prefs = ["c_dpo"]
        keys = {"better": ("better_a",), "safer": ("safer_a",), "safe_dpo": ("better_a", "unsafe_a", "unsafe_b"),
                "c_dpo": ()}
        plan = []
        for p in prefs:
            idx = having(*keys[p])
            missing = len(self.train_pairs) - len(idx)
            if missing:
                self.skipped[f"missing_label_{p}"] += missing
                self.accelerator.print(f"[dpo] {missing} of {len(self.train_pairs)} pairs lack the labels of "
                                       f"'{p}' and are not used by that step")
            if not idx:
                raise ConfigError(f"--data {self.args.data}: no pair carries the labels '{p}' needs "
                                  f"({', '.join(keys[p])})")
            plan.append((p, idx))
        return plan

    # -- c_dpo: scores of the pairs and the dual step -----------------------------------------

    def _scorer(self, which: str):
        given = self._reward_model if which == "reward" else self._cost_model
        if given is None:
            given = self.args.reward_model if which == "reward" else self.args.cost_model
        if isinstance(given, (str, Path)):
            from saferlhf.eval.samplers import CostScorer

            if not Path(given).is_dir():
                raise FileNotFoundError(f"--{which}-model {given}: not a folder")
            # the cost in the constraint's units: calibrated P(unsafe) for the unsafe-rate form
            transform = "calibrated" if which == "cost" and self.args.budget is None else "identity"
            return CostScorer(given, max_length=self.args.max_length, transform=transform)
        return given

    def _constraint_costs(self, scorer, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """The cost scorer's values in the constraint's units; a callable must return P(unsafe) in
        [0, 1] for the unsafe-rate form (a folder is calibrated by :class:`CostScorer`)."""
        costs = torch.as_tensor(np.asarray(scorer(prompts, responses), dtype=np.float32))
        if self.args.budget is None and bool(((costs < 0) | (costs > 1)).any()):
            raise ConfigError(
                f"c_dpo --budget-unsafe-rate constrains P(unsafe) in [0, 1], but the cost scorer returned values in "
                f"[{float(costs.min()):.3g}, {float(costs.max()):.3g}]: give a cost model folder (its calibration "
                f"maps costs to P(unsafe)), a callable returning probabilities, or --budget d for raw mean costs")
        return costs

    def _score_pairs(self) -> dict[str, torch.Tensor]:
        rm, cm = self._scorer("reward"), self._scorer("cost")
        recs = self.train_pairs
        dec = self.tokenizer.decode
        prompts = [e.text_prompt for e in recs]
        # the pairs' own texts (decoded back from the ids the policy trains on, as RL's scorers do)
        ra = [dec(e.resp_a, skip_special_tokens=True).strip() for e in recs]
        rb = [dec(e.resp_b, skip_special_tokens=True).strip() for e in recs]
        out = {}
        scores = {"reward": torch.as_tensor(np.asarray(rm(prompts + prompts, ra + rb), dtype=np.float32)),
                  "cost": self._constraint_costs(cm, prompts + prompts, ra + rb)}
        for name, s in scores.items():
            out[f"{name}_a"], out[f"{name}_b"] = s[:len(recs)], s[len(recs):]
        self._cost_scorer = cm
        return out

    def _make_lagrange(self):
        from saferlhf.lagrange import LagrangeMultiplier

        cfg = self.args
        budget = cfg.budget if cfg.budget is not None else cfg.budget_unsafe_rate
        # The window holds exactly one dual update's samples (all processes'): J_C of the current policy.
        return LagrangeMultiplier(cfg.lagrange, budget=budget,
                                  window=cfg.lambda_samples * self.accelerator.num_processes,
                                  reduce_fn=self.accelerator.gather if self.accelerator.num_processes > 1 else None)

    def _dual_step(self, model, step: int) -> dict[str, float]:
        """Sample the current policy on training prompts; one dual-ascent step of λ."""
        from saferlhf.eval.samplers import PolicySampler

        cfg = self.args
        rng = np.random.default_rng([cfg.seed, step, self.accelerator.process_index])
        prompts = [self._prompts[i] for i in rng.choice(len(self._prompts), size=cfg.lambda_samples)]
        policy = unwrap_model(model, self.accelerator.unwrap_model)
        with eval_mode(policy), torch.no_grad():
            sampler = PolicySampler(policy, self.tokenizer, self.template, temperature=1.0,
                                    max_new_tokens=cfg.max_new_tokens, seed=cfg.seed * 100003 + step)
            responses = sampler.sample(prompts)
        costs = self._constraint_costs(self._cost_scorer, prompts, responses)
        stats = self.lagrange.step(costs)
        # unsafe_rate: the share the (calibrated) cost model calls unsafe, P(unsafe) > 1/2 or c > 0
        unsafe = costs > (0.5 if cfg.budget is None else 0.0)
        return {"lambda": stats["lambda"], "J_C": stats["J_C"], "J_C_minus_d": stats["J_C_minus_d"],
                "unsafe_rate": float(unsafe.float().mean()), "mean_cost": float(costs.mean())}

    # -- loss ---------------------------------------------------------------------------------

    def _loss(self, model, batch: dict[str, Any], pref: str, beta: float) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.args
        logp = sequence_logprobs(model, batch)
        if "ref_a" in batch:
            ref = torch.cat([batch["ref_a"], batch["ref_b"]])
        else:
            ref = self.ref.logprobs(batch["input_ids"], batch["attention_mask"], prompt_length=batch["prompt_length"],
                                    response_mask=batch["response_mask"]).sum(-1).to(logp.device)
        B = logp.shape[0] // 2
        pa, pb, ra, rb = logp[:B], logp[B:], ref[:B], ref[B:]
        if pref == "c_dpo":
            loss, m = L.c_dpo_loss(pa, pb, ra, rb, batch["reward_a"], batch["reward_b"], batch["cost_a"],
                                   batch["cost_b"], self.lagrange.value, beta=beta)
        else:
            if pref == "safe_dpo":
                a_wins, h_w, h_l = L.safe_dpo_order(batch["better_a"] > 0.5, batch["unsafe_a"], batch["unsafe_b"])
            else:
                a_wins = batch["better_a" if pref == "better" else "safer_a"] > 0.5
            pw, pl = torch.where(a_wins, pa, pb), torch.where(a_wins, pb, pa)
            rw, rl = torch.where(a_wins, ra, rb), torch.where(a_wins, rb, ra)
            if pref == "safe_dpo":
                loss, m = L.safe_dpo_loss(pw, pl, rw, rl, h_w, h_l, beta=beta, delta=cfg.safe_dpo_delta)
                m["reordered"] = (a_wins != (batch["better_a"] > 0.5)).float().mean()
            else:
                loss, m = L.dpo_loss(pw, pl, rw, rl, beta)
        names = {"chosen_reward": "rewards/chosen", "rejected_reward": "rewards/rejected",
                 "margin": "rewards/margins", "accuracy": "rewards/accuracies"}
        return loss, {names.get(k, k): float(v) for k, v in m.items()}

    def _collate(self, idx: list[int], extra: dict[str, torch.Tensor]) -> dict[str, Any]:
        batch = collate_pairs([self.train_pairs[i] for i in idx], self.tokenizer.pad_token_id, self.accelerator.device)
        t = torch.tensor(idx, dtype=torch.long)
        for k, v in extra.items():
            batch[k] = v[t].to(self.accelerator.device)
        return batch

    @torch.no_grad()
    def _precompute_ref(self, ref: ReferenceModel | torch.nn.Module) -> dict[str, torch.Tensor]:
        n = len(self.train_pairs)
        a, b = torch.zeros(n), torch.zeros(n)
        for s in range(0, n, 64):
            idx = list(range(s, min(n, s + 64)))
            batch = collate_pairs([self.train_pairs[i] for i in idx], self.tokenizer.pad_token_id,
                                  self.accelerator.device)
            if isinstance(ref, ReferenceModel):
                lp = ref.logprobs(batch["input_ids"], batch["attention_mask"], prompt_length=batch["prompt_length"],
                                  response_mask=batch["response_mask"]).sum(-1).cpu()
            else:
                with eval_mode(ref):
                    lp = sequence_logprobs(ref, batch).cpu()
            a[s:s + len(idx)], b[s:s + len(idx)] = lp[:len(idx)], lp[len(idx):]
        return {"ref_a": a, "ref_b": b}

    # -- the loop -----------------------------------------------------------------------------

    def train(self) -> dict[str, Any]:
        """Train for the configured steps (both steps for sacpo); returns the final metrics and
        the run summary (also written to ``OUT/summary.json``)."""
        cfg, acc = self.args, self.accelerator
        out = Path(cfg.out)
        t0 = time.perf_counter()
        plan = self._stage_plan()
        stage_steps = [planned_steps(len(idx), batch_size=cfg.batch_size, grad_accum=cfg.grad_accum,
                                     epochs=cfg.epochs, max_steps=cfg.max_steps, world_size=acc.num_processes)[0]
                       for _, idx in plan]
        extra: dict[str, torch.Tensor] = {}
        if cfg.algo == "c_dpo":
            extra.update(self._score_pairs())
            self._prompts = list({json.dumps(e.text_prompt): e.text_prompt for e in self.train_pairs}.values())
            self.lagrange = self._make_lagrange()
        optimizer = make_optimizer(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _stage_lr_lambda(stage_steps, cfg.lr_scheduler, cfg.warmup_ratio))
        model, optimizer, scheduler = acc.prepare(self.model, optimizer, scheduler)
        step_once_per_optimizer_step(scheduler)
        state = start_state(cfg, acc, out, "dpo", fresh=TrainerState(extra={"stage": 0, "stage_micro": 0}))
        if self.lagrange is not None and "lagrange" in state.extra:
            self.lagrange.load_state_dict(state.extra["lagrange"])
        run = _Run(model, optimizer, scheduler, state, extra, history=[], total=sum(stage_steps))
        run.logger = MetricsLogger(out, report_to=cfg.report_to, is_main=acc.is_main_process,
                                   run_name=f"dpo-{cfg.algo}", console_every=cfg.log_every, resume=state.step > 0,
                                   config=cfg)
        run.progress, run.task = progress_bar(run.total, f"dpo {cfg.algo}", enabled=cfg.progress and acc.is_main_process)
        run.progress.update(run.task, completed=state.step)
        with contextlib.ExitStack() as stack:
            stack.enter_context(cpu_threads(model, acc.device))
            stack.callback(run.logger.close)
            stack.enter_context(run.progress)
            for k in range(int(state.extra.get("stage", 0)), len(plan)):
                self._run_stage(run, k, plan, sum(stage_steps[:k + 1]))
                if k + 1 < len(plan):
                    state.extra["stage"] = k + 1
                    state.extra["stage_micro"] = 0
        self.model = acc.unwrap_model(model)
        return self._finish(run, plan, stage_steps, t0)

    def _run_stage(self, run: _Run, k: int, plan, stage_end: int) -> None:
        """Optimiser steps of stage ``k`` (the one DPO step, or a SACPO step) up to ``stage_end``."""
        cfg, acc, state = self.args, self.accelerator, run.state
        pref, idx = plan[k]
        beta = cfg.beta
        if cfg.algo == "sacpo" and pref == "safer" and cfg.sacpo_safety_beta is not None:
            beta = cfg.sacpo_safety_beta
        if k > 0 and cfg.algo == "sacpo":
            self._begin_second_step(run.model, run.optimizer, state)
        if cfg.precompute_ref_logprobs:
            run.extra.update(self._precompute_ref(self.ref))
        stream = micro_batch_stream(len(idx), cfg.batch_size, seed=cfg.seed + 7919 * k, rank=acc.process_index,
                                    world_size=acc.num_processes, start=int(state.extra.get("stage_micro", 0)))
        params = [p for p in run.model.parameters() if p.requires_grad]
        run.model.train()
        while state.step < stage_end:
            metrics_acc: list[dict[str, float]] = []
            for _ in range(cfg.grad_accum):
                epoch, local = next(stream)
                batch = self._collate([idx[i] for i in local], run.extra)
                metrics_acc.append(micro_step(acc, run.model, batch, lambda m, b: self._loss(m, b, pref, beta),
                                              run.optimizer, run.scheduler, params=params,
                                              max_grad_norm=cfg.max_grad_norm, state=state, epoch=epoch))
                state.micro_step += 1
                state.extra["stage_micro"] = int(state.extra.get("stage_micro", 0)) + 1
            state.step += 1
            last = {key: sum(x[key] for x in metrics_acc if key in x) / len(metrics_acc) for key in metrics_acc[0]}
            last.update(lr=run.scheduler.get_last_lr()[0], stage=float(k))
            if self.lagrange is not None:
                if state.step % cfg.lambda_every == 0 or state.step == run.total:
                    last.update({f"dual/{a}": b for a, b in self._dual_step(run.model, state.step).items()})
                    run.model.train()
                last["lambda"] = self.lagrange.value
                state.extra["lagrange"] = self.lagrange.state_dict()
            check_finite(state.step, last)
            run.history.append(last)
            run.logger.log(state.step, last, printer=run.progress.console.print)
            run.progress.update(run.task, advance=1, info=f"loss {last['loss']:.4f}")
            if cfg.save_every and state.step % cfg.save_every == 0 and state.step < run.total:
                save_training_checkpoint(acc, Path(cfg.out), state)

    def _finish(self, run: _Run, plan, stage_steps: list[int], t0: float) -> dict[str, Any]:
        """Held-out evaluation and the run summary (``OUT/summary.json``, written atomically)."""
        cfg, acc, out = self.args, self.accelerator, Path(self.args.out)
        eval_metrics = self.evaluate() if self.eval_pairs else {}
        if eval_metrics:
            logger_eval = MetricsLogger(out, is_main=acc.is_main_process, resume=True)
            logger_eval.log(run.state.step, {f"eval/{k}": v for k, v in eval_metrics.items()}, console=True)
            logger_eval.close()
        self.summary = {
            "algo": cfg.algo, "steps": run.state.step, "stage_steps": stage_steps, "pairs_loaded": self.n_records,
            "pairs_used": {p: len(idx) for p, idx in plan}, "skipped": dict(self.skipped),
            "final": run.history[-1] if run.history else {}, "first": run.history[0] if run.history else {},
            "eval": eval_metrics, "seconds": round(time.perf_counter() - t0, 2),
        }
        if self.lagrange is not None:
            self.summary["lagrange"] = {"final_lambda": self.lagrange.value, "J_C": self.lagrange.constraint_estimate,
                                        "budget": self.lagrange.config.budget,
                                        "budget_kind": "mean_cost" if cfg.budget is not None else "unsafe_rate",
                                        "at_cap": self.lagrange.at_cap}
            cal = getattr(self._cost_scorer, "calibration", None)
            if cal is not None:  # what P(unsafe) was: the cost model's calibration
                self.summary["lagrange"]["calibration"] = cal.to_dict()
        if acc.is_main_process:
            out.mkdir(parents=True, exist_ok=True)
            tmp = out / f".summary.json.tmp-{os.getpid()}"
            tmp.write_text(json.dumps(self.summary, indent=2, default=float))
            os.replace(tmp, out / "summary.json")
        return self.summary

    def _begin_second_step(self, model, optimizer, state: TrainerState) -> None:
        """SACPO's second step: the first step's policy becomes the reference (saved to
        ``OUT/sacpo_step1`` so a resumed run and P-SACPO merging find it), Adam restarts."""
        cfg = self.args
        stage1 = Path(cfg.out) / STAGE1_DIR
        policy = unwrap_model(model, self.accelerator.unwrap_model)
        if not (stage1 / "COMPLETE").exists():
            if self.accelerator.is_main_process:
                save_policy(policy, self.tokenizer, stage1, template=self.template,
                            meta={"algo": "sacpo", "step": "1", "order": cfg.sacpo_order})
            self.accelerator.wait_for_everyone()
            getattr(optimizer, "optimizer", optimizer).state.clear()  # under accelerate's wrapper
        self.ref = ReferenceModel.load(stage1, policy)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """DPO loss, rewards and accuracy of the held-out pairs under the algorithm's last preference."""
        pref = self._stage_plan_last()
        saved = self.train_pairs
        self.train_pairs = self.eval_pairs
        try:
            idx = [i for i, e in enumerate(self.eval_pairs) if pref == "c_dpo" or not math.isnan(
                getattr(e, "safer_a" if pref == "safer" else "better_a"))]
            if pref == "c_dpo" or not idx:
                return {}
            acc: list[dict[str, float]] = []
            with eval_mode(self.model):
                for s in range(0, len(idx), 64):
                    batch = self._collate(idx[s:s + 64], {})
                    loss, m = self._loss(self.model, batch, pref, self.args.beta)
                    m["loss"] = float(loss)
                    acc.append(m)
            return {k: float(np.mean([m[k] for m in acc])) for k in acc[0]}
        finally:
            self.train_pairs = saved

    def _stage_plan_last(self) -> str:
        cfg = self.args
        if cfg.algo == "dpo":
            return cfg.preference
        if cfg.algo == "sacpo":
            return "safer" if cfg.sacpo_order == "helpful_first" else "better"
        return cfg.algo

    def save_model(self, output_dir: str | Path | None = None) -> Path:
        """Save the trained policy (LoRA merged) with its tokenizer and template: a
        ``save_pretrained`` folder that ``saferlhf eval world --policy`` reads. For sacpo with
        ``sacpo_merge = w`` the saved weights are ``(1 − w) θ_step1 + w θ_step2`` (P-SACPO)."""
        cfg = self.args
        out = Path(output_dir or cfg.out)
        model = unwrap_model(self.model, self.accelerator.unwrap_model)
        if cfg.algo == "sacpo" and cfg.sacpo_merge is not None:
            import copy

            from saferlhf.models.loading import is_peft_model, load_causal_lm

            base = copy.deepcopy(model).merge_and_unload() if is_peft_model(model) else copy.deepcopy(model)
            step1 = load_causal_lm(Path(cfg.out) / STAGE1_DIR, dtype="fp32")
            merged = L.merge_weights(step1.state_dict(), base.state_dict(), cfg.sacpo_merge)
            base.load_state_dict(merged)
            model = base
        meta = {"algo": cfg.algo, "beta": cfg.beta, "sampling": {"temperature": 1.0}}
        if self.accelerator.is_main_process:
            save_policy(model, self.tokenizer, out, template=self.template, meta=meta)
        self.accelerator.wait_for_everyone()
        return out


def run_dpo(cfg: DPOConfig) -> dict[str, Any]:
    """``saferlhf dpo``: train, save the policy into ``--out`` (beside ``metrics.jsonl``)."""
    trainer = DPOTrainer.from_config(cfg)
    summary = trainer.train()
    trainer.save_model(cfg.out)
    skipped = summary["skipped"]
    line = f"[dpo {cfg.algo}] {summary['steps']} steps on {sum(summary['pairs_used'].values())} pairs"
    if skipped:
        line += "; skipped " + ", ".join(f"{k}: {v}" for k, v in skipped.items())
    final = summary["final"]
    line += (f"; final loss {final.get('loss', float('nan')):.4f}, margin {final.get('rewards/margins', float('nan')):.3f}, "
             f"accuracy {final.get('rewards/accuracies', float('nan')):.3f}")
    if "lagrange" in summary:
        lg = summary["lagrange"]
        line += f"; λ = {lg['final_lambda']:.3g}, J_C = {lg['J_C']:.3g} (budget {lg['budget']:g})"
    print(line)
    return summary


__all__ = ["ALGOS", "DPOTrainer", "EncodedPair", "collate_pairs", "encode_preference_pairs",
           "load_preference_records", "run_dpo", "sequence_logprobs"]
