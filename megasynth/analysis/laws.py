"""Scaling-law fits with bootstrap confidence intervals.

Implemented now: the **data law** (loss as a function of training tokens at fixed model size)

    L(D) = E + B · D^(−β)

Hoffmann et al. 2022 ("Training Compute-Optimal Large Language Models"), eq. 2 restricted to D at
fixed N; the form used per model size by Muennighoff et al. 2023 ("Scaling Data-Constrained Language
Models"). ``D`` is in tokens (consumed training tokens), ``L`` in nats per token.

Method (as Hoffmann et al. 2022, App. D.2, and Besiroglu et al. 2024):

* **Parameterisation.** θ = (E, b, β) with E ≥ 0 and 0 ≤ β ≤ 3 as box bounds, B = exp(b) · D_ref^β
  and D_ref = the geometric mean of the fitted budgets, so the model in log space is
  ``log L̂ = log(E + exp(b − β · log(D / D_ref)))``. Centring log D at D_ref removes most of the
  correlation between scale and exponent that makes raw (B, β) fits ill-conditioned, and keeps the
  exponent O(1) for any D; exp(b) is the reducible loss at D_ref. (E is bounded directly rather
  than fitted as log E as in Hoffmann et al.: bootstrap resamples whose optimum is E = 0 then end on
  the bound in a few steps instead of crawling towards −∞ in log E.)
* **Objective.** Huber loss (δ = 1e-3 by default) on log-loss residuals ``log L̂ − log L``; pass
  ``loss="linear"`` for plain least squares on log L. Solved with :func:`scipy.optimize.least_squares`
  (trust-region reflective, analytic Jacobian, bounds; its ``loss="huber", f_scale=δ`` is exactly
  Huber_δ): least squares from a grid of 20 data-informed starts, then the 3 best optima refined
  under the Huber objective; the lowest objective wins.
* **Uncertainty.** Seeded nonparametric bootstrap over points (resample (D, L) pairs with
  replacement, refit, percentile interval of each parameter).

Also here: the **rectified law** L(D) = B/(D_l + D^β) + E (Lin et al. 2024), as :class:`RectifiedLaw`
with the same optimiser and bootstrap. The Chinchilla law L(N, D) is fitted by its published
procedure (L-BFGS from a 4,500-point grid) in :mod:`megasynth.analysis.chinchilla`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Sequence

import numpy as np
from scipy.optimize import least_squares

from megasynth.utils import MegasynthError

__all__ = ["LawSpec", "DataLaw", "RectifiedLaw", "LawFit", "DataLawFit", "RectifiedLawFit", "fit_law", "fit_data_law",
           "fit_rectified_law", "LAWS"]


# --------------------------------------------------------------------------------------------------
# Law specifications
# --------------------------------------------------------------------------------------------------
def _check_token_counts(X: np.ndarray, params: str) -> None:
    """Budgets D for a one-input law: 1-D, finite, > 0, at least one distinct value per parameter."""
    if X.ndim != 1:
        raise MegasynthError(f"D must be a 1-D array of token counts, got shape {X.shape}")
    bad = np.flatnonzero(~np.isfinite(X) | (X <= 0))
    if bad.size:
        raise MegasynthError(f"D must be finite and > 0 (tokens); D[{bad[0]}] = {X[bad[0]]!r}")
    need = len(params.split(","))
    if np.unique(X).size < need:
        raise MegasynthError(f"need at least {need} distinct D values to fit {params}; got {np.unique(X).size}")


class LawSpec:
    """A scaling-law family fitted in log space.

    Subclasses define the internal parameter vector θ (what the optimiser sees), its bounds, the
    log-prediction and its Jacobian, the map θ → reported parameters, and data-informed starts.
    ``X`` is the law's input array (``[n]`` tokens for the data law; ``[n, 2]`` (N, D) for a future
    Chinchilla law); ``L`` is ``[n]`` losses in nats.
    """

    name: ClassVar[str]
    formula: ClassVar[str]
    param_names: ClassVar[tuple[str, ...]]
    """Reported parameters, natural units."""
    input_name: ClassVar[str]
    """Name of the input in error messages (``D``; ``(N, D)`` for a two-input law)."""
    theta_names: ClassVar[tuple[str, ...]]
    """Names of the internal parameters θ the optimiser sees (used in ``LawFit.at_bound``)."""

    def __init__(self, ref: dict[str, float]):
        self.ref = dict(ref)
        """Data-dependent constants of the parameterisation (e.g. ``D_ref``), fixed per fit."""

    @classmethod
    def for_data(cls, X: np.ndarray) -> "LawSpec":  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:  # pragma: no cover - interface
        raise NotImplementedError

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def jacobian(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:  # pragma: no cover
        """d log L̂ / dθ, shape ``[n, len(θ)]``."""
        raise NotImplementedError

    def params(self, theta: np.ndarray) -> dict[str, float]:  # pragma: no cover
        """Reported parameters (natural units) from θ."""
        raise NotImplementedError

    def theta(self, params: dict[str, float]) -> np.ndarray:  # pragma: no cover
        """Inverse of :meth:`params`."""
        raise NotImplementedError

    def starts(self, X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    @staticmethod
    def validate_inputs(X: np.ndarray) -> None:  # pragma: no cover
        raise NotImplementedError

    @property
    def n_params(self) -> int:
        return len(self.param_names)


class DataLaw(LawSpec):
    """L(D) = E + B · D^(−β) with θ = (E, log B_ref, β), B = B_ref · D_ref^β, E ≥ 0 by a bound.

    ``X`` is ``[n]`` consumed training tokens (D > 0).
    """

    name = "data"
    formula = "L(D) = E + B * D^(-beta)"
    param_names = ("E", "B", "beta")
    theta_names = ("E", "log_B_ref", "beta")
    input_name = "D"

    BETA_MAX = 3.0
    """Upper bound of β; bounds are reported in ``at_bound`` when a fit ends on one."""

    @classmethod
    def for_data(cls, X: np.ndarray) -> "DataLaw":
        return cls({"D_ref": float(np.exp(np.mean(np.log(X))))})

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.0, -50.0, 0.0]), np.array([1e4, 50.0, self.BETA_MAX])

    def _x(self, X: np.ndarray) -> np.ndarray:
        return np.log(np.asarray(X, dtype=np.float64) / self.ref["D_ref"])

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        E, b, beta = theta
        # |b - beta*x| <= 50 + 3*|x| stays far from float64 overflow for any realistic D range.
        return np.log(E + np.exp(b - beta * self._x(X)))

    def jacobian(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        E, b, beta = theta
        x = self._x(X)
        red = np.exp(b - beta * x)
        pred = E + red
        w = red / pred  # share of the reducible term in L̂
        return np.stack([1.0 / pred, w, -x * w], axis=1)

    def params(self, theta: np.ndarray) -> dict[str, float]:
        E, b, beta = (float(t) for t in theta)
        return {"E": E, "B": math.exp(b + beta * math.log(self.ref["D_ref"])), "beta": beta}

    def theta(self, params: dict[str, float]) -> np.ndarray:
        beta = params["beta"]
        return np.array([params["E"], math.log(params["B"]) - beta * math.log(self.ref["D_ref"]), beta])

    def starts(self, X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
        lo, hi = self.bounds
        l_min = float(np.min(L))
        l_ref = float(np.exp(np.mean(np.log(L))))  # ≈ L(D_ref)
        out = []
        for frac_e in (0.0, 0.25, 0.5, 0.75, 0.9):
            e0 = frac_e * l_min
            b0 = math.log(max(l_ref - e0, 1e-3 * l_ref))
            for beta0 in (0.1, 0.3, 0.6, 1.0):
                out.append(np.clip(np.array([e0, b0, beta0]), lo + 1e-9, hi - 1e-9))
        return out

    @staticmethod
    def validate_inputs(X: np.ndarray) -> None:
        _check_token_counts(X, "E, B, beta")


class RectifiedLaw(LawSpec):
    """L(D) = B / (D_l + D^β) + E (Lin et al. 2024, "Selecting Large Language Model to Fine-tune via
    Rectified Scaling Law"; used by SynthLLM, Qin et al. 2025). ``D_l`` ("pre-learned data size")
    bends the curve flat at small D; D_l → 0 recovers the data law.

    θ = (E, log B', log D_l', β) with D centred at D_ref (geometric mean): with x = D / D_ref,
    L = B'/(D_l' + x^β) + E, B = B'·D_ref^β, D_l = D_l'·D_ref^β. ``X`` is ``[n]`` tokens.
    """

    name = "rectified"
    formula = "L(D) = B / (D_l + D^beta) + E"
    param_names = ("E", "B", "D_l", "beta")
    theta_names = ("E", "log_B_ref", "log_D_l_ref", "beta")
    input_name = "D"
    BETA_MAX = 3.0

    @classmethod
    def for_data(cls, X: np.ndarray) -> "RectifiedLaw":
        return cls({"D_ref": float(np.exp(np.mean(np.log(X))))})

    @property
    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array([0.0, -50.0, -30.0, 0.0]), np.array([1e4, 50.0, 30.0, self.BETA_MAX])

    def _x(self, X: np.ndarray) -> np.ndarray:
        return np.log(np.asarray(X, dtype=np.float64) / self.ref["D_ref"])

    def log_predict(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        E, b, l, beta = theta
        s = np.logaddexp(l, beta * self._x(X))
        return np.log(E + np.exp(b - s))

    def jacobian(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        E, b, l, beta = theta
        x = self._x(X)
        s = np.logaddexp(l, beta * x)
        red = np.exp(b - s)
        pred = E + red
        w = red / pred
        return np.stack([1.0 / pred, w, -w * np.exp(l - s), -w * x * np.exp(beta * x - s)], axis=1)

    def params(self, theta: np.ndarray) -> dict[str, float]:
        E, b, l, beta = (float(t) for t in theta)
        lr = beta * math.log(self.ref["D_ref"])
        return {"E": E, "B": math.exp(b + lr), "D_l": math.exp(l + lr), "beta": beta}

    def theta(self, params: dict[str, float]) -> np.ndarray:
        beta = params["beta"]
        lr = beta * math.log(self.ref["D_ref"])
        return np.array([params["E"], math.log(params["B"]) - lr, math.log(max(params["D_l"], 1e-300)) - lr, beta])

    def starts(self, X: np.ndarray, L: np.ndarray) -> list[np.ndarray]:
        lo, hi = self.bounds
        l_min = float(np.min(L))
        l_ref = float(np.exp(np.mean(np.log(L))))
        out = []
        for frac_e in (0.0, 0.5, 0.8):
            e0 = frac_e * l_min
            for l0 in (-6.0, -1.0, 0.0, 1.0):
                b0 = math.log(max(l_ref - e0, 1e-3 * l_ref)) + math.log1p(math.exp(l0))
                for beta0 in (0.3, 0.7, 1.2):
                    out.append(np.clip(np.array([e0, b0, l0, beta0]), lo + 1e-9, hi - 1e-9))
        return out

    @staticmethod
    def validate_inputs(X: np.ndarray) -> None:
        _check_token_counts(X, "E, B, D_l, beta")


# --------------------------------------------------------------------------------------------------
# Fit results
# --------------------------------------------------------------------------------------------------
@dataclass
class LawFit:
    """A fitted law: point estimate, goodness of fit and bootstrap confidence intervals.

    ``params`` are in natural units (see the law's ``param_names``); ``ci[p] = (low, high)`` is the
    bootstrap percentile interval at ``ci_level`` (``(nan, nan)`` when ``n_bootstrap == 0``).
    ``rmse_log`` is the RMSE of ``log L̂ − log L`` (the fitted space); ``rmse`` the RMSE of
    ``L̂ − L`` in nats.
    """

    law: str
    formula: str
    params: dict[str, float]
    ci: dict[str, tuple[float, float]]
    ci_level: float
    rmse: float
    rmse_log: float
    n_points: int
    n_bootstrap: int
    n_bootstrap_ok: int
    seed: int
    loss: str
    delta: float
    ref: dict[str, float]
    x_range: tuple[float, float]
    at_bound: list[str] = field(default_factory=list)
    """Internal parameters that ended on a bound (e.g. ``beta`` at 0: no decrease with D)."""
    bootstrap_params: list[dict[str, float]] = field(default_factory=list, repr=False, compare=False)
    """The parameters of each usable bootstrap refit (in memory only; not in :meth:`to_dict`), e.g. for the
    interval of a difference of two fits' E."""

    _spec_cls: ClassVar[type[LawSpec]] = LawSpec

    @property
    def spec(self) -> LawSpec:
        return self._spec_cls(self.ref)

    def predict(self, X: Sequence[float] | np.ndarray) -> np.ndarray:
        """Predicted loss (nats) at inputs ``X`` (same form as the fitted inputs)."""
        X = np.asarray(X, dtype=np.float64)
        spec = self.spec
        return np.exp(spec.log_predict(spec.theta(self.params), X))

    def to_dict(self) -> dict[str, Any]:
        return {
            "law": self.law, "formula": self.formula,
            "params": dict(self.params),
            "ci": {k: [v[0], v[1]] for k, v in self.ci.items()}, "ci_level": self.ci_level,
            "rmse": self.rmse, "rmse_log": self.rmse_log, "n_points": self.n_points,
            "n_bootstrap": self.n_bootstrap, "n_bootstrap_ok": self.n_bootstrap_ok, "seed": self.seed,
            "loss": self.loss, "delta": self.delta, "ref": dict(self.ref),
            "x_range": list(self.x_range), "at_bound": list(self.at_bound),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LawFit":
        return cls(law=d["law"], formula=d["formula"], params=dict(d["params"]),
                   ci={k: (float(v[0]), float(v[1])) for k, v in d["ci"].items()}, ci_level=d["ci_level"],
                   rmse=d["rmse"], rmse_log=d["rmse_log"], n_points=d["n_points"],
                   n_bootstrap=d["n_bootstrap"], n_bootstrap_ok=d["n_bootstrap_ok"], seed=d["seed"],
                   loss=d["loss"], delta=d["delta"], ref=dict(d["ref"]), x_range=tuple(d["x_range"]),
                   at_bound=list(d.get("at_bound", [])))


@dataclass
class DataLawFit(LawFit):
    """Fit of L(D) = E + B · D^(−β); ``D`` in tokens, losses in nats."""

    _spec_cls: ClassVar[type[LawSpec]] = DataLaw

    @property
    def E(self) -> float:
        return self.params["E"]

    @property
    def B(self) -> float:
        return self.params["B"]

    @property
    def beta(self) -> float:
        return self.params["beta"]

    def predict(self, D: Sequence[float] | np.ndarray) -> np.ndarray:
        """Predicted loss (nats) at ``D`` tokens, shape of ``D``.

        Raises:
            MegasynthError: a non-positive or non-finite ``D``.
        """
        D = np.asarray(D, dtype=np.float64)
        if np.any(~np.isfinite(D) | (D <= 0)):
            raise MegasynthError("predict: D must be finite and > 0 (tokens)")
        spec = self.spec
        return np.exp(spec.log_predict(spec.theta(self.params), D.reshape(-1))).reshape(D.shape)


@dataclass
class RectifiedLawFit(LawFit):
    """Fit of L(D) = B/(D_l + D^β) + E; ``D`` in tokens, losses in nats."""

    _spec_cls: ClassVar[type[LawSpec]] = RectifiedLaw

    def predict(self, D: Sequence[float] | np.ndarray) -> np.ndarray:
        """Predicted loss (nats) at ``D`` tokens, shape of ``D``."""
        D = np.asarray(D, dtype=np.float64)
        if np.any(~np.isfinite(D) | (D <= 0)):
            raise MegasynthError("predict: D must be finite and > 0 (tokens)")
        spec = self.spec
        return np.exp(spec.log_predict(spec.theta(self.params), D.reshape(-1))).reshape(D.shape)



# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------
def _least_squares(spec: LawSpec, X: np.ndarray, logL: np.ndarray, x0: np.ndarray, loss: str,
                   delta: float) -> tuple[np.ndarray, float] | None:
    lo, hi = spec.bounds
    try:
        res = least_squares(
            lambda th: spec.log_predict(th, X) - logL, x0, jac=lambda th: spec.jacobian(th, X),
            bounds=(lo, hi), method="trf", loss=loss, f_scale=delta, x_scale="jac",
            max_nfev=500, xtol=1e-9, ftol=1e-9, gtol=1e-9)
    except (ValueError, FloatingPointError):
        return None
    if not (np.all(np.isfinite(res.x)) and np.isfinite(res.cost)):
        return None
    return res.x, float(res.cost)


def _solve(spec: LawSpec, X: np.ndarray, logL: np.ndarray, starts: list[np.ndarray], loss: str,
           delta: float, polish: int = 1) -> tuple[np.ndarray, float] | None:
    """Best solution over ``starts``: (θ, objective) or None if every start failed.

    Plain least squares on log L converges in ~10 evaluations from each start; for ``loss="huber"``
    (whose small δ makes trust-region steps slow from far away) the ``polish`` best least-squares
    optima are then refined under the Huber objective, and the lowest Huber objective wins.
    """
    sols = [s for s in (_least_squares(spec, X, logL, x0, "linear", delta) for x0 in starts) if s is not None]
    if not sols:
        return None
    sols.sort(key=lambda s: s[1])
    if loss == "linear":
        return sols[0]
    huber = [s for s in (_least_squares(spec, X, logL, x0, loss, delta) for x0, _ in sols[:polish])
             if s is not None]
    return min(huber, key=lambda s: s[1]) if huber else None


def fit_law(spec_cls: type[LawSpec], X: np.ndarray, L: np.ndarray, *,
            loss: Literal["huber", "linear"] = "huber", delta: float = 1e-3, n_bootstrap: int = 200,
            ci_level: float = 0.95, seed: int = 0, fit_cls: type[LawFit] = LawFit) -> LawFit:
    """Fit any :class:`LawSpec` to losses ``L`` ``[n]`` at inputs ``X``; see :func:`fit_data_law`."""
    X = np.asarray(X, dtype=np.float64)
    L = np.asarray(L, dtype=np.float64)
    if L.ndim != 1 or X.ndim == 0 or X.shape[0] != L.shape[0]:
        raise MegasynthError(f"{spec_cls.input_name} and L must have the same number of points, "
                             f"got shapes {X.shape} and {L.shape}")
    n_params = len(spec_cls.param_names)
    if L.shape[0] < n_params:
        raise MegasynthError(f"need at least {n_params} points to fit {', '.join(spec_cls.param_names)}; "
                             f"got {L.shape[0]}")
    bad = np.flatnonzero(~np.isfinite(L) | (L <= 0))
    if bad.size:
        raise MegasynthError(f"L must be finite and > 0 (loss in nats); L[{bad[0]}] = {L[bad[0]]!r}")
    spec_cls.validate_inputs(X)
    if loss not in ("huber", "linear"):
        raise MegasynthError(f"loss: must be 'huber' or 'linear', got {loss!r}")
    if not delta > 0:
        raise MegasynthError(f"delta: must be > 0, got {delta}")
    if n_bootstrap < 0:
        raise MegasynthError(f"n_bootstrap: must be >= 0, got {n_bootstrap}")
    if not 0 < ci_level < 1:
        raise MegasynthError(f"ci_level: must be in (0, 1), got {ci_level}")

    spec = spec_cls.for_data(X)
    logL = np.log(L)
    best = _solve(spec, X, logL, spec.starts(X, L), loss, delta, polish=3)
    if best is None:
        raise MegasynthError(f"{spec.name} law fit failed from every start ({len(L)} points)")
    theta = best[0]
    params = spec.params(theta)
    log_pred = spec.log_predict(theta, X)
    rmse_log = float(np.sqrt(np.mean((log_pred - logL) ** 2)))
    rmse = float(np.sqrt(np.mean((np.exp(log_pred) - L) ** 2)))
    lo, hi = spec.bounds
    at_bound = [spec.theta_names[i] for i in range(len(theta))
                if abs(theta[i] - lo[i]) < 1e-6 * (1 + abs(lo[i])) or abs(theta[i] - hi[i]) < 1e-6 * (1 + abs(hi[i]))]

    # Bootstrap over points: each resample is refitted with the same D_ref (so θ stays comparable),
    # directly under the fit's objective from the full-data optimum — every grid start reaches the
    # same basin on the data we see — and from the whole grid only if that fails.
    rng = np.random.default_rng(seed)
    boots: list[dict[str, float]] = []
    n = len(L)
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        Xb, logLb = X[idx], logL[idx]
        try:
            spec_cls.validate_inputs(Xb)
        except MegasynthError:
            continue  # degenerate resample (too few distinct inputs): not identifiable, skipped
        sol = (_least_squares(spec, Xb, logLb, theta, loss, delta)
               or _solve(spec, Xb, logLb, spec.starts(Xb, np.exp(logLb)), loss, delta))
        if sol is not None:
            boots.append(spec.params(sol[0]))
    alpha = (1.0 - ci_level) / 2.0
    ci: dict[str, tuple[float, float]] = {}
    for p in spec.param_names:
        vals = np.array([b[p] for b in boots])
        ci[p] = ((float(np.quantile(vals, alpha)), float(np.quantile(vals, 1 - alpha))) if len(vals) >= 2
                 else (float("nan"), float("nan")))
    x_flat = X.reshape(len(L), -1)[:, -1]  # range of D (the last input column for multi-input laws)
    return fit_cls(law=spec.name, formula=spec.formula, params=params, ci=ci, ci_level=ci_level, rmse=rmse,
                   rmse_log=rmse_log, n_points=n, n_bootstrap=n_bootstrap, n_bootstrap_ok=len(boots), seed=seed,
                   loss=loss, delta=delta, ref=spec.ref, x_range=(float(x_flat.min()), float(x_flat.max())),
                   at_bound=at_bound, bootstrap_params=boots)


def fit_data_law(D: np.ndarray | Sequence[float], L: np.ndarray | Sequence[float], *,
                 loss: Literal["huber", "linear"] = "huber", delta: float = 1e-3, n_bootstrap: int = 200,
                 ci_level: float = 0.95, seed: int = 0) -> DataLawFit:
    """Fit L(D) = E + B · D^(−β) (Hoffmann et al. 2022 eq. 2 at fixed N; Muennighoff et al. 2023).

    Args:
        D: ``[n]`` consumed training tokens per point (> 0; at least 3 distinct values).
        L: ``[n]`` held-out loss in nats per token at those budgets (finite, > 0).
        loss: ``"huber"`` (Huber on log-loss residuals, as Hoffmann et al. 2022) or ``"linear"``
            (least squares on log L).
        delta: Huber threshold on log-loss residuals (Hoffmann et al.: 1e-3).
        n_bootstrap: bootstrap resamples of the points for the confidence intervals (0 = none).
        ci_level: two-sided level of the percentile intervals.
        seed: bootstrap RNG seed (results are deterministic given the seed).

    Returns:
        :class:`DataLawFit` with ``E``, ``B``, ``beta``, ``ci``, ``rmse`` (nats), ``rmse_log``,
        ``n_points``, ``predict(D)`` and ``to_dict()``.

    Raises:
        MegasynthError: fewer than 3 points or distinct budgets, mismatched shapes, a non-positive or
            non-finite D, a non-finite or non-positive loss, bad options; or no start converged.
    """
    return fit_law(DataLaw, np.asarray(D, dtype=np.float64), np.asarray(L, dtype=np.float64), loss=loss,
                   delta=delta, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed, fit_cls=DataLawFit)


def fit_rectified_law(D: np.ndarray | Sequence[float], L: np.ndarray | Sequence[float], *,
                      loss: Literal["huber", "linear"] = "huber", delta: float = 1e-3, n_bootstrap: int = 200,
                      ci_level: float = 0.95, seed: int = 0) -> RectifiedLawFit:
    """Fit the rectified law L(D) = B/(D_l + D^β) + E (Lin et al. 2024) — same method as
    :func:`fit_data_law` (Huber on log L, multi-start, point bootstrap).

    Raises:
        MegasynthError: fewer than 4 points or distinct budgets, bad D or L, bad options.
    """
    return fit_law(RectifiedLaw, np.asarray(D, dtype=np.float64), np.asarray(L, dtype=np.float64), loss=loss,
                   delta=delta, n_bootstrap=n_bootstrap, ci_level=ci_level, seed=seed, fit_cls=RectifiedLawFit)


LAWS = {"data": (DataLaw, DataLawFit), "rectified": (RectifiedLaw, RectifiedLawFit)}
"""One-input laws by name: (spec, fit class)."""
