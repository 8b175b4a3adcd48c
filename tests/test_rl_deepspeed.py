"""The RL trainer under a DeepSpeed launch of ``configs/accelerate/zero3.yaml``.

The environment is the one ``accelerate launch --config_file configs/accelerate/zero3.yaml``
exports (built with accelerate's own launch helpers). accelerate refuses several models in one
``prepare`` under DeepSpeed, so each trained model (policy, reward critic, cost critic) must go
through its own ``prepare`` with its own plugin selected, and be stepped by its own engine.

* ``test_each_trained_model_gets_its_own_prepare_and_plugin`` runs everywhere: a recording
  accelerator stands in for DeepSpeed's engine creation (it raises accelerate's
  multiple-models assertion exactly as accelerate does, so the former single ``prepare`` of
  policy + critics fails it).
* ``test_zero3_rl_trains_with_real_deepspeed_engines`` builds the real engines (one CPU
  process, gloo) when deepspeed is importable; skipped otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import rl_toy as T
import torch

from saferlhf.distributed import (
    accelerate_config_path,
    deepspeed_launch_strategy,
    rl_deepspeed_plugins,
    rl_model_roles,
)

HAS_DEEPSPEED = importlib.util.find_spec("deepspeed") is not None
ROOT = Path(__file__).resolve().parents[1]


def launch_env(strategy: str = "zero3", num_processes: int = 1) -> dict[str, str]:
    """The ACCELERATE_* variables ``accelerate launch --config_file <strategy>.yaml`` exports."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(accelerate_config_path(strategy)), "--num_processes", str(num_processes), "x.py"])
    args, defaults, _ = _validate_launch_command(args)
    # what accelerate's launch_command sets before calling its deepspeed launcher
    fields = list(defaults.deepspeed_config.keys()) if defaults else []
    if defaults and defaults.mixed_precision is not None:
        fields.append("mixed_precision")
    args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    _, env = prepare_deepspeed_cmd_env(args)
    return {k: v for k, v in env.items() if k.startswith("ACCELERATE_")}


def test_launch_env_names_the_strategy_and_plugins_build_under_it(monkeypatch):
    env = launch_env("zero3")
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and "zero_stage" in env["ACCELERATE_CONFIG_DS_FIELDS"]
    assert deepspeed_launch_strategy(env) == "zero3"
    assert deepspeed_launch_strategy(launch_env("zero2")) == "zero2"
    assert deepspeed_launch_strategy(launch_env("zero3-offload")) == "zero3-offload"
    assert deepspeed_launch_strategy({}) is None
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # accelerate's own check refuses config dicts under this environment ("will be ignored");
    # the per-role plugins must still build, and leave the variable as it was
    plugins = rl_deepspeed_plugins("zero3", roles=rl_model_roles(("reward", "cost")), micro_batch_size=4)
    assert os.environ["ACCELERATE_CONFIG_DS_FIELDS"] == env["ACCELERATE_CONFIG_DS_FIELDS"]
    assert list(plugins) == ["policy", "reward_critic", "cost_critic", "reference", "reward_model", "cost_model"]
    assert all(p.zero_stage == 3 and not p.zero3_init_flag for p in plugins.values())
    assert rl_model_roles(("shared",), uses_cost=True) == {"policy": True, "shared_critic": True, "reference": False,
                                                           "reward_model": False, "cost_model": False}


def test_deepspeed_launch_without_deepspeed_is_a_config_error(monkeypatch):
    import saferlhf.distributed as D
    from saferlhf.config import ConfigError

    monkeypatch.setattr(D, "deepspeed_installed", lambda: False)
    with pytest.raises(ConfigError, match=r"DeepSpeed \(zero3.*saferlhf\[deepspeed\]"):
        D.make_rl_accelerator("fp32", roles=rl_model_roles(), env=launch_env("zero3"))


# ----------------------------------------------------------------------------- recording accelerator


class FakeEngine(torch.nn.Module):
    """What a DeepSpeed engine looks like to the trainer: forward, ``backward``, ``step``."""

    def __init__(self, module: torch.nn.Module, optimizer, role: str) -> None:
        super().__init__()
        self.module, self.optimizer, self.role = module, optimizer, role
        self.backward_calls = self.step_calls = 0

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def backward(self, loss):
        self.backward_calls += 1
        loss.backward()

    def step(self):
        self.step_calls += 1
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def get_global_grad_norm(self):
        return 1.0


class RecordingDeepSpeedAccelerator:
    """A CPU Accelerator that reports DeepSpeed, holds the per-role plugins and records every
    ``prepare`` with the plugin active at the time; engine creation is replaced by FakeEngine."""

    def __init__(self, plugins) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        launch = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("ACCELERATE_")}
        try:  # the stand-in itself is a plain CPU accelerator
            self._real = Accelerator(cpu=True)
        finally:
            os.environ.update(launch)
        self.distributed_type = DistributedType.DEEPSPEED
        self.calls: list[tuple[str, list[str]]] = []
        self._models: list = []
        self.backward_calls = 0

        class State:
            deepspeed_plugins = plugins
            active = next(iter(plugins))

            def select_deepspeed_plugin(self, name):
                assert name in plugins, name
                State.active = name

            @property
            def deepspeed_plugin(self):
                return plugins[State.active]

        self.state = State()

    def __getattr__(self, name):
        return getattr(self._real, name)

    def prepare(self, *args):
        n_models = sum(isinstance(a, torch.nn.Module) for a in args)
        if n_models > 1:  # accelerate.Accelerator.prepare under DeepSpeed, verbatim
            raise AssertionError("You can't use same `Accelerator()` instance with multiple models when using DeepSpeed")
        role = self.state.active
        self.calls.append((role, [type(a).__name__ for a in args]))
        model = args[0]
        opt = args[1] if len(args) > 1 else None
        engine = FakeEngine(model, opt, role)
        self._models.append(engine)
        return (engine, opt) if opt is not None else engine

    def backward(self, loss, **kwargs):  # would drive only the engine prepared last
        self.backward_calls += 1
        loss.backward()

    def unwrap_model(self, model, *args, **kwargs):
        return model.module if isinstance(model, FakeEngine) else model


def test_each_trained_model_gets_its_own_prepare_and_plugin(tmp_path, monkeypatch):
    from saferlhf.trainers.rl import SafeRLTrainer

    policy_dir = T.make_policy_dir(tmp_path)
    prompts = T.make_prompts_file(tmp_path, n=8)
    cfg = T.toy_config(policy_dir, prompts, tmp_path / "out", iterations=1, rollout_batch_size=4,
                       mini_batch_size=2, max_new_tokens=4, max_grad_norm=1.0)
    for k, v in launch_env("zero3").items():
        monkeypatch.setenv(k, v)
    strategy = deepspeed_launch_strategy()
    plugins = rl_deepspeed_plugins(strategy, roles=rl_model_roles(("reward", "cost")),
                                   micro_batch_size=cfg.mini_batch_size, gradient_clipping=cfg.max_grad_norm)
    acc = RecordingDeepSpeedAccelerator(plugins)
    trainer = SafeRLTrainer(cfg, accelerator=acc, reward_fn=T.reward_fn, cost_fn=T.cost_fn)

    # One prepare per model, each under its own plugin; the trained ones with their optimiser.
    assert acc.calls == [("policy", ["LlamaForCausalLM", "AdamW"]),
                         ("reward_critic", ["ScoreModel", "AdamW"]),
                         ("cost_critic", ["ScoreModel", "AdamW"]),
                         ("reference", ["LlamaForCausalLM"])]  # the frozen copy: a ZeRO-3 inference engine
    assert acc.state.active == "policy"  # selected again after preparing
    assert plugins["policy"].deepspeed_config["gradient_clipping"] == 1.0
    assert set(trainer._frozen_engines) == {"reference"}
    assert all(e.role != "reference" for e in acc._models)  # frozen engines are not checkpointed
    assert isinstance(trainer.policy, FakeEngine) and trainer.policy.role == "policy"
    assert {n: c.role for n, c in trainer.critics.items()} == {"reward": "reward_critic", "cost": "cost_critic"}

    before = {n: [p.detach().clone() for p in m.parameters()]
              for n, m in [("policy", trainer.policy), *trainer.critics.items()]}
    stats = trainer.train_step()
    # Every trained engine ran its own backward and step, once per mini-batch (4 rows / 2);
    # accelerator.backward (which would drive the last engine only) was never used.
    for engine in [trainer.policy, *trainer.critics.values()]:
        assert (engine.backward_calls, engine.step_calls) == (2, 2), engine.role
    assert acc.backward_calls == 0
    for n, m in [("policy", trainer.policy), *trainer.critics.items()]:
        assert any(not torch.equal(a, b) for a, b in zip(m.parameters(), before[n])), n
    assert stats["train/grad_norm"] == 1.0  # the engine's norm is what gets logged


def test_shared_critic_is_one_engine(tmp_path, monkeypatch):
    from saferlhf.trainers.rl import SafeRLTrainer

    cfg = T.toy_config(T.make_policy_dir(tmp_path), T.make_prompts_file(tmp_path, n=8), tmp_path / "out",
                       iterations=1, rollout_batch_size=4, mini_batch_size=4, max_new_tokens=3,
                       critic_mode="shared")
    for k, v in launch_env("zero2").items():
        monkeypatch.setenv(k, v)
    plugins = rl_deepspeed_plugins(deepspeed_launch_strategy(), roles=rl_model_roles(("shared",)))
    acc = RecordingDeepSpeedAccelerator(plugins)
    trainer = SafeRLTrainer(cfg, accelerator=acc, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
    # zero2: frozen models stay plain replicas (nothing to shard), so no prepare for the reference
    assert [r for r, _ in acc.calls] == ["policy", "shared_critic"] and trainer._frozen_engines == {}
    trainer.train_step()
    assert trainer.critics["shared"].step_calls == 1 and trainer.policy.step_calls == 1


# ----------------------------------------------------------------------------- real DeepSpeed

_RUN = r"""
import json, sys, warnings
import torch
warnings.filterwarnings("ignore")
sys.path.insert(0, sys.argv[2])
import rl_toy as T
from pathlib import Path
from saferlhf.trainers.rl import SafeRLTrainer
root = Path(sys.argv[1])
out = root / sys.argv[5]
models = sys.argv[4] == "models"  # reward and cost models from folders, critics started from them
cfg = T.toy_config(root / "policy-llama-0", root / "prompts.jsonl", out, iterations=int(sys.argv[3]),
                   rollout_batch_size=4, mini_batch_size=2, max_new_tokens=4, save_every=1,
                   resume=sys.argv[4] == "resume",
                   **({"reward_model": str(root / "rm"), "cost_model": str(root / "cm"), "critic_init": "reward_model",
                       "cost_transform": "identity", "critic_lora_r": 4, "gradient_checkpointing": True, "lora_r": 4}
                      if models else {}))
# record whether each model read from a folder came back partitioned (ZeRO-3 zero.Init at load)
import saferlhf.trainers.rl as R
loaded = []
_causal_lm, _from_backbone = R.load_causal_lm, R.ScoreModel.from_backbone.__func__
def _rec(kind, m, params):
    loaded.append([kind, all(hasattr(p, "ds_id") for p in params)])
    return m
R.load_causal_lm = lambda *a, **k: (lambda m: _rec("causal_lm", m, m.parameters()))(_causal_lm(*a, **k))
R.ScoreModel.from_backbone = classmethod(
    lambda cls, *a, **k: (lambda m: _rec("critic", m, m.backbone.parameters()))(_from_backbone(cls, *a, **k)))
_from_pretrained = R.ScoreModel.from_pretrained.__func__
R.ScoreModel.from_pretrained = classmethod(
    lambda cls, *a, **k: (lambda m: _rec("score_model", m, m.backbone.parameters()))(_from_pretrained(cls, *a, **k)))
tr = SafeRLTrainer(cfg) if models else SafeRLTrainer(cfg, reward_fn=T.reward_fn, cost_fn=T.cost_fn)
acc = tr.accelerator
before = {n: {k: v.float().clone() for k, v in acc.get_state_dict(m).items()}
          for n, m in [("policy", tr.policy), *tr.critics.items()]}
hist = tr.train()["history"]
changed = {}
for n, m in [("policy", tr.policy), *tr.critics.items()]:
    after = acc.get_state_dict(m)
    changed[n] = any(not torch.equal(after[k].float(), before[n][k]) for k in before[n])
from safetensors.torch import load_file
# the files themselves (from_pretrained in this process would load under ZeRO-3's zero.Init)
saved = load_file(str(out / "policy" / "model.safetensors"))
gathered = acc.get_state_dict(tr.policy)
saved_ok = all(torch.equal(saved[k].float(), v.float()) for k, v in gathered.items() if k in saved)
critic = load_file(str(out / "reward_critic" / "model.safetensors"))
critic_ok = all(v.numel() > 0 for v in critic.values())
print("RESULT " + json.dumps({"saved_policy_matches": saved_ok and len(saved) > 0, "critic_ok": critic_ok,
    "type": str(acc.distributed_type), "plugins": list(acc.state.deepspeed_plugins),
    "engines": {n: type(m).__name__ for n, m in [("policy", tr.policy), *tr.critics.items()]},
    "frozen": sorted(tr._frozen_engines), "stage": acc.state.deepspeed_plugin.zero_stage, "loaded": loaded,
    "changed": changed, "steps": [h["reward"] for h in hist],
    "ckpt": sorted(p.name for p in (out / "checkpoints").iterdir()),
    "metric_steps": [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]}))
"""


@pytest.mark.skipif(not HAS_DEEPSPEED, reason="deepspeed is an optional extra (pip install 'saferlhf[deepspeed]')")
def test_zero3_rl_trains_with_real_deepspeed_engines(tmp_path):
    T.make_policy_dir(tmp_path)
    T.make_prompts_file(tmp_path, n=8)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **launch_env("zero3"), WORLD_SIZE="1", RANK="0", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))

    def run(iterations: int, mode: str, out: str) -> dict:
        proc = subprocess.run([sys.executable, "-c", _RUN, str(tmp_path), str(ROOT / "tests"), str(iterations), mode,
                               out], env=env, capture_output=True, text=True, timeout=600, check=False)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert proc.returncode == 0 and lines, proc.stdout[-2000:] + proc.stderr[-4000:]
        return json.loads(lines[-1][len("RESULT "):])

    r = run(2, "fresh", "out")
    assert r["type"].endswith("DEEPSPEED") and r["stage"] == 3
    assert r["engines"] == {"policy": "DeepSpeedEngine", "reward": "DeepSpeedEngine", "cost": "DeepSpeedEngine"}
    assert r["frozen"] == ["reference"]
    # policy, reference (from the policy's folder) and both critics were partitioned at load
    assert r["loaded"] == [["causal_lm", True], ["causal_lm", True], ["critic", True], ["critic", True]], r["loaded"]
    assert all(r["changed"].values()), r["changed"]
    assert len(r["steps"]) == 2 and r["metric_steps"] == [1, 2]
    assert r["ckpt"] == ["step-1"]  # the three trained engines' states (frozen engines left out)
    # the final folders hold the gathered weights (ZeRO-3 leaves the local parameters empty)
    assert r["saved_policy_matches"] and r["critic_ok"]

    # resume from step 1 to 3 == 3 iterations straight (engine and optimiser states restored)
    resumed = run(3, "resume", "out")
    assert resumed["metric_steps"] == [1, 2, 3] and resumed["ckpt"] == ["step-1", "step-2"]
    # the six models of PPO-Lag from folders: reward and cost models, and critics started from them
    # (LoRA policy and critics, gradient checkpointing: the memory levers of a 7B run)
    from saferlhf.models.score_model import ScoreModel

    from transformers import AutoTokenizer

    for name in ("rm", "cm"):
        ScoreModel.from_backbone(tmp_path / "policy-llama-0", score_type="reward", seed=1).save_pretrained(tmp_path / name)
        AutoTokenizer.from_pretrained(tmp_path / "policy-llama-0").save_pretrained(tmp_path / name)
    six = run(2, "models", "six")
    # a LoRA policy: its reference is the disabled adapter (no second load), saved merged at the end
    assert six["loaded"] == [["causal_lm", True]] + [["score_model", True]] * 4, six["loaded"]
    assert six["frozen"] == ["cost_model", "reward_model"] and all(six["changed"].values())
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "six" / "policy")
    assert not any("lora" in k for k in merged.state_dict()) and six["saved_policy_matches"]
    assert six["critic_ok"]  # the LoRA critics, saved from their gathered state (base + adapter)

    straight = run(3, "fresh", "straight")
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "out" / "policy" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "policy" / "model.safetensors"))
    assert straight["metric_steps"] == [1, 2, 3] and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
