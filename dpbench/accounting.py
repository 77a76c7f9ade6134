"""Privacy accounting for DP-SGD with Poisson sampling: ε for a noise level, the noise level for a
target ε, and a ledger that tracks the ε spent while training.

Three accountants:
- ``prv``: numerical composition of privacy loss random variables (Gopi et al. 2021) through the
  ``prv-accountant`` package. We report the UPPER bound of its estimate, with ``eps_error = 0.01``
  and ``delta_error = δ / 1000`` (the settings Opacus uses), so the reported ε is a guarantee.
- ``rdp``: Rényi DP of the sampled Gaussian mechanism through Opacus' analysis, over Opacus' default
  orders, converted to (ε, δ) with Balle et al. (2020), Theorem 21.
- ``gdp``: Gaussian DP through the central limit theorem (Bu et al. 2020), as Opacus' ``gdp``
  accountant computes it for Poisson sampling (``compute_eps_poisson``): μ = q·√(T(e^{1/σ²} − 1)),
  then the (ε, δ) dual of μ-GDP. It is what the paper's reference code calibrated σ with. It is an
  asymptotic approximation, NOT an upper bound: it can underestimate ε (most at small T or large q),
  so PRV's upper bound is the guarantee to quote beside it.

Steps versus epochs: under Poisson sampling with rate q an epoch is 1/q logical batches on
average, so ``epochs_to_steps(K, q) = ceil(K / q)``. We round up (Opacus rounds down) so that the
accountant never covers fewer steps than a trainer that runs ceil(K / q) batches.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings

import numpy as np

from dpbench.errors import DpbenchError

ACCOUNTANTS = ("prv", "rdp", "gdp")
PRV_EPS_ERROR = 0.01
"""Half-width of the PRV accountant's ε estimate; the upper bound we report is estimate + this."""
PRV_DELTA_ERROR_FRACTION = 1e-3
"""The PRV accountant's δ error as a fraction of δ."""
MAX_PRV_GRID_POINTS = 2_000_000
"""Largest discretisation grid the PRV accountant may build (its time and memory: paper/engine_timings.md)."""
SEARCH_TOLERANCE = 0.01
"""noise_multiplier_for returns σ with target - SEARCH_TOLERANCE < ε(σ) <= target."""
MIN_SIGMA, MAX_SIGMA = 0.05, 1e4
"""The range in which noise_multiplier_for searches."""


def _check_positive_number(name: str, value, upper: float | None = None, upper_inclusive: bool = False) -> float:
    """`value` as a float if it is a finite number > 0 (and below `upper`); otherwise DpbenchError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise DpbenchError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if upper is None:
        ok, allowed = value > 0, "> 0"
    elif upper_inclusive:
        ok, allowed = 0 < value <= upper, f"in (0, {upper:g}]"
    else:
        ok, allowed = 0 < value < upper, f"in (0, {upper:g})"
    if not ok:
        raise DpbenchError(f"{name} must be {allowed}, got {value:g}")
    return value


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
        raise DpbenchError(f"steps must be a whole number >= 1, got {steps!r}")
    if steps < 1:
        raise DpbenchError(f"steps must be >= 1, got {steps}")
    return int(steps)


def check_accountant(name: str) -> str:
    """The accountant name if known; otherwise DpbenchError listing the valid ones."""
    if name not in ACCOUNTANTS:
        raise DpbenchError(f"unknown accountant {name!r}; choose one of: {', '.join(ACCOUNTANTS)}")
    return name


def epochs_to_steps(epochs: float, sampling_rate: float) -> int:
    """Logical batches in `epochs` epochs at Poisson sampling rate q: ceil(epochs / q)."""
    epochs = _check_positive_number("epochs", epochs)
    sampling_rate = _check_positive_number("sampling_rate", sampling_rate, 1.0, upper_inclusive=True)
    # Round away float noise first: 3 / 0.02 is 150.00000000000003 and must give 150.
    return max(1, math.ceil(round(epochs / sampling_rate, 9)))


def epsilon(noise_multiplier: float, sampling_rate: float, steps: int, delta: float,
            accountant: str = "prv") -> float:
    """ε after `steps` Poisson-sampled Gaussian steps with noise multiplier σ and sampling rate q."""
    noise_multiplier = _check_positive_number("noise_multiplier", noise_multiplier)
    sampling_rate = _check_positive_number("sampling_rate", sampling_rate, 1.0, upper_inclusive=True)
    steps = _check_steps(steps)
    delta = _check_positive_number("delta", delta, 1.0)
    compute = {"prv": _prv_epsilon, "rdp": _rdp_epsilon, "gdp": _gdp_epsilon}[check_accountant(accountant)]
    eps = compute(noise_multiplier, sampling_rate, steps, delta)
    if math.isnan(eps):
        raise DpbenchError(f"the {accountant} accountant gave no ε for noise_multiplier={noise_multiplier:g}, "
                           f"sampling_rate={sampling_rate:g}, steps={steps}, delta={delta:g}")
    return eps


@functools.lru_cache(maxsize=512)
def _rdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    try:
        from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
        from opacus.accountants.rdp import RDPAccountant
    except ImportError as err:
        raise DpbenchError(f"the rdp accountant needs Opacus (pip install opacus): {err}") from None
    orders = RDPAccountant.DEFAULT_ALPHAS
    rdp = compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "optimal order is the largest alpha": the bound is still valid
        eps, _ = get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@functools.lru_cache(maxsize=512)
def _gdp_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    try:
        from opacus.accountants.analysis.gdp import compute_eps_poisson
    except ImportError as err:
        raise DpbenchError(f"the gdp accountant needs Opacus (pip install opacus): {err}") from None
    try:
        return float(compute_eps_poisson(steps=steps, noise_multiplier=sigma, sample_rate=q, delta=delta))
    except ValueError:  # no root of the dual in Opacus' bracket ε ∈ [0, 500]
        return math.inf


def epsilons(noise_multiplier: float, sampling_rate: float, steps: int, delta: float) -> dict[str, float]:
    """ε of the same run by every accountant, {name: ε} (∞ where an accountant cannot bound it)."""
    found = {}
    for name in ACCOUNTANTS:
        try:
            found[name] = epsilon(noise_multiplier, sampling_rate, steps, delta, name)
        except DpbenchError:  # e.g. PRV's grid would not fit: ε is very large there
            found[name] = math.inf
    return found


@functools.lru_cache(maxsize=512)
def _prv_epsilon(sigma: float, q: float, steps: int, delta: float) -> float:
    try:
        from prv_accountant import PoissonSubsampledGaussianMechanism, PRVAccountant
        from prv_accountant.accountant import compute_safe_domain_size
    except ImportError as err:
        raise DpbenchError(f"the prv accountant needs prv-accountant (pip install prv-accountant): {err}") from None
    delta_error = delta * PRV_DELTA_ERROR_FRACTION
    prv = PoissonSubsampledGaussianMechanism(sampling_probability=q, noise_multiplier=sigma)
    # The package sizes its grid from an RDP bound; refuse settings whose grid would not fit.
    half_width = float(compute_safe_domain_size([prv], [steps], eps_error=PRV_EPS_ERROR, delta_error=delta_error))
    mesh = PRV_EPS_ERROR / math.sqrt(steps / 2 * math.log(12 / delta_error))
    points = 2 * half_width / mesh
    if points > MAX_PRV_GRID_POINTS:
        raise DpbenchError(
            f"the prv accountant would need a grid of {points:.3g} points for noise_multiplier={sigma:g}, "
            f"sampling_rate={q:g}, steps={steps} (limit {MAX_PRV_GRID_POINTS:.0e}): ε is very large here; "
            f"use the rdp accountant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # it warns that we pass the domain size it would compute itself
        try:
            accountant = PRVAccountant(prvs=[prv], eps_error=PRV_EPS_ERROR, delta_error=delta_error,
                                       max_self_compositions=[steps], eps_max=half_width)
            _, _, eps_upper = accountant.compute_epsilon(delta=delta, num_self_compositions=[steps])
        except (RuntimeError, ValueError, FloatingPointError) as err:
            raise DpbenchError(
                f"the prv accountant failed for noise_multiplier={sigma:g}, sampling_rate={q:g}, "
                f"steps={steps}, delta={delta:g} ({err}); use the rdp accountant") from None
    return float(eps_upper)


def noise_multiplier_for(target_epsilon: float, delta: float, sampling_rate: float, steps: int,
                         accountant: str = "prv") -> float:
    """The noise multiplier σ whose ε is at most `target_epsilon` and within 0.01 of it.

    A secant search on log ε against log σ, safeguarded by a bracket once it has one; see `_search`.
    The PRV and GDP searches start from the RDP answer and the RDP curve's slope there, which are cheap.
    """
    target = _check_positive_number("epsilon", target_epsilon)
    delta = _check_positive_number("delta", delta, 1.0)
    sampling_rate = _check_positive_number("sampling_rate", sampling_rate, 1.0, upper_inclusive=True)
    steps = _check_steps(steps)
    check_accountant(accountant)

    def rdp(sigma: float) -> float:
        return epsilon(sigma, sampling_rate, steps, delta, "rdp")

    start, slope = _search(rdp, target, 1.0), -1.0
    if accountant == "rdp":
        return start
    if 0 < rdp(start) < rdp(start / 1.05) < math.inf:
        slope = (math.log(rdp(start)) - math.log(rdp(start / 1.05))) / math.log(1.05)
    return _search(lambda s: epsilon(s, sampling_rate, steps, delta, accountant), target, start, slope)


def _search(eps_of, target: float, start: float, first_slope: float = -1.0, max_evaluations: int = 100) -> float:
    """σ with target - SEARCH_TOLERANCE < eps_of(σ) <= target, for a decreasing eps_of.

    Each trial σ comes from the secant through the last two points in (log σ, log ε) aimed at the
    middle of the accepted window (`first_slope` from a single point). Until the target is bracketed a
    step changes σ by at most 4x; once lo (ε > target) and hi (ε <= target) are known, every trial
    stays in the inner 80% of [lo, hi], so the bracket shrinks by at least 10% per evaluation.
    """
    goal = max(target - SEARCH_TOLERANCE / 2, target / 2)
    lo = hi = None
    points = []  # (log σ, log ε) of the finite evaluations, latest last
    sigma = min(max(start, MIN_SIGMA), MAX_SIGMA)
    for _ in range(max_evaluations):
        eps = eps_of(sigma)
        if eps > target:
            lo = sigma
        else:
            hi = sigma
            if eps > target - SEARCH_TOLERANCE:
                return sigma
        if sigma >= MAX_SIGMA and eps > target:
            raise DpbenchError(f"epsilon={target:g} is not reachable: even noise_multiplier={MAX_SIGMA:g} "
                               f"gives ε={eps:.4g}")
        if sigma <= MIN_SIGMA and eps <= target:
            raise DpbenchError(f"epsilon={target:g} is too large to calibrate: even noise_multiplier="
                               f"{MIN_SIGMA:g} gives only ε={eps:.4g}")
        if 0 < eps < math.inf:
            points.append((math.log(sigma), math.log(eps)))
        slope = first_slope
        if len(points) >= 2 and points[-1][0] != points[-2][0]:
            (x0, y0), (x1, y1) = points[-2:]
            slope = min((y1 - y0) / (x1 - x0), -0.1)  # ε falls as σ grows; keep the step bounded
        if 0 < eps < math.inf:
            trial = sigma * math.exp((math.log(goal) - math.log(eps)) / slope)
        else:
            trial = sigma * (4.0 if eps > target else 0.25)
        if lo is None or hi is None:
            sigma = min(max(trial, sigma / 4, MIN_SIGMA), sigma * 4, MAX_SIGMA)
        else:
            width = hi - lo
            sigma = min(max(trial, lo + 0.1 * width), hi - 0.1 * width)
    raise DpbenchError(f"could not calibrate noise for epsilon={target:g} within {max_evaluations} "
                       f"evaluations (last bracket: noise_multiplier in [{lo}, {hi}])")


class PrivacyLedger:
    """The privacy spent by a training run with fixed σ, q and δ: count steps, ask for ε.

    ε after n steps is epsilon(σ, q, n, δ); evaluations are cached. `state_dict()` goes into a
    checkpoint and `load_state_dict()` continues the count after a resume.
    """

    def __init__(self, noise_multiplier: float, sampling_rate: float, delta: float,
                 accountant: str = "prv", steps: int = 0):
        self.noise_multiplier = _check_positive_number("noise_multiplier", noise_multiplier)
        self.sampling_rate = _check_positive_number("sampling_rate", sampling_rate, 1.0, upper_inclusive=True)
        self.delta = _check_positive_number("delta", delta, 1.0)
        self.accountant = check_accountant(accountant)
        self.steps = 0
        self.step(steps)

    def step(self, n: int = 1) -> None:
        """Record `n` more noisy steps (logical batches)."""
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise DpbenchError(f"the number of steps to record must be a whole number >= 0, got {n!r}")
        self.steps += int(n)

    def epsilon(self) -> float:
        """ε spent so far (0 before the first step)."""
        if self.steps == 0:
            return 0.0
        return epsilon(self.noise_multiplier, self.sampling_rate, self.steps, self.delta, self.accountant)

    def state_dict(self) -> dict:
        """Everything needed to continue the count: σ, q, δ, accountant and steps."""
        return {"noise_multiplier": self.noise_multiplier, "sampling_rate": self.sampling_rate,
                "delta": self.delta, "accountant": self.accountant, "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a saved state; refuses one whose σ, q, δ or accountant differ from ours."""
        for key in ("noise_multiplier", "sampling_rate", "delta", "accountant"):
            ours, theirs = getattr(self, key), state.get(key)
            same = ours == theirs if isinstance(ours, str) else (
                isinstance(theirs, numbers.Real) and np.isclose(ours, theirs, rtol=1e-12, atol=0))
            if not same:
                raise DpbenchError(f"cannot resume the privacy ledger: the checkpoint has {key}={theirs!r}, "
                                   f"this run has {key}={ours!r}")
        self.steps = 0
        self.step(state.get("steps"))
