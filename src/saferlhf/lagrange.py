"""The Lagrange multiplier of constrained RL and its update rules (DESIGN §6).

The constrained problem max J_R s.t. J_C ≤ d is solved through
``L(θ, λ) = J_R(θ) − λ (J_C(θ) − d)``, θ ascending and λ ≥ 0 descending L: λ grows while
the constraint is violated (J_C > d) and shrinks toward 0 while it holds.

Usage in the RL loop, once per rollout batch (never per micro-batch)::

    lag = LagrangeMultiplier(LagrangeConfig(budget=0.0), reduce_fn=accelerator.gather)
    ...
    lag.observe(episode_costs)   # collective: every rank calls it; costs enter the window
    stats = lag.update()         # one step of the rule; then the policy update uses lag.value

``J_C`` is the mean sequence cost over a moving window of the last ``window`` episodes,
pooled across processes through ``reduce_fn`` (a gather: local (n,) costs → all ranks'
costs), so every rank holds the same window, J_C and λ.

Rules (e = J_C − d):

* ``log_sgd`` (Safe RLHF): SGD on log λ of the loss −λ e, i.e.
  ``log λ ← log λ + η · λ · e``, then ``λ ≤ λ_max`` (``log λ ≤ log λ_max``).
* ``projected``: ``λ ← clip(λ + η e, 0, λ_max)``.
* ``pid`` (Stooke et al. 2020) with anti-windup:
  ``I ← clip(I + K_i e, 0, λ_max)``; ``λ = clip(K_p e + I + K_d max(0, J_C − J_C,prev), 0, λ_max)``,
  ``I₀ = λ₀``; the derivative term is 0 on the first update.
* ``fixed``: λ never moves (ablations).
"""

from __future__ import annotations

import math
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields, replace
from typing import Any

import torch

from saferlhf.config.lagrange import RULES, LagrangeConfig  # noqa: F401 - RULES re-exported

__all__ = [
    "COST_TRANSFORMS",
    "transform_cost",
    "unsafe_boundary",
    "LagrangeConfig",
    "LagrangeMultiplier",
]



ReduceFn = Callable[[torch.Tensor], torch.Tensor]


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


class LagrangeMultiplier:
    """λ ≥ 0 with a moving-window constraint estimate and one of the update rules above.

    ``LagrangeMultiplier(config, reduce_fn=None, **overrides)``: keyword overrides replace
    fields of ``config`` (or of the default config). ``reduce_fn`` gathers a 1-D tensor of
    per-episode costs across processes (e.g. ``accelerator.gather``); default identity
    (single process). It must be a gather (concatenation), not a sum or a mean, so the
    window counts episodes. ``accelerator.gather`` needs equally sized tensors on every
    rank; with ragged batches pass a gather that pads and strips (or
    ``accelerator.gather_for_metrics``).
    """

    def __init__(
        self,
        config: LagrangeConfig | None = None,
        reduce_fn: ReduceFn | None = None,
        **overrides: Any,
    ) -> None:
        cfg = replace(config or LagrangeConfig(), **overrides)
        cfg.validate()
        cfg.parametrisation = cfg.resolved_parametrisation()
        self.config = cfg
        self.reduce_fn: ReduceFn = reduce_fn or _identity
        self._window: deque[float] = deque(maxlen=cfg.window)
        init = cfg.init
        if cfg.max_lambda is not None and init > cfg.max_lambda:
            warnings.warn(
                f"λ₀ = {init} exceeds max_lambda = {cfg.max_lambda}: starting at the cap",
                RuntimeWarning,
                stacklevel=2,
            )
            init = cfg.max_lambda
        self._param = math.log(init) if cfg.parametrisation == "log" else float(init)
        self._integral = float(init)  # PID: I₀ = λ₀
        self._prev_jc: float | None = None
        self._num_batches = 0  # update() calls that consumed a new batch
        self._num_updates = 0  # of those, the ones where the rule moved λ (after the delay)
        self._cap_streak = 0
        self._cap_warned = False
        self._pending = False  # costs observed since the last update()
        self._last_stats: dict[str, float] = {}

    # -- state ---------------------------------------------------------------------------

    @property
    def value(self) -> float:
        """Current λ (python float, ≥ 0)."""
        return math.exp(self._param) if self.config.parametrisation == "log" else self._param

    def _set(self, lam: float) -> None:
        lam = max(0.0, lam)
        if self.config.max_lambda is not None:
            lam = min(lam, self.config.max_lambda)
        if self.config.parametrisation == "log":
            self._param = math.log(lam) if lam > 0 else -math.inf
        else:
            self._param = lam

    def as_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """λ as a 0-d float32 tensor (no gradient), for the advantage combiner."""
        return torch.tensor(self.value, dtype=torch.float32, device=device)

    @property
    def constraint_estimate(self) -> float:
        """J_C: mean cost over the window (nan while empty)."""
        return sum(self._window) / len(self._window) if self._window else float("nan")

    @property
    def at_cap(self) -> bool:
        cap = self.config.max_lambda
        return cap is not None and self.value >= cap * (1 - 1e-9)

    # -- the loop ------------------------------------------------------------------------

    def observe(self, costs: torch.Tensor | Sequence[float] | float) -> None:
        """Push one batch (or micro-batch) of per-episode sequence costs into the window.

        Collective when ``reduce_fn`` is a gather: every process must call it with its
        local costs (possibly an empty tensor); the gathered costs of all processes enter
        the window in the same order on every rank.
        """
        local = torch.as_tensor(costs, dtype=torch.float32).detach().reshape(-1)
        gathered = self.reduce_fn(local)
        values = torch.as_tensor(gathered).detach().double().reshape(-1).cpu().tolist()
        if any(not math.isfinite(v) for v in values):
            raise ValueError("non-finite episode cost passed to LagrangeMultiplier.observe")
        self._window.extend(values)
        self._pending = True

    def update(self) -> dict[str, float]:
        """One step of the rule for the batch observed since the last call.

        Call once per rollout batch, after :meth:`observe` and before the policy update.
        A call with no new observation since the previous one does not step again (it
        returns the previous stats with ``updated = 0``), so accidental per-micro-batch
        calls cannot move λ several times. No step during the first ``delay_steps``
        batches. Returns ``{lambda, J_C, J_C_minus_d, at_cap, updated}``.
        """
        cfg = self.config
        if not self._pending or not self._window:
            stats = dict(self._last_stats) if self._last_stats else self._stats(False)
            stats["updated"] = 0.0
            stats["lambda"] = self.value
            return stats
        self._pending = False
        self._num_batches += 1
        jc = self.constraint_estimate
        e = jc - cfg.budget
        moved = False
        if self._num_batches > cfg.delay_steps and cfg.rule != "fixed":
            moved = True
            self._num_updates += 1
            lam = self.value
            if cfg.rule == "log_sgd":
                step = cfg.lr * lam * e
                if cfg.parametrisation == "log":
                    new_log = self._param + step
                    if cfg.max_lambda is not None:
                        new_log = min(new_log, math.log(cfg.max_lambda))
                    self._param = new_log
                else:  # same rule, λ stored directly: λ ← λ · exp(η λ e)
                    self._set(lam * math.exp(step))
            elif cfg.rule == "projected":
                self._set(lam + cfg.lr * e)
            elif cfg.rule == "pid":
                integral = max(0.0, self._integral + cfg.ki * e)
                if cfg.max_lambda is not None:  # anti-windup on both sides
                    integral = min(integral, cfg.max_lambda)
                self._integral = integral
                deriv = 0.0 if self._prev_jc is None else max(0.0, jc - self._prev_jc)
                self._set(cfg.kp * e + integral + cfg.kd * deriv)
            self._track_cap()
        self._prev_jc = jc
        stats = self._stats(moved)
        self._last_stats = stats
        return stats

    def step(self, costs: torch.Tensor | Sequence[float] | float) -> dict[str, float]:
        """``observe(costs)`` then ``update()``."""
        self.observe(costs)
        return self.update()

    def _track_cap(self) -> None:
        if self.at_cap:
            self._cap_streak += 1
            n = self.config.cap_warning_steps
            if n > 0 and self._cap_streak >= n and not self._cap_warned:
                self._cap_warned = True
                warnings.warn(
                    f"λ has sat at λ_max = {self.config.max_lambda} for {self._cap_streak} "
                    f"consecutive updates with J_C = {self.constraint_estimate:.4g} > d = "
                    f"{self.config.budget:.4g}: the budget is not reachable at this cap "
                    "(raise max_lambda, relax the budget, or check the cost model)",
                    RuntimeWarning,
                    stacklevel=3,
                )
        else:
            self._cap_streak = 0
            self._cap_warned = False

    def _stats(self, moved: bool) -> dict[str, float]:
        jc = self.constraint_estimate
        return {
            "lambda": self.value,
            "J_C": jc,
            "J_C_minus_d": jc - self.config.budget,
            "at_cap": float(self.at_cap),
            "updated": float(moved),
        }

    # -- checkpointing -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue identically (plain python values)."""
        return {
            "config": asdict(self.config),
            "param": self._param,
            "integral": self._integral,
            "prev_jc": self._prev_jc,
            "window": list(self._window),
            "num_batches": self._num_batches,
            "num_updates": self._num_updates,
            "cap_streak": self._cap_streak,
            "cap_warned": self._cap_warned,
            "pending": self._pending,
            "last_stats": dict(self._last_stats),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`. The stored config replaces the current one."""
        names = {f.name for f in fields(LagrangeConfig)}
        cfg = LagrangeConfig(**{k: v for k, v in state["config"].items() if k in names})
        self.config = cfg
        self._window = deque((float(v) for v in state["window"]), maxlen=cfg.window)
        self._param = float(state["param"])
        self._integral = float(state["integral"])
        self._prev_jc = None if state["prev_jc"] is None else float(state["prev_jc"])
        self._num_batches = int(state["num_batches"])
        self._num_updates = int(state["num_updates"])
        self._cap_streak = int(state["cap_streak"])
        self._cap_warned = bool(state["cap_warned"])
        self._pending = bool(state["pending"])
        self._last_stats = dict(state.get("last_stats", {}))

    def __repr__(self) -> str:
        return (
            f"LagrangeMultiplier(rule={self.config.rule!r}, lambda={self.value:.6g}, "
            f"J_C={self.constraint_estimate:.6g}, budget={self.config.budget})"
        )


# ----------------------------------------------------------------------------- episode cost

COST_TRANSFORMS = ("identity", "sigmoid", "calibrated")


def transform_cost(cost: torch.Tensor, transform: str, calibration=None) -> torch.Tensor:
    """The episode cost RL constrains, from the cost model's score c.

    ``identity``: c (Safe RLHF's mean-cost constraint, ``--budget d``). ``sigmoid``: σ(c), the
    cost model's own sign term read as P(unsafe). ``calibrated``: P(unsafe) = σ((c − offset) / T)
    with the cost model's fitted calibration (:class:`saferlhf.calibration.CostCalibration`), so
    ``E[P] ≤ q`` bounds the expected share of responses the annotators would label unsafe
    (``--budget-unsafe-rate q``, the default). Why a probability: with raw scores, very negative
    costs of extra-cautious safe answers (refusals) buy slack for unsafe answers elsewhere, and
    make refusing look cheaper than answering on *benign* prompts too; P(unsafe) saturates near
    its floor for every response the cost model calls safe, so the multiplier only prices what
    it calls unsafe.
    """
    if transform == "identity":
        return cost
    if transform == "sigmoid":
        return torch.sigmoid(cost)
    if transform == "calibrated":
        if calibration is None:
            raise ValueError("cost_transform 'calibrated' needs the cost model's calibration (calibration.json)")
        return calibration.probability(cost)
    raise ValueError(f"unknown cost_transform {transform!r} (expected one of {COST_TRANSFORMS})")


def unsafe_boundary(transform: str) -> float:
    """The cost model's safe/unsafe boundary in the units of ``transform``: c = 0 for
    ``identity``, P = ½ for ``sigmoid`` and ``calibrated``. An episode is counted unsafe when its
    cost exceeds it (for ``calibrated``: when the calibrated P(unsafe) exceeds ½)."""
    return 0.0 if transform == "identity" else 0.5
