"""saferlhf against TRL, side by side on the same model, tokenizer, data and settings.

    python benchmarks/vs_trl.py [--out runs/bench] [--reps 3] [--threads 1]      (make bench-trl)

Rows (each framework given its natural input: records for saferlhf, a ``datasets.Dataset`` in
TRL's conversational format for TRL; both render the world's chat template to the same tokens):

* ``sft``: :class:`saferlhf.SFTTrainer` vs ``trl.SFTTrainer`` (loss on the completion);
* ``reward``: :class:`saferlhf.ScoreModelTrainer` (reward) vs ``trl.RewardTrainer``;
* ``dpo``: ``saferlhf.trainers.preference.DPOTrainer`` vs ``trl.DPOTrainer`` (skipped, with the
  reason, while saferlhf has no ``DPOTrainer``);
* ``grpo``: one RL iteration of saferlhf's ``grpo_lag`` vs ``trl.GRPOTrainer``: the same prompts
  per iteration, group size, generation length, β (so both keep a reference model), one
  optimiser step per iteration, the same Python reward (and cost) functions on the world's
  oracles;
* ``ppo_lag_over_ppo``: saferlhf's PPO-Lag iteration (separate reward and cost critics) over its
  PPO iteration, with learned (untrained) reward / cost score models of the policy's shape.

Every row also runs a no-framework ceiling (``raw``): the same batches pre-collated, and a bare
loop of forward, backward, clipping and fused AdamW (for GRPO: ``generate`` + the reference
forward + the policy step), so the overhead of each framework is visible.

Measurement. The model is a Llama config built in code (4 layers, 256 hidden, 4 heads, the
vocabulary of the world's word-level tokenizer), fp32, ``torch.set_num_threads(threads)``; TRL
runs with bf16 and gradient checkpointing off, the same batch size, sequence length, learning
rate schedule, warm-up and clipping. A framework's throughput is taken between its optimiser
steps (a global ``Optimizer`` step hook), after ``--warm-steps`` steps of each run: the time
between the end of step ``w`` and the end of the last step, and the real (unpadded) tokens
that the trained model's gradient-enabled forward passes saw in between (the attention mask's
sum) — set-up, dataset preparation, the first steps and the final save are left out alike.
The frameworks alternate run by run (one warm-up run each, with the memory probe on, then
``--reps`` timed runs each), so the load of a shared machine falls on all of them alike; the
median and the min–max of the runs are reported. Memory: the peak RSS of the process during
a framework's warm-up run (sampled every 2 ms; it includes what earlier runs left mapped) and
the peak of the malloc heap above the run's start (glibc ``mallinfo2``, which falls when
memory is freed).

Writes ``OUT/vs_trl.json`` (``{"rows": [...], "ppo_lag_over_ppo": r, "threads": n, ...}``) and
``OUT/vs_trl.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

import torch  # noqa: E402

STAGES = ("sft", "reward", "dpo", "grpo", "ppo")


# ----------------------------------------------------------------------------- probes


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]


class MemoryProbe:
    """Peak RSS (``/proc/self/statm``) and peak malloc heap above the start, sampled by a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.page = os.sysconf("SC_PAGE_SIZE")
        try:
            self.libc = ctypes.CDLL("libc.so.6")
            self.libc.mallinfo2.restype = _MallInfo2
        except (OSError, AttributeError):  # not glibc: the heap figure is left out
            self.libc = None
        self._stop = threading.Event()
        self.peak_rss = self.peak_heap = self.base_heap = 0

    def rss(self) -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * self.page

    def heap(self) -> int:
        if self.libc is None:
            return 0
        m = self.libc.mallinfo2()
        return m.uordblks + m.hblkhd

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, self.rss())
            self.peak_heap = max(self.peak_heap, self.heap())
            time.sleep(self.interval)

    def __enter__(self) -> MemoryProbe:
        self.base_heap = self.peak_heap = self.heap()
        self.peak_rss = self.rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()
        self.peak_rss = max(self.peak_rss, self.rss())
        self.peak_heap = max(self.peak_heap, self.heap())

    def result(self) -> dict[str, float]:
        out = {"peak_rss_mib": round(self.peak_rss / 2**20, 1)}
        if self.libc is not None:
            out["peak_heap_mib"] = round((self.peak_heap - self.base_heap) / 2**20, 1)
        return out


class StepProbe:
    """End times of the optimiser steps over the tracked parameters, and the real tokens the
    tracked model's gradient-enabled forward passes saw before each step.

    A global ``Optimizer`` step hook sees every optimiser (the framework's own, wrapped or not);
    only steps of an optimiser holding a tracked parameter count, and only one optimiser object
    (the first to step), so a wrapper and the optimiser it wraps do not count twice.
    """

    def __init__(self) -> None:
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.tokens: list[int] = []
        self._pending = 0
        self._params: set[int] = set()
        self._opt: int | None = None
        self._handles: list[Any] = []

    def track(self, model: torch.nn.Module) -> None:
        self._params |= {id(p) for p in model.parameters() if p.requires_grad}
        self._handles.append(model.register_forward_pre_hook(self._on_forward, with_kwargs=True))

    def _on_forward(self, module, args, kwargs) -> None:
        if not torch.is_grad_enabled():
            return
        mask = kwargs.get("attention_mask")
        ids = kwargs.get("input_ids", args[0] if args else None)
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self._pending += int(mask.sum())
        elif isinstance(ids, torch.Tensor):
            self._pending += ids.numel()

    def _on_step(self, opt, args, kwargs) -> None:
        if self._opt is None:
            if not any(id(p) in self._params for g in opt.param_groups for p in g["params"]):
                return
            self._opt = id(opt)
        if id(opt) != self._opt:
            return
        self.times.append(time.perf_counter())
        self.cpu.append(time.process_time())
        self.tokens.append(self._pending)
        self._pending = 0

    def __enter__(self) -> StepProbe:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handles.append(register_optimizer_step_post_hook(self._on_step))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def throughput(self, warm: int) -> dict[str, float]:
        """Steps/s and tokens/s between the end of step ``warm`` and the end of the last step."""
        n = len(self.times)
        if n < warm + 2:
            raise RuntimeError(f"only {n} optimiser steps were seen; need at least {warm + 2}")
        dt = self.times[-1] - self.times[warm]
        cpu = self.cpu[-1] - self.cpu[warm]
        toks = sum(self.tokens[warm + 1:])
        k = n - 1 - warm
        return {"it_s": k / dt, "tok_s": toks / dt, "s_per_it": dt / k, "cpu_it_s": k / cpu, "cpu_tok_s": toks / cpu,
                "cpu_s_per_it": cpu / k, "tokens_per_step": toks / k, "steps_timed": k}


@contextlib.contextmanager
def quiet():
    """Silence the frameworks' console output and warnings during a run."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------------------- assets


@dataclasses.dataclass
class Settings:
    layers: int = 4
    hidden: int = 256
    heads: int = 4
    batch: int = 16
    max_length: int = 128
    lr: float = 1e-3
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    steps: int = 16  # optimiser steps per supervised run
    warm_steps: int = 2  # of which the first ones are not timed
    rl_prompts: int = 8
    group: int = 4
    new_tokens: int = 32
    rl_iters: int = 6
    rl_warm: int = 1
    rl_lr: float = 1e-5
    beta: float = 0.1
    ppo_batch: int = 16
    reps: int = 5
    threads: int = 1
    world_seed: int = 0


class Assets:
    """The world (data + tokenizer), the initial policy saved once, and the datasets."""

    def __init__(self, root: Path, s: Settings) -> None:
        from saferlhf.data.world import World, generate_world
        from saferlhf.models.loading import load_tokenizer
        from saferlhf.models.tiny import tiny_llama

        self.root, self.s = root, s
        n_sft = max(s.batch * (s.steps + 1), 64)
        generate_world(root / "world", seed=s.world_seed, n_sft=n_sft, n_pairs_train=n_sft, n_pairs_eval=16,
                       n_prompts_train=max(s.rl_prompts, s.ppo_batch) * (s.rl_iters + 1), n_eval_benign=8,
                       n_eval_harmful=8)
        self.world_dir = root / "world"
        self.world = World.load(self.world_dir)
        self.tok = load_tokenizer(self.world_dir / "tokenizer")
        self.policy_dir = root / "policy"
        policy = tiny_llama(self.tok, hidden_size=s.hidden, num_layers=s.layers, num_heads=s.heads,
                            max_position_embeddings=max(256, s.max_length + 64), seed=0)
        policy.save_pretrained(self.policy_dir)
        self.tok.save_pretrained(self.policy_dir)
        self.sft_path = self.world_dir / "sft.jsonl"
        self.pairs_path = self.world_dir / "pairs_train.jsonl"
        self.prompts_path = self.world_dir / "prompts_train.jsonl"
        self.sft_records = [json.loads(x) for x in self.sft_path.read_text().splitlines()]
        pairs = [json.loads(x) for x in self.pairs_path.read_text().splitlines()]
        self.pairs = [p for p in pairs if p["response_0"] != p["response_1"]]
        self.prompts = [json.loads(x)["prompt"] for x in self.prompts_path.read_text().splitlines()]

    def policy(self):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(self.policy_dir, dtype=torch.float32)

    # the same records in TRL's conversational formats
    def trl_sft(self):
        from datasets import Dataset

        return Dataset.from_list([{"prompt": [{"role": "user", "content": r["prompt"]}],
                                   "completion": [{"role": "assistant", "content": r["response"]}]}
                                  for r in self.sft_records])

    def trl_pairs(self):
        from datasets import Dataset

        rows = []
        for p in self.pairs:
            better = p["better_response_id"]
            rows.append({"prompt": [{"role": "user", "content": p["prompt"]}],
                         "chosen": [{"role": "assistant", "content": p[f"response_{better}"]}],
                         "rejected": [{"role": "assistant", "content": p[f"response_{1 - better}"]}]})
        return Dataset.from_list(rows)

    def trl_prompts(self):
        from datasets import Dataset

        return Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in self.prompts])

    # the world's oracles as TRL-style reward functions fn(prompts, completions, **kw)
    def helpfulness(self, prompts, completions, **kw) -> list[float]:
        return [float(self.world.helpfulness(_text(p), _text(c))) for p, c in zip(prompts, completions)]

    def harm(self, prompts, completions, **kw) -> list[float]:
        return [float(self.world.harm(_text(p), _text(c))) for p, c in zip(prompts, completions)]

    def neg_harm(self, prompts, completions, **kw) -> list[float]:
        return [-x for x in self.harm(prompts, completions)]


def _text(x: Any) -> str:
    """The text of a prompt / completion in plain or conversational form."""
    if isinstance(x, str):
        return x
    if isinstance(x, list) and x and isinstance(x[-1], dict):
        return str(x[-1].get("content", ""))
    return str(x)


def _trl_common(s: Settings, out: Path, steps: int) -> dict[str, Any]:
    return dict(output_dir=str(out), max_steps=steps, per_device_train_batch_size=s.batch,
                learning_rate=s.lr, lr_scheduler_type="cosine", warmup_steps=s.warmup_ratio,
                max_grad_norm=s.max_grad_norm, weight_decay=0.0, bf16=False, fp16=False,
                gradient_checkpointing=False, use_cpu=True, report_to="none", save_strategy="no",
                logging_steps=10, disable_tqdm=True, seed=0, dataloader_num_workers=0)


def _sl_common(s: Settings, out: Path, steps: int) -> dict[str, Any]:
    return dict(out=str(out), max_steps=steps, batch_size=s.batch, max_length=s.max_length, lr=s.lr,
                lr_scheduler="cosine", warmup_ratio=s.warmup_ratio, max_grad_norm=s.max_grad_norm,
                weight_decay=0.0, precision="fp32", seed=0, progress=False, log_every=10)


def _fields(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kwargs.items() if k in names}


# ----------------------------------------------------------------------------- runs
# Each run builds its trainer (untimed), trains with a StepProbe, and returns the probe's figures.

Run = Callable[[Assets, Path], dict[str, float]]


def _train(trainer, model, warm: int) -> dict[str, Any]:
    with StepProbe() as probe:
        probe.track(model)
        with quiet():
            out = trainer.train()
    res: dict[str, Any] = probe.throughput(warm)
    history = out.get("history") if isinstance(out, dict) else None
    if history:  # saferlhf RL: the phases of the timed iterations (wall seconds)
        timed = history[warm:]
        res["phase_s"] = {k: statistics.median(h[k] for h in timed)
                          for k in ("time/generate", "time/score", "time/train") if k in timed[0]}
    return res


def sft_saferlhf(a: Assets, out: Path) -> dict[str, float]:
    from saferlhf import SFTTrainer
    from saferlhf.config.stages import SFTConfig

    with quiet():
        tr = SFTTrainer(SFTConfig(**_sl_common(a.s, out, a.s.steps)), model=a.policy(), processing_class=a.tok,
                        train_dataset=str(a.sft_path))
    return _train(tr, tr.model, a.s.warm_steps)


def sft_trl(a: Assets, out: Path) -> dict[str, float]:
    from trl import SFTConfig, SFTTrainer

    with quiet():
        args = SFTConfig(**_trl_common(a.s, out, a.s.steps), max_length=a.s.max_length, packing=False)
        tr = SFTTrainer(model=a.policy(), args=args, train_dataset=a.trl_sft(), processing_class=a.tok)
    return _train(tr, tr.model, a.s.warm_steps)


def reward_saferlhf(a: Assets, out: Path) -> dict[str, float]:
    from saferlhf import ScoreModelTrainer
    from saferlhf.config.stages import RewardModelConfig

    with quiet():
        tr = ScoreModelTrainer(RewardModelConfig(**_sl_common(a.s, out, a.s.steps)), model=str(a.policy_dir),
                               processing_class=a.tok, train_dataset=str(a.pairs_path), kind="reward")
    return _train(tr, tr.model, a.s.warm_steps)


def reward_trl(a: Assets, out: Path) -> dict[str, float]:
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    with quiet():
        model = AutoModelForSequenceClassification.from_pretrained(a.policy_dir, num_labels=1, dtype=torch.float32)
        model.config.pad_token_id = a.tok.pad_token_id
        args = RewardConfig(**_trl_common(a.s, out, a.s.steps), max_length=a.s.max_length)
        tr = RewardTrainer(model=model, args=args, train_dataset=a.trl_pairs(), processing_class=a.tok)
    return _train(tr, tr.model, a.s.warm_steps)


def dpo_available() -> str | None:
    """None when saferlhf has the DPO trainer and config the row needs, else the reason."""
    try:
        from saferlhf.config.stages import DPOConfig  # noqa: F401
        from saferlhf.trainers.preference import DPOTrainer  # noqa: F401
    except ImportError as e:
        return f"saferlhf has no DPOTrainer / DPOConfig yet ({str(e).split(' (')[0]})"
    return None


def dpo_saferlhf(a: Assets, out: Path) -> dict[str, float]:
    from saferlhf.config.stages import DPOConfig
    from saferlhf.trainers.preference import DPOTrainer

    # the paths fill whichever of these the config requires; the objects below are what trains
    kw = {**_sl_common(a.s, out, a.s.steps), "model": str(a.policy_dir), "data": str(a.pairs_path),
          "beta": a.s.beta, "algo": "dpo"}
    with quiet():
        tr = DPOTrainer(DPOConfig(**_fields(DPOConfig, kw)), model=a.policy(), ref_model=None,
                        processing_class=a.tok, train_dataset=str(a.pairs_path))
    return _train(tr, tr.model, a.s.warm_steps)


def dpo_trl(a: Assets, out: Path) -> dict[str, float]:
    from trl import DPOConfig, DPOTrainer

    with quiet():
        args = DPOConfig(**_trl_common(a.s, out, a.s.steps), max_length=a.s.max_length, beta=a.s.beta)
        tr = DPOTrainer(model=a.policy(), ref_model=a.policy(), args=args, train_dataset=a.trl_pairs(),
                        processing_class=a.tok)
    return _train(tr, tr.model, a.s.warm_steps)


def _rl_config(a: Assets, out: Path, **kw):
    from saferlhf.config.stages import RLConfig

    base = dict(out=str(out), iterations=a.s.rl_iters, max_new_tokens=a.s.new_tokens, ppo_epochs=1,
                temperature=1.0, top_p=1.0, kl_coeff=a.s.beta, actor_lr=a.s.rl_lr, max_grad_norm=a.s.max_grad_norm,
                precision="fp32", progress=False, log_every=10, seed=0)
    return RLConfig(**{**base, **kw})


def grpo_saferlhf(a: Assets, out: Path) -> dict[str, float]:
    from saferlhf import SafeRLTrainer

    n = a.s.rl_prompts * a.s.group
    cfg = _rl_config(a, out, algo="grpo_lag", rollout_batch_size=a.s.rl_prompts, n_samples=a.s.group,
                     mini_batch_size=n)
    with quiet():
        tr = SafeRLTrainer(cfg, policy=str(a.policy_dir), processing_class=a.tok, reward_model=a.helpfulness,
                           cost_model=a.harm, train_dataset=str(a.prompts_path))
    res = _train(tr, tr.policy, a.s.rl_warm)
    return res


def grpo_trl(a: Assets, out: Path) -> dict[str, float]:
    from trl import GRPOConfig, GRPOTrainer

    n = a.s.rl_prompts * a.s.group
    with quiet():
        args = GRPOConfig(**{**_trl_common(a.s, out, a.s.rl_iters), "per_device_train_batch_size": n,
                             "learning_rate": a.s.rl_lr, "lr_scheduler_type": "constant", "warmup_steps": 0},
                          num_generations=a.s.group, max_completion_length=a.s.new_tokens, beta=a.s.beta,
                          num_iterations=1, temperature=1.0, top_p=1.0, reward_weights=[1.0, 1.0])
        tr = GRPOTrainer(model=str(a.policy_dir), reward_funcs=[a.helpfulness, a.neg_harm], args=args,
                         train_dataset=a.trl_prompts(), processing_class=a.tok)
    return _train(tr, tr.model, a.s.rl_warm)


def _score_model_dir(a: Assets, name: str, seed: int) -> Path:
    from saferlhf.models.score_model import ScoreModel
    from saferlhf.models.tiny import tiny_llama

    path = a.root / name
    if not path.exists():
        backbone = tiny_llama(a.tok, hidden_size=a.s.hidden, num_layers=a.s.layers, num_heads=a.s.heads,
                              max_position_embeddings=max(256, a.s.max_length + 64), seed=seed)
        ScoreModel.from_backbone(backbone, score_type=name, dtype=None).save_pretrained(path, tokenizer=a.tok)
    return path


def _ppo(algo: str) -> Run:
    def run(a: Assets, out: Path) -> dict[str, float]:
        from saferlhf import SafeRLTrainer

        cfg = _rl_config(a, out, algo=algo, rollout_batch_size=a.s.ppo_batch, n_samples=1,
                         mini_batch_size=a.s.ppo_batch, critic_mode="separate",
                         reward_model=str(_score_model_dir(a, "reward", 1)),
                         cost_model=str(_score_model_dir(a, "cost", 2)) if algo != "ppo" else None)
        with quiet():
            tr = SafeRLTrainer(cfg, policy=str(a.policy_dir), processing_class=a.tok,
                               train_dataset=str(a.prompts_path))
        return _train(tr, tr.policy, a.s.rl_warm)

    return run


@contextlib.contextmanager
def saferlhf_before():
    """saferlhf as it ran before the speed work of issue 19, for a before/after in one run:
    per-parameter AdamW (``foreach=False``) and a separate no-grad forward for the old
    log-probs of every rollout batch."""
    from saferlhf.trainers import common, loop, rl

    def per_parameter(params, **kw):
        opt = common.make_optimizer(params, **kw)
        for g in opt.param_groups:
            g["foreach"] = False
        return opt

    saved = (loop.make_optimizer, rl.make_optimizer, rl.reuses_training_logprobs)
    loop.make_optimizer = rl.make_optimizer = per_parameter
    rl.reuses_training_logprobs = lambda *a, **k: False
    try:
        yield
    finally:
        loop.make_optimizer, rl.make_optimizer, rl.reuses_training_logprobs = saved


def _before(fn: Run) -> Run:
    def run(a: Assets, out: Path) -> dict[str, float]:
        with saferlhf_before():
            return fn(a, out)

    return run


# ----------------------------------------------------------------------------- no-framework ceilings


class _Cosine:
    def __init__(self, opt, s: Settings, steps: int) -> None:
        from transformers import get_scheduler

        self.sched = get_scheduler("cosine", optimizer=opt, num_warmup_steps=round(s.warmup_ratio * steps),
                                   num_training_steps=steps)

    def step(self) -> None:
        self.sched.step()


def _raw_loop(model, batches: list[dict], loss_fn, s: Settings, steps: int, warm: int) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=s.lr, weight_decay=0.0, fused=True)
    sched = _Cosine(opt, s, steps)
    model.train()
    with StepProbe() as probe:
        probe.track(model)
        for i in range(steps):
            loss = loss_fn(model, batches[i % len(batches)])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
    return probe.throughput(warm)


def _shuffled(n: int, batch: int, steps: int) -> list[list[int]]:
    import numpy as np

    order = np.random.default_rng(0).permutation(n).tolist()
    return [[order[(i * batch + j) % n] for j in range(batch)] for i in range(steps)]


def sft_raw(a: Assets, out: Path) -> dict[str, float]:
    from saferlhf.data import load_sft
    from saferlhf.data.templates import template_for
    from saferlhf.processing.sft import collate_sft, encode_sft_examples

    with quiet():
        ex = encode_sft_examples(load_sft(str(a.sft_path)).records, a.tok, template_for(a.tok), a.s.max_length)
    batches = [collate_sft([ex[i] for i in idx], a.tok.pad_token_id) for idx in _shuffled(len(ex), a.s.batch, a.s.steps)]

    def loss(model, b):
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss

    return _raw_loop(a.policy(), batches, loss, a.s, a.s.steps, a.s.warm_steps)


def _pair_batches(a: Assets) -> tuple[list, list[dict]]:
    from saferlhf.data.collate import pad_sequences
    from saferlhf.data.templates import template_for
    from saferlhf.trainers.common import encode_prompt_responses

    t = template_for(a.tok)
    prompts = [p["prompt"] for p in a.pairs]
    ch = [p[f"response_{p['better_response_id']}"] for p in a.pairs]
    rj = [p[f"response_{1 - p['better_response_id']}"] for p in a.pairs]
    enc = encode_prompt_responses(a.tok, t, prompts + prompts, ch + rj, max_length=a.s.max_length)
    n = len(a.pairs)
    batches = []
    for idx in _shuffled(n, a.s.batch, a.s.steps):
        seqs = [enc[i][0] for i in idx] + [enc[n + i][0] for i in idx]
        plens = [enc[i][1] for i in idx] + [enc[n + i][1] for i in idx]
        ids, mask = pad_sequences(seqs, a.tok.pad_token_id, side="right")
        resp = torch.zeros_like(mask)
        for r, (s_, p) in enumerate(zip(seqs, plens)):
            resp[r, p:len(s_)] = 1
        batches.append({"input_ids": ids, "attention_mask": mask, "response_mask": resp})
    return enc, batches


def reward_raw(a: Assets, out: Path) -> dict[str, float]:
    from transformers import AutoModelForSequenceClassification

    _, batches = _pair_batches(a)
    model = AutoModelForSequenceClassification.from_pretrained(a.policy_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = a.tok.pad_token_id

    def loss(m, b):
        r = m(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, 0]
        B = len(r) // 2
        return -torch.nn.functional.logsigmoid(r[:B] - r[B:]).mean()

    return _raw_loop(model, batches, loss, a.s, a.s.steps, a.s.warm_steps)


def _seq_logps(model, b) -> torch.Tensor:
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, b["input_ids"][:, 1:, None])[..., 0]
    return (lp * b["response_mask"][:, 1:]).sum(-1)


def dpo_raw(a: Assets, out: Path) -> dict[str, float]:
    _, batches = _pair_batches(a)
    ref = a.policy().eval().requires_grad_(False)
    beta = a.s.beta

    def loss(m, b):
        with torch.no_grad():
            r = _seq_logps(ref, b)
        p = _seq_logps(m, b)
        B = len(p) // 2
        return -torch.nn.functional.logsigmoid(beta * ((p[:B] - r[:B]) - (p[B:] - r[B:]))).mean()

    return _raw_loop(a.policy(), batches, loss, a.s, a.s.steps, a.s.warm_steps)


def grpo_raw(a: Assets, out: Path) -> dict[str, float]:
    """generate (KV cache) → rewards → reference forward → policy forward/backward/AdamW, one
    step per iteration: the least work a GRPO iteration with β > 0 can do."""
    s = a.s
    policy, ref = a.policy(), a.policy().eval().requires_grad_(False)
    params = list(policy.parameters())
    opt = torch.optim.AdamW(params, lr=s.rl_lr, weight_decay=0.0, fused=True)
    a.tok.padding_side = "left"
    try:
        with StepProbe() as probe:
            probe.track(policy)
            for it in range(s.rl_iters):
                ps = a.prompts[it * s.rl_prompts:(it + 1) * s.rl_prompts]
                texts = [a.tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                                   add_generation_prompt=True) for p in ps]
                enc = a.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                policy.eval()
                with torch.no_grad():
                    seq = policy.generate(**enc, do_sample=True, max_new_tokens=s.new_tokens, top_p=1.0, top_k=0,
                                          num_return_sequences=s.group, pad_token_id=a.tok.pad_token_id)
                P = enc["input_ids"].shape[1]
                comp = seq[:, P:]
                is_eos = comp == a.tok.eos_token_id
                first = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((len(comp),), comp.shape[1]))
                cmask = (torch.arange(comp.shape[1])[None] <= first[:, None]).long()
                done = [a.tok.decode(c[m.bool()], skip_special_tokens=True) for c, m in zip(comp, cmask)]
                rep = [p for p in ps for _ in range(s.group)]
                r = torch.tensor(a.helpfulness(rep, done)) - torch.tensor(a.harm(rep, done))
                g = r.view(-1, s.group)
                adv = ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + 1e-4)).view(-1)
                am = torch.cat([enc["attention_mask"].repeat_interleave(s.group, 0), cmask], 1)
                pos = (am.cumsum(-1) - 1).clamp(min=0)
                with torch.no_grad():
                    ref_lp = torch.log_softmax(ref(input_ids=seq, attention_mask=am, position_ids=pos)
                                               .logits[:, P - 1:-1].float(), -1).gather(-1, comp[..., None])[..., 0]
                policy.train()
                lp = torch.log_softmax(policy(input_ids=seq, attention_mask=am, position_ids=pos)
                                       .logits[:, P - 1:-1].float(), -1).gather(-1, comp[..., None])[..., 0]
                ratio = torch.exp(lp - lp.detach())
                k3 = torch.exp(ref_lp - lp) - (ref_lp - lp) - 1
                per_tok = -ratio * adv[:, None] + s.beta * k3
                loss = (per_tok * cmask).sum() / cmask.sum()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
    finally:
        a.tok.padding_side = "right"
    return probe.throughput(s.rl_warm)


# ----------------------------------------------------------------------------- driver


def _summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure(a: Assets, runs: dict[str, Run], reps: int, key: str, log) -> dict[str, dict[str, Any]]:
    """Warm-up run of each (memory probed), then ``reps`` alternating timed runs of each."""
    res: dict[str, dict[str, Any]] = {name: {"runs": []} for name in runs}
    k = 0
    for name, fn in runs.items():
        with tempfile.TemporaryDirectory(dir=a.root) as d, MemoryProbe() as mem:
            fn(a, Path(d))
        res[name].update(mem.result())
    for rep in range(reps):
        for name, fn in runs.items():
            with tempfile.TemporaryDirectory(dir=a.root) as d:
                r = fn(a, Path(d))
            res[name]["runs"].append(r)
            k += 1
            log(f"  rep {rep + 1} {name:<9} {r[key]:9.2f} {key} (CPU time: {r['cpu_' + key]:9.2f}; "
                f"{r['tokens_per_step']:.0f} tokens/step)")
    for name in runs:
        for field in ("tok_s", "it_s", "s_per_it", "cpu_tok_s", "cpu_it_s", "cpu_s_per_it", "tokens_per_step"):
            res[name][field] = _summary([r[field] for r in res[name]["runs"]])
        phases = [r["phase_s"] for r in res[name]["runs"] if "phase_s" in r]
        if phases:
            res[name]["phase_s"] = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    return res


def run_benchmark(s: Settings, out: Path, stages: tuple[str, ...] = STAGES, log=print,
                  before: bool = False) -> dict[str, Any]:
    """Run the rows of ``stages``, write ``out/vs_trl.json`` and ``out/vs_trl.md``, return the
    result (torch's thread count and ``SAFERLHF_NUM_THREADS`` are restored afterwards)."""
    threads, env = torch.get_num_threads(), os.environ.get("SAFERLHF_NUM_THREADS")
    try:
        return _run_benchmark(s, out, stages, log, before)
    finally:
        torch.set_num_threads(threads)
        if env is None:
            os.environ.pop("SAFERLHF_NUM_THREADS", None)
        else:
            os.environ["SAFERLHF_NUM_THREADS"] = env


def _run_benchmark(s: Settings, out: Path, stages: tuple[str, ...], log, before: bool) -> dict[str, Any]:
    import transformers
    import trl

    torch.set_num_threads(s.threads)
    # saferlhf's loops pick 1 thread for small CPU models on their own; hold them to the same count
    os.environ["SAFERLHF_NUM_THREADS"] = str(s.threads)
    torch.manual_seed(0)
    _silence_libraries()
    t_start, cpu_start = time.perf_counter(), time.process_time()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"rows": rows, "ppo_lag_over_ppo": None, "threads": torch.get_num_threads(),
                              "load_average_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        a = Assets(Path(d), s)
        result["model"] = {"layers": s.layers, "hidden": s.hidden, "heads": s.heads, "vocab": len(a.tok),
                           "params_m": round(sum(p.numel() for p in a.policy().parameters()) / 1e6, 2)}
        plan = {
            "sft": ("tok/s", "tok_s", {"saferlhf": sft_saferlhf, "trl": sft_trl, "raw": sft_raw}),
            "reward": ("tok/s", "tok_s", {"saferlhf": reward_saferlhf, "trl": reward_trl, "raw": reward_raw}),
            "dpo": ("tok/s", "tok_s", {"saferlhf": dpo_saferlhf, "trl": dpo_trl, "raw": dpo_raw}),
            "grpo": ("it/s", "it_s", {"saferlhf": grpo_saferlhf, "trl": grpo_trl, "raw": grpo_raw}),
        }
        for stage in ("sft", "reward", "dpo", "grpo"):
            if stage not in stages:
                continue
            unit, key, runs = plan[stage]
            if before and stage in ("sft", "reward", "grpo"):
                runs = {**runs, "saferlhf_before": _before(runs["saferlhf"])}
            if stage == "dpo" and (reason := dpo_available()) is not None:
                rows.append({"stage": "dpo", "saferlhf": None, "trl": None, "unit": unit, "ratio": None,
                             "skipped": reason})
                log(f"[dpo] skipped: {reason}")
                continue
            log(f"[{stage}]")
            t0 = time.perf_counter()
            m = measure(a, runs, s.reps, key, log)
            sl, tr, raw = m["saferlhf"], m["trl"], m["raw"]
            row = {"stage": stage, "saferlhf": sl[key]["median"], "trl": tr[key]["median"], "unit": unit,
                   "ratio": sl[key]["median"] / tr[key]["median"], "raw": raw[key]["median"],
                   "saferlhf_over_raw": sl[key]["median"] / raw[key]["median"],
                   "trl_over_raw": tr[key]["median"] / raw[key]["median"],
                   "cpu_time": {n: m[n]["cpu_" + key]["median"] for n in m},
                   "ratio_cpu_time": sl["cpu_" + key]["median"] / tr["cpu_" + key]["median"]}
            if "saferlhf_before" in m:
                row["saferlhf_before"] = m["saferlhf_before"][key]["median"]
                row["ratio_before"] = row["saferlhf_before"] / tr[key]["median"]
                row["speedup_over_before"] = sl[key]["median"] / row["saferlhf_before"]
                row["speedup_over_before_cpu_time"] = sl["cpu_" + key]["median"] / m["saferlhf_before"]["cpu_" + key]["median"]
            if key == "it_s":
                row["tok_s"] = {n: m[n]["tok_s"]["median"] for n in m}
                row["s_per_it"] = {n: m[n]["s_per_it"]["median"] for n in m}
            row["detail"] = {n: {k: v for k, v in m[n].items() if k != "runs"} for n in m}
            row["seconds"] = round(time.perf_counter() - t0, 1)
            rows.append(row)
            log(f"[{stage}] saferlhf {row['saferlhf']:.2f} / trl {row['trl']:.2f} {unit} = {row['ratio']:.3f}; "
                f"raw {row['raw']:.2f} ({row['seconds']} s)")
        if "ppo" in stages:
            log("[ppo_lag vs ppo]")
            t0 = time.perf_counter()
            ppo_runs = {"ppo": _ppo("ppo"), "ppo_lag": _ppo("ppo_lag")}
            if before:
                ppo_runs.update(ppo_before=_before(_ppo("ppo")), ppo_lag_before=_before(_ppo("ppo_lag")))
            m = measure(a, ppo_runs, s.reps, "s_per_it", log)
            if before:
                result["ppo_lag_over_ppo_before"] = (m["ppo_lag_before"]["s_per_it"]["median"]
                                                     / m["ppo_before"]["s_per_it"]["median"])
            result["ppo_lag_over_ppo"] = m["ppo_lag"]["s_per_it"]["median"] / m["ppo"]["s_per_it"]["median"]
            result["ppo_lag_over_ppo_cpu_time"] = (m["ppo_lag"]["cpu_s_per_it"]["median"]
                                                   / m["ppo"]["cpu_s_per_it"]["median"])
            result["ppo"] = {n: {k: v for k, v in m[n].items() if k != "runs"} for n in m}
            result["ppo"]["seconds"] = round(time.perf_counter() - t0, 1)
            log(f"[ppo] ppo_lag / ppo iteration time = {result['ppo_lag_over_ppo']:.3f}")
    result["settings"] = dataclasses.asdict(s)
    result["versions"] = {"torch": torch.__version__, "transformers": transformers.__version__,
                          "trl": trl.__version__, "python": platform.python_version()}
    result["load_average"] = os.getloadavg()
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["cpu_seconds"] = round(time.process_time() - cpu_start, 1)  # ≈ the wall time on an idle machine
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(out / "vs_trl.json", json.dumps(result, indent=2) + "\n")
    _atomic_write(out / "vs_trl.md", markdown(result))
    return result


def _silence_libraries() -> None:
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [
        f"saferlhf vs TRL {r['versions']['trl']} — Llama {s['layers']} layers / {s['hidden']} hidden / vocab "
        f"{r['model']['vocab']} ({r['model']['params_m']} M), fp32, {r['threads']} thread(s), batch {s['batch']}, "
        f"max_length {s['max_length']}; GRPO: {s['rl_prompts']} prompts × {s['group']} × {s['new_tokens']} new "
        f"tokens; median of {s['reps']} alternating runs (min–max); 1-minute load average "
        f"{r['load_average_start'][0]:.1f} at the start, {r['load_average'][0]:.1f} at the end (2 cores); "
        f"{r['seconds']:.0f} s in all.",
        "",
        "| stage | unit | saferlhf | TRL | saferlhf / TRL | raw fwd+bwd+AdamW | saferlhf / raw | TRL / raw "
        "| saferlhf / TRL in CPU time | peak RSS MiB (saferlhf / TRL) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        if row.get("skipped"):
            lines.append(f"| {row['stage']} | {row['unit']} | — | — | — | — | — | — | — | skipped: {row['skipped']} |")
            continue
        key = "tok_s" if row["unit"] == "tok/s" else "it_s"
        d = row["detail"]
        lines.append(f"| {row['stage']} | {row['unit']} | {_rng(d, 'saferlhf', key, row)} | {_rng(d, 'trl', key, row)} "
                     f"| {row['ratio']:.2f} | {_rng(d, 'raw', key, row)} | {row['saferlhf_over_raw']:.2f} | {row['trl_over_raw']:.2f} "
                     f"| {row['ratio_cpu_time']:.2f} "
                     f"| {d['saferlhf'].get('peak_rss_mib', 0):.0f} / {d['trl'].get('peak_rss_mib', 0):.0f} |")
    before = [row for row in r["rows"] if "saferlhf_before" in row]
    if before:
        lines += ["", "Before / after this issue's speed work (the same run, alternating):", "",
                  "| stage | unit | saferlhf before | saferlhf now | speed-up | speed-up in CPU time "
                  "| before / TRL | now / TRL |", "|---|---|---|---|---|---|---|---|"]
        for row in before:
            p_ = _prec(row)
            lines.append(f"| {row['stage']} | {row['unit']} | {row['saferlhf_before']:.{p_}f} | {row['saferlhf']:.{p_}f} "
                         f"| {row['speedup_over_before']:.3f} | {row['speedup_over_before_cpu_time']:.3f} "
                         f"| {row['ratio_before']:.2f} | {row['ratio']:.2f} |")
    if r.get("ppo_lag_over_ppo") is not None:
        p = r["ppo"]
        lines += ["", f"saferlhf PPO-Lag (separate critics) / PPO iteration time: **{r['ppo_lag_over_ppo']:.2f}** "
                      f"(PPO {p['ppo']['s_per_it']['median']:.3f} s, PPO-Lag {p['ppo_lag']['s_per_it']['median']:.3f} s "
                      f"per iteration; rollout batch {s['ppo_batch']}, {s['new_tokens']} new tokens; goal ≤ 1.3; "
                      f"in CPU time {r['ppo_lag_over_ppo_cpu_time']:.2f})."]
        if "ppo_lag_over_ppo_before" in r:
            lines.append(f"Before this issue's changes: {r['ppo_lag_over_ppo_before']:.2f}.")
        phases = {n: p[n].get("phase_s") for n in ("ppo", "ppo_lag")}
        if all(phases.values()):
            lines += ["", "| phase (median s) | PPO | PPO-Lag | ratio |", "|---|---|---|---|"]
            for k in phases["ppo"]:
                a_, b_ = phases["ppo"][k], phases["ppo_lag"][k]
                lines.append(f"| {k.split('/')[1]} | {a_:.3f} | {b_:.3f} | {b_ / a_:.2f} |")
    return "\n".join(lines) + "\n"


def _rng(detail: dict[str, Any], name: str, key: str, row: dict[str, Any]) -> str:
    """``median (min–max)`` of one framework's runs."""
    v, p = detail[name][key], _prec(row)
    return f"{v['median']:.{p}f} ({v['min']:.{p}f}–{v['max']:.{p}f})"


def _prec(row: dict[str, Any]) -> int:
    return 0 if row["unit"] == "tok/s" else 3


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/bench", help="folder for vs_trl.json and vs_trl.md")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one timed step per row (the smoke test)")
    ap.add_argument("--before", action="store_true",
                    help="also run saferlhf as it was before issue 19's speed work (per-parameter AdamW, a "
                         "separate old-log-prob forward), alternating with the rest: a before/after in one run")
    for f in dataclasses.fields(Settings):
        ap.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = ap.parse_args(argv)
    s = Settings()
    if args.quick:
        s = Settings(layers=1, hidden=64, heads=2, batch=4, max_length=64, steps=3, warm_steps=1, rl_prompts=2,
                     group=2, new_tokens=4, rl_iters=3, rl_warm=1, ppo_batch=4, reps=1)
    s = dataclasses.replace(s, **{f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                                  if getattr(args, f.name) is not None})
    stages = tuple(x for x in args.stages.split(",") if x)
    unknown = set(stages) - set(STAGES)
    if unknown:
        ap.error(f"unknown stage(s) {sorted(unknown)}; choose from {STAGES}")
    return run_benchmark(s, Path(args.out), stages, log=lambda m: print(m, flush=True), before=args.before)


if __name__ == "__main__":
    main(sys.argv[1:])
