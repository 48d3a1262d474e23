"""benchmarks/zoo_learners.py's choice rule: bounds on a learner's final cost per admitted run, and the
early choice once they separate (the full rule, on finished runs only, could not choose another)."""
import pytest

from benchmarks.zoo_learners import cost_bounds, separated

CAP = 1_000_000


def run(status, core_h, last_step=500_000):
    return {"status": status, "core_h_spent": core_h, "last_step": last_step}


def test_bounds_of_a_finished_learner_are_its_cost_and_open_runs_widen_them():
    finished = [run("admitted", 0.4), run("admitted", 0.4), run("failed", 0.8, CAP)]
    assert cost_bounds(finished, CAP)["core_h_per_admitted_run_bounds"] == [0.8, 0.8]
    low, high = cost_bounds(finished + [run("running", 0.2, 250_000)], CAP)["core_h_per_admitted_run_bounds"]
    assert low == pytest.approx((1.6 + 0.2) / 3, abs=1e-3)         # the running run admitted now, at no further cost
    assert high == pytest.approx((1.6 + 0.2 * 4) / 2, abs=1e-3)    # ... or failing at the cap, at its cost per step
    low, high = cost_bounds(finished + [{"status": "not started"}], CAP)["core_h_per_admitted_run_bounds"]
    assert low == pytest.approx(1.6 / 3, abs=1e-3) and high > 1.6 / 2
    assert cost_bounds([run("running", 0.1)], CAP)["core_h_per_admitted_run_bounds"][1] is None  # none admitted yet


def test_a_learner_is_chosen_early_only_when_no_outcome_of_the_open_runs_could_change_the_ranking():
    cheap = {"name": "cheap", **cost_bounds([run("admitted", 0.1)] * 3 + [run("running", 0.05, 200_000)], CAP)}
    dear = {"name": "dear", **cost_bounds([run("admitted", 1.2)] * 4, CAP)}
    assert separated(cheap, [cheap, dear])
    close = {"name": "close", **cost_bounds([run("admitted", 0.15), run("running", 0.02, 300_000)], CAP)}
    assert not separated(cheap, [cheap, close])
