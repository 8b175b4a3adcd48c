"""The cost model's probability of "unsafe": c → P(unsafe | x, y) = σ((c − offset) / T).

The cost model's sign term is a logistic classifier, but one fitted to noisy labels with a
ranking term beside it, so σ(c) is not a calibrated probability (on the demo world's held-out
pairs σ(c) averages 0.08 over the safe responses and the fit below picks T ≈ 1.5). Platt
scaling fixes that on held-out labelled responses: with z = a·c + b, minimise the mean binary
cross-entropy

    ℓ(a, b) = −mean[ y log σ(z) + (1 − y) log(1 − σ(z)) ],   y = 1 when labelled unsafe,

by Newton's method, and report T = 1/a, offset = −b/a. At the optimum ∂ℓ/∂b = mean(σ(z) − y) = 0,
so the calibrated probabilities average exactly the labelled unsafe rate of the calibration
set: E[P(unsafe)] ≤ q then reads "at most a fraction q of responses the annotators would label
unsafe", the budget in units a user can state (``saferlhf rl --budget-unsafe-rate q``).

``saferlhf cost-model`` writes ``calibration.json`` into the model folder (fitted on
``--calibration-data``, else ``--eval-data``); ``saferlhf calibrate`` refits it on other data.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "calibration.json"


@dataclass(frozen=True)
class CostCalibration:
    """P(unsafe | c) = σ((c − offset) / temperature); ``source`` says what it was fitted on."""

    temperature: float = 1.0
    offset: float = 0.0
    n: int = 0
    labelled_unsafe_rate: float | None = None
    source: str = "uncalibrated: σ(c), the cost model's own sign term"
    nll: float | None = None
    ece: float | None = None

    @property
    def fitted(self) -> bool:
        return self.n > 0

    def probability(self, cost):
        """σ((c − offset) / T) of a torch tensor or a numpy array (same type back)."""
        z = (cost - self.offset) / self.temperature
        if isinstance(z, np.ndarray) or np.isscalar(z):
            return _sigmoid(np.asarray(z, dtype=float))
        import torch

        return torch.sigmoid(z)

    def to_dict(self) -> dict[str, Any]:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    def save(self, model_dir: str | Path) -> Path:
        from saferlhf.io import atomic_file

        path = Path(model_dir) / CALIBRATION_FILE
        with atomic_file(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def load_calibration(model_dir: str | Path | None) -> CostCalibration | None:
    """The ``calibration.json`` of a cost model folder, or None when it has none."""
    if model_dir is None:
        return None
    path = Path(model_dir) / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        d = json.loads(path.read_text())
        cal = CostCalibration(**{k: d[k] for k in CostCalibration.__dataclass_fields__ if k in d})
    except (json.JSONDecodeError, TypeError, KeyError) as e:
        from saferlhf.config import ConfigError

        raise ConfigError(f"{path}: not a calibration file ({e}); rewrite it with `saferlhf calibrate "
                          f"--cost-model {model_dir} --data PAIRS`") from e
    if not (math.isfinite(cal.temperature) and cal.temperature > 0 and math.isfinite(cal.offset)):
        from saferlhf.config import ConfigError

        raise ConfigError(f"{path}: temperature must be a finite number > 0 and offset finite, got "
                          f"T = {cal.temperature}, offset = {cal.offset}")
    return cal


def cost_calibration_for(model_dir: str | Path | None, *, warn: bool = True) -> CostCalibration:
    """The calibration RL and evaluation apply to a cost model: its ``calibration.json``, else
    σ(c) itself with a warning (a function scorer, an imported model, an older folder)."""
    cal = load_calibration(model_dir) if isinstance(model_dir, (str, Path)) else None
    if cal is None:
        cal = CostCalibration()
        if warn:
            where = f"--cost-model {model_dir}" if isinstance(model_dir, (str, Path)) else "the cost model object"
            warnings.warn(f"{where} has no {CALIBRATION_FILE}: P(unsafe) is taken as σ(c) uncalibrated, so the "
                          "unsafe-rate budget is only as good as the cost model's sign term; fit it with "
                          "`saferlhf calibrate --cost-model DIR --data HELD_OUT_PAIRS`", RuntimeWarning, stacklevel=2)
    return cal


def fit_calibration(scores, unsafe, *, source: str = "", max_iter: int = 100, tol: float = 1e-10,
                    l2: float = 1e-6) -> CostCalibration:
    """Platt scaling (see the module docstring) of ``scores`` against 0/1 ``unsafe`` labels.

    ``l2`` is a tiny ridge on (a, b) that keeps Newton's step defined when the classes are
    perfectly separated (the slope would otherwise grow without bound)."""
    c = np.asarray(scores, dtype=float).reshape(-1)
    y = np.asarray(unsafe, dtype=float).reshape(-1)
    if c.shape != y.shape or c.size == 0:
        raise ValueError(f"fit_calibration needs as many labels as scores (got {c.size} scores, {y.size} labels)")
    if not np.all(np.isfinite(c)):
        raise ValueError("fit_calibration: non-finite cost scores")
    if y.min() == y.max():
        raise ValueError("calibrating needs responses labelled safe and responses labelled unsafe "
                         f"(all {c.size} are labelled {'unsafe' if y[0] else 'safe'})")
    x = np.stack([c, np.ones_like(c)], axis=1)

    def loss(w: np.ndarray) -> float:
        z = x @ w  # mean BCE in the log-sum-exp form: log(1 + e^z) − y z
        return float(np.mean(np.logaddexp(0.0, z) - y * z) + 0.5 * l2 * w @ w)

    w = np.array([0.0, math.log(y.mean() / (1 - y.mean()))])  # start: no slope, the base rate
    for _ in range(max_iter):
        p = _sigmoid(x @ w)
        grad = x.T @ (p - y) / c.size + l2 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x / c.size + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        t, before = 1.0, loss(w)
        while loss(w - t * step) > before and t > 1e-8:  # damped Newton: never increase the loss
            t *= 0.5
        w = w - t * step
        if float(np.abs(t * step).max()) < tol:
            break
    a, b = float(w[0]), float(w[1])
    if not a > 0:
        raise ValueError(f"the cost scores do not increase with the unsafe label (fitted slope {a:.4g}): the "
                         "cost model is not a classifier of these labels; check the data or the model")
    p = _sigmoid(a * c + b)
    eps = 1e-12
    nll = float(-np.mean(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps)))
    return CostCalibration(temperature=1.0 / a, offset=-b / a, n=int(c.size), labelled_unsafe_rate=float(y.mean()),
                           source=source, nll=nll, ece=expected_calibration_error(p, y))


def expected_calibration_error(p, y, bins: int = 10) -> float:
    """Σ_bins (n_bin / n) · |mean p − mean y| over equal-width probability bins."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for k in range(bins):
        m = idx == k
        if m.any():
            total += m.sum() / p.size * abs(p[m].mean() - y[m].mean())
    return float(total)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # σ(z) without overflow for large |z|


def labelled_responses(pairs) -> tuple[list, list[str], list[list], list[float], list[str]]:
    """Every response of ``pairs`` that carries a safety label: (prompts, responses, images,
    unsafe 0/1, sources)."""
    prompts, responses, images, unsafe, sources = [], [], [], [], []
    for k, p in enumerate(pairs):
        for resp, safe in ((p.response_a, p.safe_a), (p.response_b, p.safe_b)):
            if safe is None:
                continue
            prompts.append(p.prompt)
            responses.append(resp)
            images.append(list(p.images))
            unsafe.append(0.0 if safe else 1.0)
            sources.append(p.source or f"pair {k}")
    return prompts, responses, images, unsafe, sources


def calibrate_score_model(model, processor, template, pairs, *, source: str, max_length: int = 256,
                          batch_size: int = 64) -> CostCalibration:
    """Fit the calibration of a (loaded) cost model on the labelled responses of ``pairs``."""
    from saferlhf.eval.score_eval import score_texts

    prompts, responses, images, unsafe, sources = labelled_responses(pairs)
    if not prompts:
        raise ValueError(f"{source}: no response carries a safety label (is_response_*_safe) to calibrate on")
    scores = score_texts(model, processor, template, prompts, responses, images=images, sources=sources,
                         max_length=max_length, batch_size=batch_size)
    return fit_calibration(scores, unsafe, source=source)


def run_calibrate(cfg) -> dict[str, Any]:
    """``saferlhf calibrate``: refit ``calibration.json`` of ``--cost-model`` on ``--data``."""
    from saferlhf.data import load_pairs
    from saferlhf.hub import hub_data_options
    from saferlhf.io import describe_source
    from saferlhf.models.checkpoint import load_template
    from saferlhf.models.score_model import ScoreModel
    from saferlhf.processing import load_processor

    model = ScoreModel.from_pretrained(cfg.cost_model, normalize=False).eval()
    processor = load_processor(cfg.cost_model)
    template = model.template or load_template(cfg.cost_model, processor)
    pairs = load_pairs(cfg.data, on_bad_record=cfg.on_bad_record, **hub_data_options(cfg)).records
    cal = calibrate_score_model(model, processor, template, pairs, source=describe_source(cfg.data),
                                max_length=cfg.max_length)
    out = Path(cfg.out) if cfg.out else Path(cfg.cost_model)
    path = cal.save(out)
    print(json.dumps({**cal.to_dict(), "written": str(path)}, indent=2))
    return cal.to_dict()
