"""``saferlhf plan``: per-GPU memory of every model of a PPO-family run under a strategy.

Reads an RL recipe (the keys ``saferlhf rl`` reads, plus its ``plan:`` section) and prints,
for each model (policy, reference, critics, reward and cost models), its parameters,
gradients, optimiser states and training activations per GPU, then the generation KV cache,
the sharded-weights working set and the peak of each phase, and whether the peak fits.

The model (bytes per parameter, ``precision: bf16`` or ``auto``, i.e. mixed precision on GPUs)::

    trained weights      2 B (bf16 working copy)        fp32 precision: 4 B
    gradients            2 B per trainable parameter   fp32: 4 B
    optimiser (AdamW)   12 B per trainable parameter   fp32 master + m + v   (fp32: 8 B, m + v)
    frozen weights       2 B (bf16)

A LoRA policy's base weights are frozen (2 B); its reference is the policy with the adapter
disabled (no second copy). Sharding divides by the number of GPUs ``G``::

                 weights  grads  optimiser  frozen models
    ddp             1       1       1           1
    zero2           1       G       G           1
    fsdp / zero3    G       G       G           G
    zero3-offload   host    host    host        host       (the GPU holds the working set only)

Activations of one training micro-batch of ``b`` sequences of ``S = prompt + response`` tokens
(bf16, SDPA / flash attention, so no S² score term; Korthikanti et al. 2022, eq. 2 without
the 5as/h term)::

    per layer           34 · S · b · h   bytes
    no checkpointing    L · 34 · S · b · h
    checkpointing       L · 2 · S · b · h  (saved layer inputs)  +  34 · S · b · h  (one layer recomputed)
    policy logits       b · S · V · 2  (bf16)  +  b · R · V · 8  (fp32 logits and log-softmax)

Models are trained one after another, so the training phase holds the largest of them.
Generation holds the KV cache of all rollout rows at once (HF ``generate`` takes them in one
batch): ``rows · S · L · 2 · kv_heads · head_dim · 2`` bytes. A colocated vLLM engine adds a
full bf16 copy of the policy. Sharded strategies gather one decoder layer at a time (plus the
prefetched next one) and the embedding / LM head: ``2 B · (2 · layer + max(embed, head))``.
A fixed ``overhead_gb`` (CUDA context, allocator fragmentation) is added to every phase.

These are estimates: they ignore temporary buffers of fused kernels, communication buckets
and allocator caching beyond the fixed overhead.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saferlhf.config import ConfigError

GB = 1e9


# ----------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class Arch:
    """What the estimator needs of a transformer (text part; a VLM adds ``vision_params``)."""

    name: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    intermediate: int
    tied: bool = False
    qkv_bias: bool = False
    head_dim: int | None = None
    vision_params: int = 0

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def layer_params(self) -> int:
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        attn = h * q + 2 * h * kv + q * h + ((q + 2 * kv) if self.qkv_bias else 0)
        return attn + 3 * h * i + 2 * h

    def embed_params(self) -> int:
        return self.vocab * self.hidden

    def lm_params(self) -> int:
        """A causal LM: embedding, layers, final norm, LM head (unless tied), vision part."""
        head = 0 if self.tied else self.embed_params()
        return self.embed_params() + self.layers * self.layer_params() + self.hidden + head + self.vision_params

    def score_params(self, heads: int = 1) -> int:
        """A score model / critic: the backbone without the LM head plus a linear score head."""
        return (self.embed_params() + self.layers * self.layer_params() + self.hidden
                + self.hidden * heads + heads + self.vision_params)

    def lora_params(self, r: int) -> int:
        """LoRA A and B of rank ``r`` on every linear layer of every decoder layer."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return r * per_layer * self.layers

    def kv_bytes_per_token(self) -> int:
        return 2 * self.layers * self.kv_heads * self.hd * 2


# Public configs of the models the recipes use (config.json of each hub repo); nothing can be
# downloaded on these machines. Vision parts: CLIP ViT-L/14-336 + 2-layer projector (LLaVA-1.5),
# the 32-block ViT + patch merger of Qwen2-VL.
KNOWN_ARCHS: dict[str, Arch] = {
    "qwen2.5-0.5b": Arch("qwen2.5-0.5b", 896, 24, 14, 2, 151936, 4864, tied=True, qkv_bias=True),
    "qwen2.5-7b": Arch("qwen2.5-7b", 3584, 28, 28, 4, 152064, 18944, qkv_bias=True),
    "llama-3.1-8b": Arch("llama-3.1-8b", 4096, 32, 32, 8, 128256, 14336),
    "llava-1.5-7b": Arch("llava-1.5-7b", 4096, 32, 32, 32, 32064, 11008, vision_params=324_600_000),
    "qwen2-vl-7b": Arch("qwen2-vl-7b", 3584, 28, 28, 4, 152064, 18944, qkv_bias=True,
                        vision_params=675_800_000),
}


def _norm_name(s: str) -> str:
    return re.sub(r"[\s_]+", "-", s.strip().lower())


def _vision_params(vc: dict[str, Any]) -> int:
    h = int(vc.get("hidden_size", vc.get("embed_dim", 0)) or 0)
    n = int(vc.get("num_hidden_layers", vc.get("depth", 0)) or 0)
    i = int(vc.get("intermediate_size", 0) or (h * float(vc.get("mlp_ratio", 4)) if h else 0))
    return int(n * (4 * h * h + 2 * h * i))


def arch_from_hf_config(cfg: dict[str, Any], name: str = "local") -> Arch:
    """An :class:`Arch` from a ``config.json`` (text models, or VLMs with ``text_config``)."""
    text = cfg.get("text_config") or cfg
    try:
        hidden = int(text["hidden_size"])
        heads = int(text["num_attention_heads"])
        arch = Arch(
            name=name,
            hidden=hidden,
            layers=int(text["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            vocab=int(text.get("vocab_size") or cfg["vocab_size"]),
            intermediate=int(text["intermediate_size"]),
            tied=bool(cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", False))),
            qkv_bias=bool(text.get("attention_bias", False)) or text.get("model_type", "").startswith("qwen2"),
            head_dim=text.get("head_dim"),
            vision_params=_vision_params(cfg["vision_config"]) if cfg.get("vision_config") else 0,
        )
    except KeyError as e:
        raise ConfigError(f"model config {name}: missing key {e} (need hidden_size, num_hidden_layers, "
                          "num_attention_heads, vocab_size, intermediate_size)") from None
    return arch


def resolve_arch(spec: str, *, what: str = "model") -> Arch:
    """``spec``: a known architecture name (:data:`KNOWN_ARCHS`), a folder holding a
    ``config.json``, or a path whose name contains a known architecture name
    (``checkpoints/qwen2.5-7b-sft``)."""
    p = Path(spec)
    if (p / "config.json").is_file():
        return arch_from_hf_config(json.loads((p / "config.json").read_text()), name=str(p))
    if p.is_file() and p.suffix == ".json":
        return arch_from_hf_config(json.loads(p.read_text()), name=str(p))
    key = _norm_name(spec)
    if key in KNOWN_ARCHS:
        return KNOWN_ARCHS[key]
    hits = [k for k in KNOWN_ARCHS if k in key]
    if hits:
        return KNOWN_ARCHS[max(hits, key=len)]
    raise ConfigError(
        f"plan: cannot size the {what} {spec!r}: not a folder with config.json and no known architecture "
        f"in its name. Set plan.model (or --model) to one of {', '.join(KNOWN_ARCHS)} or a model folder")


# ----------------------------------------------------------------------------- the estimate
@dataclass
class ModelMemory:
    """Per-GPU bytes of one model (``host``: bytes per GPU held in host memory instead)."""

    role: str
    arch: str
    params: int
    trainable: int
    weights: float = 0.0
    grads: float = 0.0
    optimizer: float = 0.0
    activations: float = 0.0
    host: float = 0.0
    note: str = ""

    @property
    def persistent(self) -> float:
        return self.weights + self.grads + self.optimizer


@dataclass
class Plan:
    strategy: str
    gpus: int
    gpu_mem_gb: float
    models: list[ModelMemory]
    kv_cache: float
    vllm_engine: float
    working_set: float
    overhead: float
    phases: dict[str, float] = field(default_factory=dict)
    assumptions: dict[str, Any] = field(default_factory=dict)

    @property
    def persistent(self) -> float:
        return sum(m.persistent for m in self.models)

    @property
    def peak(self) -> float:
        return max(self.phases.values())

    @property
    def fits(self) -> bool:
        return self.peak <= self.gpu_mem_gb * GB

    @property
    def host_per_node(self) -> float:
        return sum(m.host for m in self.models) * min(self.gpus, 8)

    def to_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy, "gpus": self.gpus, "gpu_mem_gb": self.gpu_mem_gb,
            "models": [{**m.__dict__, "persistent": m.persistent} for m in self.models],
            "kv_cache": self.kv_cache, "vllm_engine": self.vllm_engine, "working_set": self.working_set,
            "overhead": self.overhead, "phases": self.phases, "peak": self.peak, "fits": self.fits,
            "host_per_node": self.host_per_node, "assumptions": self.assumptions,
        }


def activation_bytes(arch: Arch, *, batch: int, seq: int, checkpointing: bool,
                     logits_response: int | None = None) -> float:
    """Training activations of one micro-batch (module docstring). ``logits_response``: the
    response length R when the model has an LM head whose log-probs are taken (the policy)."""
    per_layer = 34 * seq * batch * arch.hidden
    if checkpointing:
        act = arch.layers * 2 * seq * batch * arch.hidden + per_layer
    else:
        act = arch.layers * per_layer
    if logits_response is not None:
        act += batch * seq * arch.vocab * 2 + batch * logits_response * arch.vocab * 8
    return float(act)


_SHARD = {  # divisor of weights, grads, optimiser, frozen weights ("host": 0 on the GPU)
    "ddp": (False, False, False, False),
    "zero2": (False, True, True, False),
    "fsdp": (True, True, True, True),
    "zero3": (True, True, True, True),
}


def model_memory(role: str, arch: Arch, *, params: int, trainable: int, strategy: str, gpus: int,
                 fp32: bool, activations: float = 0.0, note: str = "") -> ModelMemory:
    """Bytes per GPU of one model under ``strategy`` (trainable = 0: a frozen bf16 model)."""
    frozen = params - trainable
    if trainable:
        w_b, g_b, o_b = (4, 4, 8) if fp32 else (2, 2, 12)
    else:
        w_b, g_b, o_b = 2, 0, 0
    weights = trainable * w_b + frozen * 2
    grads, optim = trainable * g_b, trainable * o_b
    m = ModelMemory(role, arch.name, params, trainable, activations=activations, note=note)
    if strategy == "zero3-offload":
        m.host = (weights + grads + optim) / gpus
        return m
    sw, sg, so, sf = _SHARD[strategy]
    if trainable:
        m.weights = weights / (gpus if sw else 1)
    else:
        m.weights = weights / (gpus if sf else 1)
    m.grads = grads / (gpus if sg else 1)
    m.optimizer = optim / (gpus if so else 1)
    return m


def _policy_memories(policy: Arch, *, lora_r: int, frozen_vision: bool, act_kw: dict, response_length: int,
                     **kw) -> list[ModelMemory]:
    """The policy (full or LoRA) and its reference (a frozen copy, or nothing: the disabled adapter)."""
    n_pol = policy.lm_params()
    if lora_r > 0:
        t_pol = policy.lora_params(lora_r)
        n_pol += t_pol
    else:
        t_pol = n_pol - (policy.vision_params if frozen_vision else 0)
    act_pol = activation_bytes(policy, logits_response=response_length, **act_kw)
    out = [model_memory("policy", policy, params=n_pol, trainable=t_pol, activations=act_pol,
                        note=f"LoRA r={lora_r}" if lora_r else "full", **kw)]
    if lora_r > 0:
        out.append(ModelMemory("reference", policy.name, 0, 0, note="the policy with its adapter disabled"))
    else:
        out.append(model_memory("reference", policy, params=policy.lm_params(), trainable=0, note="frozen bf16", **kw))
    return out


def _critic_memories(arch: Arch, *, algo: str, critic_mode: str, lora_r: int, frozen_vision: bool, act_kw: dict,
                     **kw) -> list[ModelMemory]:
    """One critic per stream of the algorithm (or one shared critic with a head per stream)."""
    streams = {"ppo": ["reward"], "ppo_lag": ["reward", "cost"], "reward_shaping": ["reward"], "grpo_lag": []}[algo]
    if critic_mode == "shared" and len(streams) > 1:
        streams = ["shared"]
    out = []
    for stream in streams:
        heads = 2 if stream == "shared" else 1
        n_c = arch.score_params(heads)
        if lora_r > 0:
            t_c = arch.lora_params(lora_r) + arch.hidden * heads + heads
            n_c += t_c - arch.hidden * heads - heads
        else:
            t_c = n_c - (arch.vision_params if frozen_vision else 0)
        act_c = activation_bytes(arch, **act_kw)
        name = "critic (reward+cost heads)" if stream == "shared" else f"{stream} critic"
        out.append(model_memory(name, arch, params=n_c, trainable=t_c, activations=act_c,
                                note=f"LoRA r={lora_r}" if lora_r else "full", **kw))
    return out


def plan_memory(
    *,
    policy: Arch,
    score: Arch | None = None,
    algo: str = "ppo_lag",
    strategy: str = "zero3",
    gpus: int = 8,
    gpu_mem_gb: float = 80.0,
    lora_r: int = 0,
    critic_lora_r: int = 0,
    critic_mode: str = "separate",
    critic_init: str = "score_model",
    precision: str = "bf16",
    rollout_rows: int = 64,
    micro_batch: int = 8,
    prompt_length: int = 512,
    response_length: int = 256,
    gradient_checkpointing: bool = True,
    actor_frozen_vision: bool = False,
    critic_frozen_vision: bool = False,
    backend: str = "hf",
    overhead_gb: float = 3.0,
) -> Plan:
    """The per-GPU memory plan of a PPO-family run (module docstring for the model)."""
    from saferlhf.distributed import STRATEGIES

    if strategy not in STRATEGIES:
        raise ConfigError(f"plan: unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    if gpus < 1 or gpu_mem_gb <= 0:
        raise ConfigError("plan: gpus must be >= 1 and gpu_mem > 0")
    score = score or policy
    fp32 = precision == "fp32"
    seq = prompt_length + response_length
    kw = dict(strategy=strategy, gpus=gpus, fp32=fp32)
    act_kw = dict(batch=micro_batch, seq=seq, checkpointing=gradient_checkpointing)

    models = _policy_memories(policy, lora_r=lora_r, frozen_vision=actor_frozen_vision, act_kw=act_kw,
                              response_length=response_length, **kw)
    models += _critic_memories(policy if critic_init == "policy" else score, algo=algo, critic_mode=critic_mode,
                               lora_r=critic_lora_r, frozen_vision=critic_frozen_vision, act_kw=act_kw, **kw)

    # frozen scorers
    scorers = ["reward model"] + (["cost model"] if algo != "ppo" else [])
    for name in scorers:
        models.append(model_memory(name, score, params=score.score_params(1), trainable=0,
                                   note="frozen bf16", **kw))

    kv = float(rollout_rows * seq * policy.kv_bytes_per_token())
    engine = float(2 * policy.lm_params()) if backend == "vllm" else 0.0
    sharded = strategy in {"fsdp", "zero3", "zero3-offload"}
    biggest = max(policy, score, key=lambda a: a.layer_params())
    working = (2.0 * (2 * biggest.layer_params() + max(biggest.embed_params(), policy.embed_params()))
               if sharded else 0.0)
    overhead = overhead_gb * GB
    base = sum(m.persistent for m in models) + working + overhead
    phases = {
        "generation": base + kv + engine,
        "training": base + max((m.activations for m in models), default=0.0) + engine,
    }
    return Plan(
        strategy=strategy, gpus=gpus, gpu_mem_gb=gpu_mem_gb, models=models, kv_cache=kv, vllm_engine=engine,
        working_set=working, overhead=overhead, phases=phases,
        assumptions=dict(algo=algo, precision=precision, rollout_rows=rollout_rows, micro_batch=micro_batch,
                         prompt_length=prompt_length, response_length=response_length,
                         gradient_checkpointing=gradient_checkpointing, backend=backend,
                         policy=policy.name, score_model=score.name),
    )


# ----------------------------------------------------------------------------- CLI
def _gb(x: float) -> str:
    return f"{x / GB:7.2f}"


def format_plan(plan: Plan) -> str:
    a = plan.assumptions
    lines = [
        f"memory plan: {a['algo']} with {plan.strategy} on {plan.gpus} GPU(s) x {plan.gpu_mem_gb:g} GB "
        f"(precision {a['precision']}, policy {a['policy']}, scorers {a['score_model']})",
        f"  rollout rows per GPU {a['rollout_rows']}, training micro-batch {a['micro_batch']}, "
        f"sequence {a['prompt_length']} prompt + {a['response_length']} response tokens, "
        f"gradient checkpointing {'on' if a['gradient_checkpointing'] else 'off'}, backend {a['backend']}",
        "",
        f"  {'model':<28}{'params':>9}{'trainable':>11}{'weights':>9}{'grads':>8}{'optim':>8}"
        f"{'activ.':>8}{'host':>8}  (GB per GPU)",
    ]
    for m in plan.models:
        lines.append(
            f"  {m.role:<28}{m.params / 1e9:8.2f}B{m.trainable / 1e9:10.3f}B{_gb(m.weights):>9}{_gb(m.grads):>8}"
            f"{_gb(m.optimizer):>8}{_gb(m.activations):>8}{_gb(m.host):>8}  {m.note}")
    lines += [
        "",
        f"  persistent (weights + grads + optimiser)  {_gb(plan.persistent)} GB",
        f"  sharded-weights working set               {_gb(plan.working_set)} GB",
        f"  generation KV cache                       {_gb(plan.kv_cache)} GB",
    ]
    if plan.vllm_engine:
        lines.append(f"  vLLM engine (bf16 policy copy)            {_gb(plan.vllm_engine)} GB")
    lines.append(f"  fixed overhead (CUDA context, fragments)  {_gb(plan.overhead)} GB")
    for name, v in plan.phases.items():
        lines.append(f"  peak in {name:<33} {_gb(v)} GB")
    if plan.host_per_node:
        lines.append(f"  host memory per node (offloaded states)   {_gb(plan.host_per_node)} GB")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"\nverdict: {verdict}: peak {plan.peak / GB:.1f} GB of {plan.gpu_mem_gb:g} GB per GPU "
                 f"({plan.strategy}, {plan.gpus} GPUs)")
    return "\n".join(lines)


def plan_from_config(cfg) -> Plan:
    """The plan of a :class:`saferlhf.config.stages.PlanConfig` (an RL recipe + plan keys)."""
    p = cfg.plan
    model = cfg.model or p.model or cfg.policy
    policy = resolve_arch(model, what="policy")
    score_spec = p.score_model or (cfg.reward_model if _is_model_dir(cfg.reward_model) else None)
    score = resolve_arch(score_spec, what="reward model") if score_spec else policy
    strategy = cfg.strategy or p.strategy
    gpus = cfg.gpus or p.gpus
    gpu_mem = cfg.gpu_mem or p.gpu_mem
    rows = cfg.rollout_batch_size * cfg.n_samples
    micro = p.micro_batch_size or cfg.mini_batch_size
    precision = "bf16" if cfg.precision == "auto" else cfg.precision
    return plan_memory(
        policy=policy, score=score, algo=cfg.algo, strategy=strategy, gpus=gpus, gpu_mem_gb=gpu_mem,
        lora_r=cfg.lora_r, critic_lora_r=cfg.critic_lora_r or p.critic_lora_r, critic_mode=cfg.critic_mode,
        critic_init=cfg.critic_init, precision=precision, rollout_rows=rows, micro_batch=micro,
        prompt_length=p.prompt_length, response_length=cfg.max_new_tokens,
        gradient_checkpointing=cfg.gradient_checkpointing,
        actor_frozen_vision="vision_tower" in cfg.actor_freeze,
        critic_frozen_vision="vision_tower" in cfg.critic_freeze,
        backend=cfg.backend, overhead_gb=p.overhead_gb,
    )


def _is_model_dir(path: str | None) -> bool:
    return bool(path) and (Path(path) / "config.json").is_file()


def run_plan(cfg) -> int:
    plan = plan_from_config(cfg)
    print(format_plan(plan))
    if cfg.json_out:
        target = Path(cfg.json_out)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(json.dumps(plan.to_dict(), indent=2))
        tmp.replace(target)
    return 0


__all__ = [
    "KNOWN_ARCHS",
    "Arch",
    "ModelMemory",
    "Plan",
    "activation_bytes",
    "arch_from_hf_config",
    "format_plan",
    "model_memory",
    "plan_from_config",
    "plan_memory",
    "resolve_arch",
    "run_plan",
]
