"""The one configuration of the Lagrange multiplier (DESIGN §6), shared by the CLI
(``RLConfig.lagrange``, ``--lagrange.rule`` …) and the Python API
(:class:`saferlhf.lagrange.LagrangeMultiplier`). Kept free of torch so ``--help`` is fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from saferlhf.config.base import ConfigError, option

RULES = ("log_sgd", "projected", "pid", "fixed")


@dataclass(kw_only=True)
class LagrangeConfig:
    """The multiplier λ ≥ 0 of ``max J_R − λ (J_C − d)``. ``init`` is λ₀; for
    ``reward_shaping`` it is the fixed λ.

    The defaults suit the default constraint, a maximum unsafe rate (J_C = E[P(unsafe)], errors
    J_C − q of ±0.1; docs/rl.md "The budget"): a PID that starts at λ₀ = 5, inside the range of λ
    where refusing harmful requests and answering benign ones is what the combined advantage
    prefers in both demo worlds (λ ≈ 3–30), and reacts within a few rollout batches. For a raw
    mean-cost budget (``--budget d``, errors of several cost units) the demo uses ``projected``
    with η = 1, λ₀ = 1, λ_max = 5 (docs/demo.md). Safe RLHF's ``log_sgd`` takes steps
    proportional to λ: after the constraint has been slack for a few dozen iterations λ is small
    and grows ~1 % per iteration, too slow to hold a budget within a 100-iteration run."""

    rule: Literal["log_sgd", "projected", "pid", "fixed"] = option(
        "pid", help="update rule (log_sgd: Safe RLHF's; projected/pid react faster near λ = 0)")
    init: float = option(5.0, ge=0, help="initial multiplier λ₀ (the fixed λ of reward_shaping)")
    lr: float = option(0.5, ge=0, help="log_sgd / projected: learning rate η (per unit of J_C − d per rollout batch)")
    budget: float = option(0.0, help="cost budget d: the constraint is J_C = E[C] <= d")
    max_lambda: float | None = option(20.0, gt=0, help="cap λ_max (null: unbounded)")
    delay_steps: int = option(0, ge=0, help="rollout batches before the first update")
    window: int = option(256, ge=1, help="episodes in the moving window that estimates J_C")
    parametrisation: Literal["log", "direct"] | None = option(
        None, help="how λ is stored (null: log for log_sgd, direct for the others: projected and pid "
                   "reach λ = 0 exactly, which log λ cannot represent)")
    kp: float = option(5.0, ge=0, help="pid: proportional gain")
    ki: float = option(1.0, ge=0, help="pid: integral gain")
    kd: float = option(0.0, ge=0, help="pid: derivative gain")
    cap_warning_steps: int = option(20, ge=0, help="warn when λ has sat at λ_max for this many consecutive updates")

    def resolved_parametrisation(self) -> str:
        if self.parametrisation is not None:
            return self.parametrisation
        return "log" if self.rule == "log_sgd" else "direct"

    def validate(self) -> None:
        if self.rule not in RULES:
            raise ConfigError(f"lagrange.rule: unknown rule {self.rule!r}; expected one of {RULES}")
        param = self.resolved_parametrisation()
        if param not in ("log", "direct"):
            raise ConfigError("lagrange.parametrisation must be 'log' or 'direct'")
        if param == "log" and self.rule in ("projected", "pid"):
            raise ConfigError(
                f"lagrange.parametrisation: rule {self.rule!r} moves λ additively and reaches λ = 0 exactly, "
                "which log λ cannot represent: use parametrisation 'direct' (or leave it null)")
        if self.init < 0 or not math.isfinite(self.init):
            raise ConfigError(f"lagrange.init: λ₀ must be a finite number >= 0, got {self.init}")
        if param == "log" and self.init == 0:
            raise ConfigError(
                "lagrange.init: λ₀ = 0 is impossible with the log parametrisation (log 0 = −∞, and the "
                "multiplicative log_sgd update can never leave 0): use a tiny positive init such as 1e-3, "
                "or parametrisation 'direct' with rule 'projected' or 'pid'")
        if self.rule == "log_sgd" and self.init == 0:
            raise ConfigError(
                "lagrange.init: log_sgd with λ₀ = 0 never moves (the step is proportional to λ): use a tiny "
                "positive init such as 1e-3, or rule 'projected' / 'pid'")
        if self.max_lambda is not None and not self.max_lambda > 0:
            raise ConfigError(f"lagrange.max_lambda must be > 0 or null, got {self.max_lambda}")
        if self.window < 1:
            raise ConfigError(f"lagrange.window must be >= 1, got {self.window}")
        if self.delay_steps < 0:
            raise ConfigError(f"lagrange.delay_steps must be >= 0, got {self.delay_steps}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise ConfigError(f"lagrange.lr must be a finite number >= 0, got {self.lr}")
        if not math.isfinite(self.budget):
            raise ConfigError(f"budget must be a finite number, got {self.budget}")
