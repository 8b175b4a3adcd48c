"""Sharded training pieces the trainers share: launch detection, DeepSpeed per-model configs,
collective checkpoints and gathered final saves.

Strategies (``configs/accelerate/<name>.yaml``)::

    ddp            full replicas everywhere
    fsdp           FSDP2 full shard, one unit per decoder layer
    zero2          DeepSpeed ZeRO-2: optimiser states and gradients sharded
    zero3          DeepSpeed ZeRO-3: parameters, gradients and optimiser states sharded
    zero3-offload  ZeRO-3 with parameters and optimiser states in host memory

RL under DeepSpeed. ``Accelerator.prepare`` refuses several models at once under DeepSpeed
(one engine per ``prepare`` call), so RL builds one :class:`accelerate.utils.DeepSpeedPlugin`
per model (:func:`rl_deepspeed_plugins`): trained models (policy, critics) get a training
engine of the chosen stage; frozen models (reference, reward and cost models) get an
inference config (ZeRO-3 sharded under zero3*, plain replicas under zero2).
:func:`make_rl_accelerator` reads the strategy that ``accelerate launch`` put in the
environment and builds ``Accelerator(deepspeed_plugins=...)``; the trainer then prepares each
model on its own with :func:`prepare_models` (which selects the model's plugin first) and
shards the frozen ones with :func:`shard_frozen_models`. ``accelerator.backward`` drives only
the engine prepared last (and steps it too), so the trainers step each trained engine through
:func:`backward_step` (``engine.backward`` / ``engine.step``) instead. FSDP2 also takes one
model per ``prepare`` call, so :func:`prepare_models` prepares one model at a time there too.
Under ZeRO-3 the no-grad forwards (rollouts, old / reference log-probs) run under ``no_grad``
rather than ``inference_mode`` (:func:`inference_context`).

CPU launches. ``accelerate launch`` with ``ddp.yaml`` / ``fsdp.yaml`` on a machine without a
GPU starts the processes with torchrun but accelerate then sees no device backend and
configures each process as a separate single-process run (``DistributedType.NO``), each
training alone and all writing the same files. :func:`cpu_multiprocess_launch` detects that
case so :func:`saferlhf.trainers.common.make_accelerator` asks for ``cpu=True``, which makes
accelerate use gloo (``MULTI_CPU``, data parallel). accelerate 1.15/1.16 enables FSDP only for
accelerator device types (its ``AcceleratorState`` list has no ``MULTI_CPU``), so on CPU the
FSDP config runs as gloo data parallelism; docs/scale.md says so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

STRATEGIES = ("ddp", "fsdp", "zero2", "zero3", "zero3-offload")
Strategy = Literal["ddp", "fsdp", "zero2", "zero3", "zero3-offload"]

# The roles of a PPO-Lag run and whether each is trained.
RL_MODEL_ROLES: dict[str, bool] = {
    "policy": True,
    "reward_critic": True,
    "cost_critic": True,
    "reference": False,
    "reward_model": False,
    "cost_model": False,
}


def accelerate_config_path(strategy: str) -> Path:
    """``configs/accelerate/<strategy>.yaml`` of this checkout."""
    if strategy not in STRATEGIES:
        from saferlhf.config import ConfigError

        raise ConfigError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    return Path(__file__).resolve().parents[2] / "configs" / "accelerate" / f"{strategy}.yaml"


def strategy_of_accelerate_config(data: Mapping[str, Any]) -> Strategy:
    """The strategy an accelerate config file (its parsed YAML) describes."""
    kind = str(data.get("distributed_type", "NO")).upper()
    if kind == "FSDP":
        return "fsdp"
    if kind == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        stage = int(ds.get("zero_stage", 2))
        offload = any(str(ds.get(k, "none")).lower() not in {"none", ""}
                      for k in ("offload_optimizer_device", "offload_param_device"))
        if stage == 3:
            return "zero3-offload" if offload else "zero3"
        return "zero2"
    return "ddp"


# ----------------------------------------------------------------------------- launch detection
def cpu_multiprocess_launch(env: Mapping[str, str] | None = None, *, cuda_available: bool | None = None) -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1) on a machine without
    CUDA: accelerate must then be told ``cpu=True`` to join them with gloo (module docstring)."""
    env = os.environ if env is None else env
    try:
        world = int(env.get("WORLD_SIZE", "1"))
    except ValueError:
        world = 1
    if world <= 1:
        return False
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    return not cuda_available


# ----------------------------------------------------------------------------- DeepSpeed configs
def deepspeed_config(
    strategy: str,
    *,
    train: bool,
    micro_batch_size: int | str = "auto",
    grad_accum: int = 1,
    gradient_clipping: float = 1.0,
    precision: str = "bf16",
) -> dict[str, Any]:
    """The DeepSpeed config dict of one model under ``strategy`` (zero2 | zero3 | zero3-offload).

    train=False: an inference engine (no optimiser): ZeRO-3 shards the frozen weights under
    zero3*; under zero2 frozen models are plain bf16 replicas (stage 0).
    """
    if strategy not in {"zero2", "zero3", "zero3-offload"}:
        raise ValueError(f"deepspeed_config: strategy {strategy!r} is not a DeepSpeed strategy")
    stage = 3 if strategy.startswith("zero3") else 2
    if not train and stage == 2:
        stage = 0
    zero: dict[str, Any] = {"stage": stage}
    if stage == 3:
        zero.update({
            "overlap_comm": True,
            "contiguous_gradients": True,
            "reduce_bucket_size": "auto",
            "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto",
            "stage3_gather_16bit_weights_on_model_save": True,
        })
        if strategy == "zero3-offload":
            zero["offload_param"] = {"device": "cpu", "pin_memory": True}
            if train:
                zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    elif stage == 2:
        zero.update({"overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": "auto"})
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum if train else 1,
        "zero_optimization": zero,
        "bf16": {"enabled": precision in {"bf16", "auto"}},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train:
        cfg["gradient_clipping"] = float(gradient_clipping)
        if strategy == "zero3-offload":
            # The trainers pass torch's AdamW; DeepSpeed refuses a client optimiser with an
            # offloaded optimiser unless told that is intended (its CPU Adam is faster, same update).
            cfg["zero_force_ds_cpu_optimizer"] = False
    return cfg


def rl_deepspeed_configs(
    strategy: str,
    *,
    roles: Mapping[str, bool] | None = None,
    micro_batch_size: int = 1,
    gradient_clipping: float = 1.0,
    precision: str = "bf16",
) -> dict[str, dict[str, Any]]:
    """One DeepSpeed config per RL model: ``{role: config}`` (trained roles first, the policy
    first of all, since accelerate activates the first plugin of the dict)."""
    roles = dict(RL_MODEL_ROLES if roles is None else roles)
    order = sorted(roles, key=lambda r: (not roles[r], r != "policy"))
    return {
        r: deepspeed_config(strategy, train=roles[r], micro_batch_size=micro_batch_size,
                            gradient_clipping=gradient_clipping, precision=precision)
        for r in order
    }


def rl_deepspeed_plugins(strategy: str, **kwargs) -> dict[str, Any]:
    """``{role: accelerate.utils.DeepSpeedPlugin}`` for ``Accelerator(deepspeed_plugins=...)``
    (building the plugins needs accelerate only; the Accelerator then needs deepspeed)."""
    from accelerate.utils import DeepSpeedPlugin

    # `accelerate launch --config_file zero3.yaml` exports ACCELERATE_CONFIG_DS_FIELDS (the
    # deepspeed keys of the yaml); a plugin given a config dict then refuses to build ("will be
    # ignored") because it assumes a user-written DeepSpeed json competes with the yaml. These
    # dicts are derived from that same yaml (stage, offload) and the trainer's own settings, so
    # the check does not apply: the variable is hidden while the plugins are built.
    saved = os.environ.pop("ACCELERATE_CONFIG_DS_FIELDS", None)
    try:
        return {role: DeepSpeedPlugin(hf_ds_config=cfg, zero3_init_flag=False)
                for role, cfg in rl_deepspeed_configs(strategy, **kwargs).items()}
    finally:
        if saved is not None:
            os.environ["ACCELERATE_CONFIG_DS_FIELDS"] = saved


def rl_model_roles(critics: tuple[str, ...] | list[str] = ("reward", "cost"), *,
                   uses_cost: bool = True) -> dict[str, bool]:
    """``{role: trained}`` of one RL run: ``policy``, one ``<name>_critic`` per critic (``reward``,
    ``cost`` or ``shared``), and the frozen ``reference``, ``reward_model`` and (when the
    algorithm reads costs) ``cost_model``."""
    roles = {"policy": True}
    roles.update({f"{c}_critic": True for c in critics})
    roles.update({"reference": False, "reward_model": False})
    if uses_cost:
        roles["cost_model"] = False
    return roles


def deepspeed_launch_strategy(env: Mapping[str, str] | None = None) -> Strategy | None:
    """The DeepSpeed strategy ``accelerate launch`` selected (zero2 | zero3 | zero3-offload),
    read from the variables it exports (``ACCELERATE_USE_DEEPSPEED``,
    ``ACCELERATE_DEEPSPEED_ZERO_STAGE``, the offload devices, or the stage inside
    ``ACCELERATE_DEEPSPEED_CONFIG_FILE``); ``None`` when the launch is not DeepSpeed."""
    env = os.environ if env is None else env
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() != "true":
        return None
    stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE")
    offload = [env.get("ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE", "none"),
               env.get("ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE", "none")]
    ds_file = env.get("ACCELERATE_DEEPSPEED_CONFIG_FILE")
    if ds_file and ds_file.lower() != "none":
        import json

        zero = json.loads(Path(ds_file).read_text()).get("zero_optimization", {})
        stage = zero.get("stage", stage)
        offload = [str((zero.get(k) or {}).get("device", "none")) for k in ("offload_optimizer", "offload_param")]
    data = {"distributed_type": "DEEPSPEED",
            "deepspeed_config": {"zero_stage": int(stage if stage not in (None, "") else 2),
                                 "offload_optimizer_device": offload[0], "offload_param_device": offload[1]}}
    return strategy_of_accelerate_config(data)


def deepspeed_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("deepspeed") is not None


def mixed_precision_of(precision: str = "auto") -> str:
    """accelerate's ``mixed_precision`` for a run's ``precision``: bf16 where the hardware has
    it under ``auto``, else ``no``."""
    import torch

    if precision == "auto":
        use_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return "bf16" if use_bf16 else "no"
    return {"fp32": "no", "bf16": "bf16"}[precision]


def make_accelerator(precision: str = "auto", *, grad_accum: int = 1, cpu: bool | None = None) -> Any:
    """An Accelerator with bf16 where the hardware has it (``precision='auto'``)."""
    from accelerate import Accelerator

    mixed = mixed_precision_of(precision)
    kwargs: dict[str, Any] = {"mixed_precision": mixed, "gradient_accumulation_steps": grad_accum}
    if cpu is None:
        # torchrun on a machine without GPUs: join the processes with gloo
        cpu = cpu_multiprocess_launch()
    if cpu:
        kwargs["cpu"] = True
    return Accelerator(**kwargs)


def make_rl_accelerator(precision: str = "auto", *, roles: Mapping[str, bool], micro_batch_size: int = 1,
                        max_grad_norm: float = 1.0, env: Mapping[str, str] | None = None) -> Any:
    """The RL trainer's Accelerator. Under a DeepSpeed launch: one plugin per role of ``roles``
    (:func:`rl_deepspeed_plugins`, the policy's active first), bf16 in every engine exactly when
    the run's mixed precision is bf16, the trainer's ``max_grad_norm`` as each trained engine's
    ``gradient_clipping``. Otherwise :func:`make_accelerator` (single
    process, DDP, FSDP, CPU gloo), unchanged."""
    strategy = deepspeed_launch_strategy(env)
    if strategy is None:
        return make_accelerator(precision)
    if not deepspeed_installed():
        from saferlhf.config import ConfigError

        raise ConfigError(f"the launch asks for DeepSpeed ({strategy}: ACCELERATE_USE_DEEPSPEED=true) but the "
                          "deepspeed package is not installed; install it with `pip install 'saferlhf[deepspeed]'`, "
                          "or launch with configs/accelerate/ddp.yaml or fsdp.yaml")
    from accelerate import Accelerator

    mixed = mixed_precision_of(precision)
    plugins = rl_deepspeed_plugins(strategy, roles=roles, micro_batch_size=micro_batch_size,
                                   gradient_clipping=max_grad_norm, precision="bf16" if mixed == "bf16" else "fp32")
    acc = Accelerator(mixed_precision=mixed, deepspeed_plugins=plugins)
    # Selecting a ZeRO-3 plugin registers its config with transformers, and from_pretrained then
    # builds models under deepspeed.zero.Init (partitioned at load). Registration is explicit
    # instead: the RL trainer loads each model inside partitioned_loading(role) (and never copies
    # a partitioned model); prepare_models selects each plugin again when building the engines.
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    return acc


# accelerate fills these ZeRO "auto" entries from ``model.config.hidden_size`` (the same formulas),
# which vision-language configs (LLaVA, Qwen2-VL) keep under ``text_config``: accelerate then
# refuses the model. They are resolved here from the text config before the engine is built.
HIDDEN_SIZE_AUTO_KEYS: dict[str, Callable[[int], int]] = {
    "reduce_bucket_size": lambda h: h * h,
    "stage3_prefetch_bucket_size": lambda h: int(0.9 * h * h),
    "stage3_param_persistence_threshold": lambda h: 10 * h,
}


def model_hidden_size(model: Any) -> int | None:
    """The hidden size of a model's (text) decoder: ``config.hidden_size``, else that of
    ``config.get_text_config()`` (VLMs), else the largest of ``config.hidden_sizes``."""
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    text = cfg.get_text_config() if callable(getattr(cfg, "get_text_config", None)) else cfg
    for c in (cfg, text):
        if isinstance(getattr(c, "hidden_size", None), int):
            return int(c.hidden_size)
    sizes = getattr(cfg, "hidden_sizes", None) or getattr(text, "hidden_sizes", None)
    return int(max(sizes)) if sizes else None


def resolve_hidden_size_auto(ds_config: dict[str, Any], model: Any, role: str = "model") -> dict[str, Any]:
    """Replace the hidden-size-based ``"auto"`` entries of a DeepSpeed config dict's
    ``zero_optimization`` (in place) with their values for ``model``; returns the dict."""
    zero = ds_config.get("zero_optimization") or {}
    auto = [k for k in HIDDEN_SIZE_AUTO_KEYS if zero.get(k) == "auto"]
    if not auto:
        return ds_config
    h = model_hidden_size(model)
    if h is None:
        from saferlhf.config import ConfigError

        raise ConfigError(f"DeepSpeed config of {role!r}: cannot fill {', '.join(auto)} = 'auto' (the model has no "
                          f"config.hidden_size, text_config.hidden_size or hidden_sizes); set them to integers")
    for k in auto:
        zero[k] = HIDDEN_SIZE_AUTO_KEYS[k](h)
    return ds_config


def _select_plugin_for(accelerator: Any, role: str, model: Any) -> None:
    """Make ``role``'s DeepSpeed plugin the active one, its ``auto`` sizes resolved for ``model``
    (anything with a ``config``) first, since selecting registers the config with transformers."""
    plugin = accelerator.state.deepspeed_plugins[role]
    ds = getattr(getattr(plugin, "hf_ds_config", None), "config", None)
    if isinstance(ds, dict):
        resolve_hidden_size_auto(ds, model, role)
    accelerator.state.select_deepspeed_plugin(role)


def _zero3_plugin(accelerator: Any, role: str) -> Any:
    """``role``'s DeepSpeed plugin when the run is DeepSpeed and that plugin is ZeRO-3, else None."""
    if not is_deepspeed(accelerator):
        return None
    plugin = (getattr(accelerator.state, "deepspeed_plugins", None) or {}).get(role)
    return plugin if plugin is not None and int(plugin.zero_stage) == 3 else None


def loads_partitioned(accelerator: Any) -> bool:
    """Whether models of this run can be built partitioned at load (the policy's plugin is ZeRO-3)."""
    return _zero3_plugin(accelerator, "policy") is not None


@contextlib.contextmanager
def partitioned_loading(accelerator: Any, role: str, model_dir: str | os.PathLike) -> Iterator[bool]:
    """While ``role``'s model is loaded inside this context, under a ZeRO-3 run: its plugin is
    registered with transformers, so ``from_pretrained`` builds the model under
    ``deepspeed.zero.Init`` and each rank holds only its shard from the start (a 7B model is
    never whole on one GPU, which is what the memory plan assumes). Yields whether it is on.

    zero.Init reads the config, so its hidden-size ``auto`` entries are resolved first from
    ``model_dir``'s config. Afterwards the registration is removed again: nothing else loads
    partitioned by accident (:func:`prepare_models` selects each plugin anew)."""
    if _zero3_plugin(accelerator, role) is None:
        yield False
        return
    from types import SimpleNamespace

    from transformers import AutoConfig
    from transformers.integrations import unset_hf_deepspeed_config

    _select_plugin_for(accelerator, role, SimpleNamespace(config=AutoConfig.from_pretrained(model_dir)))
    try:
        yield True
    finally:
        unset_hf_deepspeed_config()


def is_deepspeed(accelerator: Any) -> bool:
    return str(getattr(accelerator, "distributed_type", "")).endswith("DEEPSPEED")


def _one_model_per_prepare(accelerator: Any) -> bool:
    """DeepSpeed (one engine per call) and FSDP2 ("Only one model is supported when using
    FSDP2") take one model per ``prepare`` call."""
    return is_deepspeed(accelerator) or str(getattr(accelerator, "distributed_type", "")).endswith("FSDP")


def prepare_models(accelerator: Any, models: Mapping[str, tuple[Any, Any]]) -> dict[str, tuple[Any, Any]]:
    """Prepare ``{role: (model, optimizer or None)}``; returns ``{role: (prepared model,
    prepared optimizer or None)}``.

    Under DeepSpeed each model is prepared on its own after selecting its plugin
    (``accelerator.state.select_deepspeed_plugin(role)``), and the first role's plugin is
    selected again at the end (the policy's: what ``accelerator.state.deepspeed_plugin`` and
    transformers' ZeRO-3 detection then describe). Under FSDP each model (with its optimiser) is
    prepared on its own. Otherwise (single process, DDP, CPU gloo) all in one call, in the
    order given."""
    out: dict[str, tuple[Any, Any]] = {}
    if _one_model_per_prepare(accelerator):
        plugins = getattr(accelerator.state, "deepspeed_plugins", None) if is_deepspeed(accelerator) else None
        for role, (model, opt) in models.items():
            if plugins:
                if role not in plugins:
                    raise KeyError(f"prepare_models: no DeepSpeed plugin for {role!r} (plugins: {', '.join(plugins)})")
                _select_plugin_for(accelerator, role, model)
            if opt is None:
                out[role] = (accelerator.prepare(model), None)
            else:
                m, o = accelerator.prepare(model, opt)
                out[role] = (m, o)
        if plugins:
            accelerator.state.select_deepspeed_plugin(next(iter(plugins)))
        return out
    flat: list[Any] = []
    for model, opt in models.values():
        flat.append(model)
        if opt is not None:
            flat.append(opt)
    prepared = list(accelerator.prepare(*flat)) if len(flat) > 1 else [accelerator.prepare(*flat)]
    for role, (_, opt) in models.items():
        m = prepared.pop(0)
        o = prepared.pop(0) if opt is not None else None
        out[role] = (m, o)
    return out


def shard_frozen_models(accelerator: Any, models: Mapping[str, Any]) -> dict[str, Any]:
    """Partition frozen models (``{role: nn.Module}``; ``None`` entries skipped) over the
    processes as ZeRO-3 inference engines when the run is DeepSpeed with a stage-3 plugin for
    that role; returns ``{role: engine}`` (empty otherwise: frozen models stay plain modules on
    the device, in the dtype they were loaded in).

    The module itself is partitioned in place: ZeRO-3 gathers its weights in forward hooks, so
    callers keep calling the same module object. The engines hold no trainable state, so they
    are taken out of ``accelerator._models``: ``save_state`` then checkpoints only the trained
    engines (frozen models are rebuilt from their sources on resume)."""
    if not is_deepspeed(accelerator):
        return {}
    plugins = getattr(accelerator.state, "deepspeed_plugins", None) or {}
    engines: dict[str, Any] = {}
    for role, module in models.items():
        if module is None or _zero3_plugin(accelerator, role) is None:
            continue
        _select_plugin_for(accelerator, role, module)
        engine = accelerator.prepare(module)
        if engine in accelerator._models:
            accelerator._models.remove(engine)
        engines[role] = engine
    if plugins:
        accelerator.state.select_deepspeed_plugin(next(iter(plugins)))
    return engines


def backward_step(accelerator: Any, model: Any, optimizer: Any, loss: Any, *, max_grad_norm: float = 0.0) -> Any:
    """One backward + optimiser step of ``model``; returns the gradient norm before clipping
    (``None`` when not clipping, or when the engine did not compute it).

    A DeepSpeed engine does both itself (``engine.backward`` then ``engine.step``; its clipping
    is the config's ``gradient_clipping``): ``accelerator.backward`` would drive the engine
    prepared last, whatever ``loss`` belongs to. Otherwise: zero the gradients, accelerate's
    backward, clipping at ``max_grad_norm`` (> 0), ``optimizer.step()`` — zeroing first, so
    gradients another model's loss left on shared parameters never reach this step."""
    if is_deepspeed(accelerator) and hasattr(model, "backward") and hasattr(model, "step"):
        model.backward(loss)
        model.step()
        if max_grad_norm and max_grad_norm > 0 and hasattr(model, "get_global_grad_norm"):
            return model.get_global_grad_norm()
        return None
    optimizer.zero_grad(set_to_none=True)
    accelerator.backward(loss)
    norm = None
    if max_grad_norm and max_grad_norm > 0:
        norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    optimizer.step()
    return norm


def inference_context() -> Any:
    """``torch.inference_mode()``, or ``torch.no_grad()`` while a ZeRO-3 config is active
    (transformers' ``is_deepspeed_zero3_enabled``, which :func:`prepare_models` leaves set to
    the policy's plugin).

    Under ZeRO-3 a forward gathers the partitioned weights into buffers DeepSpeed keeps and
    reuses; gathered inside inference mode they become inference tensors, and the next
    training forward fails ("Inference tensors cannot be saved for backward"; measured with 2
    ZeRO-3 ranks on CPU: rollouts and old log-probs under inference mode, then the PPO update).
    ``no_grad`` computes the same numbers."""
    import torch

    try:
        from transformers.integrations import is_deepspeed_zero3_enabled
    except ImportError:  # pragma: no cover - transformers is a dependency
        return torch.inference_mode()
    return torch.no_grad() if is_deepspeed_zero3_enabled() else torch.inference_mode()


# ----------------------------------------------------------------------------- ZeRO-3 weights
def is_zero3_partitioned(param: Any) -> bool:
    """A parameter DeepSpeed ZeRO-3 has partitioned (it carries ``ds_id``; its local data is a shard)."""
    return hasattr(param, "ds_id")


def gathered_parameters(params: Iterable[Any]) -> contextlib.AbstractContextManager:
    """A context in which the ZeRO-3-partitioned ``params`` hold their full values on every
    rank (``deepspeed.zero.GatheredParameters``, read-only: changes made inside are dropped);
    a no-op for ordinary parameters. Collective under ZeRO-3: every rank must enter it."""
    part = [p for p in params if is_zero3_partitioned(p)]
    if not part:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(part, modifier_rank=None)


def iter_full_weights(model: Any) -> Iterator[tuple[str, Any]]:
    """``(name, tensor)`` for every entry of ``model.state_dict()`` with its full value, one
    module at a time.

    Under ZeRO-3 each module's own parameters are gathered only while the caller consumes
    them, so the peak is one module's full weights, not the model's (a 7B policy synced into a
    colocated vLLM engine would otherwise need a second full copy on every GPU). The caller
    must copy each tensor before asking for the next. Collective under ZeRO-3: every rank must
    consume the whole iterator."""
    for prefix, module in model.named_modules():
        own = list(module.named_parameters(recurse=False))
        buffers = [(n, b) for n, b in module.named_buffers(recurse=False)
                   if b is not None and n not in module._non_persistent_buffers_set]
        if not own and not buffers:
            continue
        head = f"{prefix}." if prefix else ""
        with gathered_parameters([p for _, p in own]):
            for name, tensor in (*own, *buffers):
                yield head + name, tensor.detach()


# ----------------------------------------------------------------------------- saving
def gathered_state_dict(accelerator: Any, model: Any) -> dict[str, Any]:
    """The full state dict of a prepared model, gathered from every shard (FSDP / ZeRO-3).

    Collective: every process must call it. Only the main process's copy is complete under
    FSDP full-state gathering (others may be empty)."""
    return accelerator.get_state_dict(model)


def is_sharded(accelerator: Any) -> bool:
    """Parameters are sharded across processes (FSDP, or DeepSpeed ZeRO-3)."""
    kind = str(getattr(accelerator, "distributed_type", ""))
    if kind.endswith("FSDP"):
        return True
    if kind.endswith("DEEPSPEED"):
        plugin = getattr(accelerator.state, "deepspeed_plugin", None)
        return plugin is not None and int(getattr(plugin, "zero_stage", 0)) == 3
    return False


def full_state_dict_if_sharded(accelerator: Any, model: Any) -> dict[str, Any] | None:
    """The gathered full state dict when ``model`` is sharded, else ``None`` (the local module
    already holds full weights). Collective when sharded: call it on every process."""
    if not is_sharded(accelerator):
        return None
    return gathered_state_dict(accelerator, model)


def save_pretrained_gathered(
    accelerator: Any,
    model: Any,
    save: Callable[[Any, dict[str, Any]], None],
) -> None:
    """Gather ``model``'s weights on every process, then call ``save(unwrapped, state_dict)`` on
    the main process only (e.g. ``lambda m, sd: m.save_pretrained(tmp, state_dict=sd)``).
    Collective; the barrier at the end keeps ranks from reading a half-written folder."""
    state = gathered_state_dict(accelerator, model)
    if accelerator.is_main_process:
        save(accelerator.unwrap_model(model), state)
    accelerator.wait_for_everyone()


def save_state_collective(
    accelerator: Any,
    final: str | os.PathLike,
    *,
    write_extra: Callable[[Path], None] | None = None,
) -> Path:
    """``accelerator.save_state`` into ``final`` on every process (sharded optimiser and model
    states need every rank), atomically: all ranks write ``.tmp-<name>``; the main process
    then writes ``write_extra(tmp)`` (e.g. trainer counters), the ``COMPLETE`` marker, and
    renames. A run killed mid-save leaves only the temporary folder."""
    import time

    from saferlhf.io import COMPLETE_MARKER

    final = Path(final)
    tmp = final.with_name(f".tmp-{final.name}")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if write_extra is not None:
            write_extra(tmp)
        (tmp / COMPLETE_MARKER).write_text(time.strftime("%Y-%m-%dT%H:%M:%S"))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final
