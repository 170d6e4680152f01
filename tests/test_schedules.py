"""Keep-rate schedules: shapes, bounds, grid, cooldown, purity, and the original code's values."""

import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import vitpss
from vitpss.schedules import quantize

GRID = [0.2, 0.4, 0.6, 0.8, 1.0]

schedule_params = st.fixed_dictionaries({
    "name": st.sampled_from(["fixed", "linear", "cosine", "cyclic"]),
    "low": st.floats(0.05, 1.0),
    "span": st.floats(0.0, 0.6),
    "steps_per_epoch": st.integers(1, 40),
    "epochs": st.integers(1, 6),
    "quantum": st.sampled_from([0.0, 0.1, 0.2, 0.25]),
})


def _build(p, cooldown_epochs=0):
    return vitpss.build_schedule(p["name"], low=p["low"], high=min(p["low"] + p["span"], 1.2),
                                 steps_per_epoch=p["steps_per_epoch"], epochs=p["epochs"],
                                 quantum=p["quantum"], cooldown_epochs=cooldown_epochs)


@settings(max_examples=200, deadline=None)
@given(schedule_params)
def test_every_rate_is_in_unit_interval_and_on_the_grid(p):
    rates = _build(p).rates()
    assert np.all(rates > 0) and np.all(rates <= 1)
    if p["quantum"] > 0:
        levels = rates / p["quantum"]
        assert np.allclose(levels, np.round(levels), atol=1e-6) or np.any(rates == 1.0)


@settings(max_examples=100, deadline=None)
@given(schedule_params)
def test_call_matches_vectorised_rates(p):
    schedule = _build(p)
    rates = schedule.rates()
    for step in range(0, schedule.total_steps, max(1, schedule.total_steps // 7)):
        assert schedule(step) == rates[step]


@settings(max_examples=100, deadline=None)
@given(schedule_params.filter(lambda p: p["name"] in ("linear", "cosine")))
def test_linear_and_cosine_never_decrease(p):
    rates = _build(p).rates()
    assert np.all(np.diff(rates) >= -1e-12)


@settings(max_examples=100, deadline=None)
@given(schedule_params, st.integers(0, 6))
def test_cooldown_epochs_use_all_patches(p, cooldown):
    cooldown = min(cooldown, p["epochs"])
    schedule = _build(p, cooldown_epochs=cooldown)
    tail = schedule.rates()[schedule.total_steps - cooldown * p["steps_per_epoch"]:]
    assert np.all(tail == 1.0)


def test_none_schedule_is_always_one():
    schedule = vitpss.build_schedule("none", steps_per_epoch=10, epochs=3)
    assert set(schedule.rates()) == {1.0}
    assert schedule.mean_keep_rate() == 1.0


def test_fixed_schedule_runs_at_low():
    schedule = vitpss.build_schedule("fixed", low=0.6, steps_per_epoch=5, epochs=2)
    assert set(schedule.rates()) == {0.6}


def test_cyclic_schedule_starts_each_epoch_at_low_and_reaches_high_at_mid_epoch():
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=100, epochs=3)
    for epoch in range(3):
        assert schedule(epoch * 100) == 0.2
        assert schedule(epoch * 100 + 50) == 1.0


def test_cyclic_schedule_is_symmetric_within_a_period():
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=100, epochs=1, quantum=0)
    rates = schedule.rates()
    assert np.allclose(rates[1:50], rates[99:50:-1])


def test_cyclic_period_steps_overrides_the_epoch_period():
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=100, epochs=1, period_steps=20)
    rates = schedule.rates()
    assert np.array_equal(rates[:20], rates[20:40])
    assert rates[10] == 1.0 and rates[0] == 0.2


def test_linear_schedule_reaches_high_at_the_last_sampled_step_and_holds():
    schedule = vitpss.build_schedule("linear", low=0.2, high=1.0, steps_per_epoch=10, epochs=10, quantum=0,
                                     cooldown_epochs=2)
    rates = schedule.rates()
    assert rates[0] == pytest.approx(0.2)
    assert rates[79] == pytest.approx(1.0)
    assert rates[40] == pytest.approx(0.2 + 0.8 * 40 / 79)


def test_cosine_schedule_is_half_way_at_mid_run():
    schedule = vitpss.build_schedule("cosine", low=0.2, high=1.0, steps_per_epoch=101, epochs=1, quantum=0)
    assert schedule(50) == pytest.approx(0.6)


@pytest.mark.parametrize("rate,quantum,expected", [
    (0.3, 0.2, 0.4), (0.5, 0.2, 0.6), (0.7, 0.2, 0.8), (0.9, 0.2, 1.0), (0.29, 0.2, 0.2),
    (0.05, 0.2, 0.2), (0.55, 0.1, 0.6), (0.37, 0.0, 0.37),
])
def test_quantize_rounds_half_up_and_never_to_zero(rate, quantum, expected):
    assert float(quantize(rate, quantum)) == pytest.approx(expected)


def test_paper_like_cyclic_has_expected_level_shares():
    schedule = vitpss.build_schedule("cyclic", low=0.2, high=1.0, steps_per_epoch=1000, epochs=1)
    shares = schedule.levels()
    assert shares[0.2] == pytest.approx(0.125, abs=0.002)
    for level in (0.4, 0.6, 0.8):
        assert shares[level] == pytest.approx(0.25, abs=0.002)
    assert schedule.mean_keep_rate() == pytest.approx(0.6, abs=0.002)


def test_schedules_are_pure_and_picklable():
    schedule = vitpss.build_schedule("cyclic", steps_per_epoch=7, epochs=2)
    first = [schedule(t) for t in (13, 2, 13, 0)]
    clone = pickle.loads(pickle.dumps(schedule))
    assert [clone(t) for t in (13, 2, 13, 0)] == first
    assert first[0] == first[2]


@pytest.mark.parametrize("kwargs,param", [
    ({"low": 0.0}, "low"), ({"low": 1.5}, "low"), ({"high": 0.1}, "high"), ({"high": 3.0}, "high"),
    ({"quantum": -0.1}, "quantum"), ({"cooldown_epochs": 5}, "cooldown_epochs"), ({"epochs": 0}, "epochs"),
    ({"steps_per_epoch": 0}, "steps_per_epoch"), ({"period_steps": 1}, "period_steps"),
])
def test_invalid_parameters_raise_value_error_naming_parameter_and_range(kwargs, param):
    args = {"low": 0.2, "high": 1.0, "steps_per_epoch": 10, "epochs": 3, **kwargs}
    with pytest.raises(ValueError, match=rf"^{param}=.* must be "):
        vitpss.build_schedule("cyclic", **args)


def test_unknown_schedule_lists_valid_names():
    with pytest.raises(ValueError, match="none, fixed, linear, cosine, cyclic"):
        vitpss.build_schedule("triangle")


# --- the original code (docs/method.md §2) ----------------------------------------------------

def test_paper_cyclic_switch_points_within_a_2502_step_epoch():
    schedule = vitpss.paper_schedule("cyclic", steps_per_epoch=2502, epochs=1)
    rates = schedule.rates()
    changes = {int(i) + 1: float(rates[i + 1]) for i in np.flatnonzero(np.diff(rates))}
    assert changes == {140: 0.4, 418: 0.6, 696: 0.8, 973: 1.0, 1530: 0.8, 1807: 0.6, 2085: 0.4, 2363: 0.2}
    assert rates[0] == 0.2


def _original_cyclic_drop(t, s, e, ipe, T):
    """The formula as docs/method.md §2.4 writes it, step by step."""
    if t > T - 1:
        return 0.0
    u = t % ipe
    p = u / (ipe / 2) if u <= ipe // 2 else (ipe - u) / (ipe / 2)
    d = min(max((1 - p) * s + p * e, 0.0), 1.0)
    return round(5 * d) / 5


@pytest.mark.parametrize("ipe,epochs,cooldown", [(2502, 2, 0), (1251, 3, 1), (97, 5, 2)])
def test_paper_cyclic_matches_the_original_formula_value_for_value(ipe, epochs, cooldown):
    schedule = vitpss.paper_schedule("cyclic", steps_per_epoch=ipe, epochs=epochs, cooldown_epochs=cooldown)
    T = (epochs - cooldown) * ipe
    expected = [1 - _original_cyclic_drop(t, 0.8, -0.1, ipe, T) for t in range(epochs * ipe)]
    assert np.allclose(schedule.rates(), expected, atol=1e-12)


def test_paper_linear_switch_epochs_for_100_epochs():
    ipe = 2502
    schedule = vitpss.paper_schedule("linear", steps_per_epoch=ipe, epochs=100)
    rates = schedule.rates()
    switch_epochs = [(int(i) + 1) / ipe for i in np.flatnonzero(np.diff(rates))]
    assert [round(e, 1) for e in switch_epochs] == [11.1, 33.3, 55.6, 77.8]


@pytest.mark.parametrize("name,epochs,ipe,cooldown,shares,mean", [
    ("cyclic", 100, 2502, 0, [11.2, 22.2, 22.2, 22.1, 22.3], 0.644),
    ("linear", 100, 2502, 0, [11.1, 22.2, 22.2, 22.2, 22.2], 0.644),
    ("cosine", 100, 2502, 0, [21.6, 17.5, 14.4, 15.2, 31.3], 0.634),
    ("cyclic", 300, 1251, 10, [10.7, 21.5, 21.5, 21.5, 24.8], 0.656),
])
def test_paper_schedule_level_shares_match_the_published_table(name, epochs, ipe, cooldown, shares, mean):
    schedule = vitpss.paper_schedule(name, steps_per_epoch=ipe, epochs=epochs, cooldown_epochs=cooldown)
    levels = schedule.levels()
    assert [round(100 * levels[r], 1) for r in GRID] == pytest.approx(shares, abs=0.1)
    assert schedule.mean_keep_rate() == pytest.approx(mean, abs=0.0005)


def test_paper_fixed_rounds_like_the_original():
    # d = 0.5 rounds to 0.4 with banker's rounding: a "fixed 0.5" ran at keep rate 0.6
    schedule = vitpss.paper_schedule("fixed", steps_per_epoch=3, epochs=1, start_drop=0.5, end_drop=0.5)
    assert set(schedule.rates()) == {0.6}


def test_our_cyclic_with_overshoot_matches_paper_shares():
    ours = vitpss.build_schedule("cyclic", low=0.2, high=1.1, steps_per_epoch=2502, epochs=10)
    paper = vitpss.paper_schedule("cyclic", steps_per_epoch=2502, epochs=10)
    assert ours.mean_keep_rate() == pytest.approx(paper.mean_keep_rate(), abs=0.002)
    assert math.isclose(ours(0), 0.2) and math.isclose(ours(1251), 1.0)


def test_a_schedule_rebuilds_from_its_dict():
    schedule = vitpss.build_schedule("cosine", low=0.2, steps_per_epoch=4, epochs=3, cooldown_epochs=1, max_steps=10)
    assert vitpss.build_schedule(**schedule.to_dict()) == schedule


def test_max_steps_ends_a_schedule_inside_its_last_epoch_with_the_cooldown_at_its_end():
    from vitpss.schedules import KeepRateSchedule

    schedule = vitpss.build_schedule("linear", low=0.2, steps_per_epoch=4, epochs=3, quantum=0, cooldown_epochs=1)
    cut = KeepRateSchedule(**{**schedule.to_dict(), "max_steps": 10})
    assert cut.total_steps == len(cut.rates()) == 10 and cut.sampled_steps == 6
    assert list(cut.rates()[6:]) == [1.0] * 4 and cut(5) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="max_steps=13 is out of range"):
        KeepRateSchedule("linear", steps_per_epoch=4, epochs=3, max_steps=13)


# --- the run's length is required; past the end warns ----------------------------------------

@pytest.mark.parametrize("kwargs,missing", [({}, "steps_per_epoch and epochs"), ({"epochs": 3}, "steps_per_epoch"),
                                            ({"steps_per_epoch": 10}, "epochs")])
def test_build_schedule_without_the_run_length_is_a_type_error_saying_what_to_pass(kwargs, missing):
    with pytest.raises(TypeError, match=rf"steps_per_epoch=len\(loader\) and epochs=E \(or total_steps=N\); "
                                        rf"missing {missing}$"):
        vitpss.build_schedule("cosine", low=0.2, **kwargs)


def test_build_schedule_takes_total_steps_as_one_epoch_of_that_length():
    schedule = vitpss.build_schedule("cosine", low=0.2, quantum=0, total_steps=100)
    assert schedule.total_steps == 100 and schedule(0) == pytest.approx(0.2) and schedule(99) == pytest.approx(1.0)
    with pytest.raises(TypeError, match="either total_steps= or steps_per_epoch="):
        vitpss.build_schedule("cosine", total_steps=100, epochs=2)


@pytest.mark.parametrize("schedule", [
    vitpss.build_schedule("cosine", steps_per_epoch=5, epochs=2),
    vitpss.paper_schedule("cyclic", steps_per_epoch=5, epochs=2),
])
def test_a_step_past_the_end_warns_once(schedule):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        schedule(9)
        assert not caught
        schedule(10)
        schedule(11)
        schedule.rates()
    assert len(caught) == 1 and "past its end (10 steps)" in str(caught[0].message)
