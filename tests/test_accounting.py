"""Privacy accounting: published sanity values, Opacus' accountants, the exact Gaussian mechanism,
the σ search, the ledger, bad inputs and the `dpbench epsilon` / `dpbench noise` commands."""

from __future__ import annotations

import json
import math

import pytest
from scipy.optimize import brentq
from scipy.stats import norm

from dpbench.accounting import (ACCOUNTANTS, PRV_EPS_ERROR, SEARCH_TOLERANCE, PrivacyLedger, epochs_to_steps,
                                epsilon, epsilons, noise_multiplier_for)
from dpbench.cli import main
from dpbench.errors import DpbenchError

DELTA = 1e-5


@pytest.mark.parametrize("sigma, q, steps, accountant, expected", [
    (1.1, 256 / 50000, 1953, "rdp", 1.213),   # reference values: CIFAR-10, δ = 1e-5, Poisson sampling
    (1.1, 256 / 50000, 1953, "prv", 1.032),
    (1.0, 0.02, 500, "rdp", 3.144),
    (1.0, 0.02, 500, "prv", 2.784),
])
def test_published_sanity_values(sigma, q, steps, accountant, expected):
    assert epsilon(sigma, q, steps, DELTA, accountant) == pytest.approx(expected, abs=1e-3)


RDP_SETTINGS = [(1.1, 256 / 50000, 1953), (1.0, 0.02, 500), (0.7, 0.01, 3000), (4.0, 0.2, 50), (1.5, 1.0, 3)]


@pytest.mark.parametrize("sigma, q, steps", RDP_SETTINGS)
def test_rdp_matches_opacus_rdp_accountant(sigma, q, steps):
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    reference.history = [(sigma, q, steps)]
    assert epsilon(sigma, q, steps, DELTA, "rdp") == pytest.approx(reference.get_epsilon(DELTA), rel=1e-9)


def test_rdp_matches_opacus_when_stepping():
    from opacus.accountants import RDPAccountant

    reference = RDPAccountant()
    for _ in range(40):
        reference.step(noise_multiplier=0.9, sample_rate=0.05)
    assert epsilon(0.9, 0.05, 40, 1e-6, "rdp") == pytest.approx(reference.get_epsilon(1e-6), rel=1e-9)


@pytest.mark.parametrize("sigma, q, steps", [(1.0, 0.02, 200), (2.0, 0.1, 60), (0.9, 0.005, 400)])
def test_prv_matches_opacus_prv_accountant(sigma, q, steps):
    """Opacus re-implements the same algorithm; both report an upper bound within eps_error."""
    from opacus.accountants import PRVAccountant

    reference = PRVAccountant()
    reference.history = [(sigma, q, steps)]
    ours = epsilon(sigma, q, steps, DELTA, "prv")
    assert ours == pytest.approx(reference.get_epsilon(DELTA, eps_error=PRV_EPS_ERROR), abs=PRV_EPS_ERROR)
    assert ours < epsilon(sigma, q, steps, DELTA, "rdp")  # PRV is the tighter accountant here


def exact_gaussian_epsilon(mu: float, delta: float) -> float:
    """ε of a μ-GDP Gaussian mechanism (Balle & Wang 2018): solve δ(ε) = Φ(-ε/μ + μ/2) - e^ε Φ(-ε/μ - μ/2)."""
    def excess(eps):
        return norm.cdf(-eps / mu + mu / 2) - math.exp(eps) * norm.cdf(-eps / mu - mu / 2) - delta
    return brentq(excess, 0.0, 100.0, xtol=1e-12)


@pytest.mark.parametrize("sigma, steps", [(2.0, 4), (5.0, 10), (1.0, 1)])
def test_full_batch_against_exact_gaussian_mechanism(sigma, steps):
    """With q = 1, n steps of σ compose exactly to a Gaussian mechanism with μ = √n / σ."""
    exact = exact_gaussian_epsilon(math.sqrt(steps) / sigma, DELTA)
    prv = epsilon(sigma, 1.0, steps, DELTA, "prv")
    assert exact <= prv <= exact + 2 * PRV_EPS_ERROR
    assert epsilon(sigma, 1.0, steps, DELTA, "rdp") >= exact


def test_epsilon_grows_with_steps_and_falls_with_noise():
    for accountant in ("rdp", "prv"):
        assert epsilon(1.0, 0.05, 50, DELTA, accountant) < epsilon(1.0, 0.05, 100, DELTA, accountant)
        assert epsilon(1.2, 0.05, 50, DELTA, accountant) < epsilon(1.0, 0.05, 50, DELTA, accountant)


@pytest.mark.parametrize("accountant, target, q, steps", [
    ("rdp", 1.0, 256 / 50000, 1953), ("rdp", 8.0, 0.01, 100), ("rdp", 0.3, 0.001, 1000),
    ("prv", 3.0, 0.05, 100), ("prv", 0.8, 0.01, 200), ("gdp", 1.0, 0.02, 150), ("gdp", 8.0, 0.01, 300),
])
def test_noise_search_reaches_target_from_below(accountant, target, q, steps):
    sigma = noise_multiplier_for(target, DELTA, q, steps, accountant)
    assert target - SEARCH_TOLERANCE < epsilon(sigma, q, steps, DELTA, accountant) <= target


@pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")
def test_noise_search_agrees_with_opacus():
    from opacus.accountants.utils import get_noise_multiplier

    ours = noise_multiplier_for(2.0, DELTA, 0.02, 500, "rdp")
    theirs = get_noise_multiplier(target_epsilon=2.0, target_delta=DELTA, sample_rate=0.02, steps=500,
                                  accountant="rdp", epsilon_tolerance=SEARCH_TOLERANCE)
    assert ours == pytest.approx(theirs, rel=0.01)


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental")
@pytest.mark.parametrize("sigma, q, steps", [(1.1, 256 / 50000, 1953), (0.8, 0.02, 150), (2.5, 0.1, 30)])
def test_gdp_matches_opacus_gaussian_accountant(sigma, q, steps):
    from opacus.accountants import GaussianAccountant

    accountant = GaussianAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=sigma, sample_rate=q)
    assert epsilon(sigma, q, steps, DELTA, "gdp") == pytest.approx(accountant.get_epsilon(DELTA), rel=1e-12)


@pytest.mark.filterwarnings("ignore:GDP accounting is experimental")
def test_gdp_noise_search_agrees_with_opacus_as_the_reference_code_calls_it():
    """The paper's reference code: get_noise_multiplier(..., accountant="gdp") with sample rate 1000/50000."""
    from opacus.accountants.utils import get_noise_multiplier

    q, epochs = 1000 / 50000, 3
    ours = noise_multiplier_for(1.0, DELTA, q, epochs_to_steps(epochs, q), "gdp")
    theirs = get_noise_multiplier(target_epsilon=1.0, target_delta=DELTA, sample_rate=q, epochs=epochs,
                                  accountant="gdp", epsilon_tolerance=SEARCH_TOLERANCE)
    assert ours == pytest.approx(theirs, rel=0.01)


def test_every_accountant_reports_the_same_run():
    found = epsilons(1.0, 0.02, 500, DELTA)
    assert list(found) == list(ACCOUNTANTS)
    assert found["prv"] == epsilon(1.0, 0.02, 500, DELTA, "prv") and found["rdp"] > found["prv"]
    # the CLT approximation sits below the PRV upper bound here (it is not a bound)
    assert 0 < found["gdp"] < found["prv"]
    assert epsilons(0.06, 0.5, 2000, DELTA)["prv"] == math.inf  # PRV's grid would not fit: ∞, not a crash


def test_unreachable_targets_are_clear_errors():
    # The PRV upper bound is the estimate + eps_error, so no σ brings it below eps_error.
    with pytest.raises(DpbenchError, match="not reachable"):
        noise_multiplier_for(PRV_EPS_ERROR / 10, DELTA, 0.01, 100, "prv")
    with pytest.raises(DpbenchError, match="too large"):
        noise_multiplier_for(1e6, DELTA, 0.01, 100, "rdp")


@pytest.mark.parametrize("epochs, q, steps", [(3, 0.02, 150), (10, 256 / 50000, 1954), (0.5, 0.5, 1), (1, 1.0, 1),
                                              (2, 2048 / 60000, 59)])
def test_epochs_to_steps_rounds_up(epochs, q, steps):
    assert epochs_to_steps(epochs, q) == steps


def test_ledger_counts_steps_and_resumes():
    ledger = PrivacyLedger(1.0, 0.05, DELTA, accountant="rdp")
    assert ledger.epsilon() == 0.0
    ledger.step()
    ledger.step(29)
    assert ledger.steps == 30
    assert ledger.epsilon() == epsilon(1.0, 0.05, 30, DELTA, "rdp")
    resumed = PrivacyLedger(1.0, 0.05, DELTA, accountant="rdp")
    resumed.load_state_dict(json.loads(json.dumps(ledger.state_dict())))
    resumed.step(10)
    assert resumed.epsilon() == epsilon(1.0, 0.05, 40, DELTA, "rdp")


def test_ledger_refuses_a_checkpoint_with_other_parameters():
    state = PrivacyLedger(1.0, 0.05, DELTA, accountant="rdp", steps=5).state_dict()
    with pytest.raises(DpbenchError, match="noise_multiplier"):
        PrivacyLedger(1.2, 0.05, DELTA, accountant="rdp").load_state_dict(state)
    with pytest.raises(DpbenchError, match="accountant"):
        PrivacyLedger(1.0, 0.05, DELTA, accountant="prv").load_state_dict(state)


@pytest.mark.parametrize("kwargs, named", [
    ({"sampling_rate": 0.0}, "sampling_rate"), ({"sampling_rate": 1.5}, "1.5"), ({"sampling_rate": -0.1}, "-0.1"),
    ({"steps": 0}, "steps"), ({"steps": -3}, "-3"), ({"steps": 2.5}, "2.5"), ({"steps": True}, "True"),
    ({"delta": 0.0}, "delta"), ({"delta": 1.0}, "delta"), ({"delta": 2.0}, "2"),
    ({"noise_multiplier": 0.0}, "noise_multiplier"), ({"noise_multiplier": -1.0}, "-1"),
    ({"noise_multiplier": math.nan}, "nan"), ({"noise_multiplier": math.inf}, "inf"),
    ({"accountant": "moments"}, "moments"),
])
def test_bad_epsilon_inputs_name_the_value(kwargs, named):
    args = {"noise_multiplier": 1.0, "sampling_rate": 0.01, "steps": 100, "delta": DELTA, "accountant": "rdp"}
    with pytest.raises(DpbenchError, match=named):
        epsilon(**{**args, **kwargs})


@pytest.mark.parametrize("kwargs, named", [
    ({"target_epsilon": 0.0}, "epsilon"), ({"target_epsilon": -1.0}, "-1"), ({"delta": 1.0}, "delta"),
    ({"sampling_rate": 1.01}, "1.01"), ({"steps": 0}, "steps"), ({"accountant": "moments"}, "moments"),
])
def test_bad_noise_inputs_name_the_value(kwargs, named):
    args = {"target_epsilon": 1.0, "delta": DELTA, "sampling_rate": 0.01, "steps": 100, "accountant": "rdp"}
    with pytest.raises(DpbenchError, match=named):
        noise_multiplier_for(**{**args, **kwargs})


def test_bad_epochs_and_ledger_inputs():
    with pytest.raises(DpbenchError, match="epochs"):
        epochs_to_steps(0, 0.1)
    with pytest.raises(DpbenchError, match="sampling_rate"):
        epochs_to_steps(1, 0)
    with pytest.raises(DpbenchError, match="-2"):
        PrivacyLedger(1.0, 0.1, DELTA).step(-2)


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exit_:  # argparse's own errors
        return exit_.code


def test_cli_epsilon_prints_the_value(capsys):
    assert run_cli(["epsilon", "--noise-multiplier", "1.0", "--sampling-rate", "0.02", "--steps", "500",
                    "--delta", "1e-5", "--accountant", "rdp"]) == 0
    assert "3.1443" in capsys.readouterr().out


def test_cli_epsilon_json(capsys):
    assert run_cli(["epsilon", "--noise-multiplier", "1.1", "--sampling-rate", str(256 / 50000), "--steps", "1953",
                    "--delta", "1e-5", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epsilon"] == pytest.approx(1.032, abs=1e-3)
    assert result == {**result, "noise_multiplier": 1.1, "steps": 1953, "delta": 1e-5, "accountant": "prv"}


def test_cli_noise_json_from_epochs(capsys):
    assert run_cli(["noise", "--epsilon", "2", "--delta", "1e-5", "--sampling-rate", "0.02", "--epochs", "10",
                    "--accountant", "rdp", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 500 and result["epochs"] == 10 and result["accountant"] == "rdp"
    assert 2 - SEARCH_TOLERANCE < result["epsilon"] <= 2
    assert epsilon(result["noise_multiplier"], 0.02, 500, 1e-5, "rdp") == result["epsilon"]


def test_cli_noise_prints_sigma(capsys):
    assert run_cli(["noise", "--epsilon", "2", "--delta", "1e-5", "--sampling-rate", "0.02", "--steps", "500",
                    "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("noise_multiplier = ") and "steps 500" in out


@pytest.mark.parametrize("argv, named", [
    (["epsilon", "--noise-multiplier", "1", "--sampling-rate", "1.5", "--steps", "10", "--delta", "1e-5"], "1.5"),
    (["epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--steps", "0", "--delta", "1e-5"], "steps"),
    (["epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1"], "delta"),
    (["epsilon", "--noise-multiplier", "-2", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "-2"),
    (["epsilon", "--noise-multiplier", "x", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-5"], "'x'"),
    (["epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--steps", "2.5", "--delta", "1e-5"], "2.5"),
    (["epsilon", "--noise-multiplier", "1", "--sampling-rate", "0.1", "--steps", "10", "--delta", "1e-5",
      "--accountant", "moments"], "moments"),
    (["noise", "--epsilon", "0", "--delta", "1e-5", "--sampling-rate", "0.1", "--steps", "10"], "epsilon"),
    (["noise", "--epsilon", "1", "--delta", "1e-5", "--sampling-rate", "0.1", "--epochs", "-1"], "epochs"),
    (["noise", "--epsilon", "1", "--delta", "1e-5", "--sampling-rate", "0.1", "--steps", "5", "--epochs", "1"],
     "--epochs"),
    (["noise", "--epsilon", "1", "--delta", "1e-5", "--sampling-rate", "0.1"], "--steps"),
])
def test_cli_bad_inputs_exit_2_with_one_line(capsys, argv, named):
    assert run_cli(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "error" in lines[0]
