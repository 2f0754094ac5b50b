"""Schedules: heads kept per step (budget) and temperature per step, their shapes and end points."""

from __future__ import annotations

import itertools
import math

import pytest
from conftest import group_cfg
from omegaconf import OmegaConf

from prune_cli import schedules
from prune_cli.errors import ConfigError

H, K, STEPS = 144, 36, 1000


def sched(name, **kw):
    return OmegaConf.create({"name": name, **kw})


def curve(cfg, total=H, k=K, steps=STEPS):
    return [schedules.keep_at(cfg, t, steps, total, k) for t in range(steps)]


# ----------------------------------------------------------------------------- scorers' rounds
def test_rounds_one_shot_and_linear_cubic_are_a_single_round():
    for name in ("one_shot", "linear", "cubic"):
        assert schedules.rounds(sched(name), H, K) == [K]


def test_rounds_iterative_removes_ten_percent_of_the_original_heads_per_round():
    counts = schedules.rounds(sched("iterative", fraction=0.1), H, K)
    assert counts[:3] == [130, 116, 102]  # 14 = round(0.1 * 144) each
    assert counts[-1] == K and all(a > b for a, b in itertools.pairwise(counts))


def test_rounds_geometric_keeps_ninety_percent_of_the_remaining_heads():
    counts = schedules.rounds(sched("geometric", fraction=0.1), H, K)
    assert counts[:3] == [129, 116, 104]  # floor(0.9 * previous)
    assert counts[-1] == K and all(a > b for a, b in itertools.pairwise(counts))


def test_rounds_nothing_to_prune():
    assert schedules.rounds(sched("iterative", fraction=0.1), H, H) == [H]


# ----------------------------------------------------------------------------- learners' budget
@pytest.mark.parametrize("name", ["linear", "cubic", "iterative", "geometric"])
def test_budget_starts_at_all_heads_ends_at_k_and_never_rises(name):
    values = curve(sched(name, fraction=0.1, warmup=0.0, anneal=1.0))
    assert values[0] == H and values[-1] == K
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert all(K <= v <= H for v in values)


def test_one_shot_budget_is_k_from_the_first_step():
    assert set(curve(sched("one_shot"))) == {K}


def test_warmup_holds_all_heads_and_anneal_window_ends_at_k():
    cfg = sched("linear", warmup=0.2, anneal=0.5)
    last = STEPS - 1
    values = curve(cfg)
    assert set(values[: int(0.2 * last) + 1]) == {H}
    assert values[math.ceil(0.7 * last)] == K and set(values[math.ceil(0.7 * last):]) == {K}


def test_linear_midpoint_and_cubic_is_fast_first_then_gentle():
    linear = curve(sched("linear", warmup=0.0, anneal=1.0), steps=101)
    cubic = curve(sched("cubic", warmup=0.0, anneal=1.0), steps=101)
    assert linear[50] == (H + K) // 2
    assert cubic[50] == round(K + (H - K) * 0.5**3)  # 49.5 -> 50 (rounds half up)
    assert all(c <= lin for c, lin in zip(cubic, linear))
    # the first 10% of the window removes more heads than the last 50% under cubic
    assert cubic[0] - cubic[10] > cubic[50] - cubic[100]


@pytest.mark.parametrize("name", ["iterative", "geometric"])
def test_staircase_visits_the_scorers_rounds_in_order(name):
    cfg = sched(name, fraction=0.1, warmup=0.0, anneal=1.0)
    values = curve(cfg)
    distinct = sorted(set(values), reverse=True)
    assert distinct == [H] + schedules.rounds(cfg, H, K)


def test_budget_with_tiny_runs_and_k_equal_total():
    assert schedules.keep_at(sched("cubic"), 0, 1, H, K) == K  # a 1-step run ends where it starts
    assert curve(sched("linear"), k=H) == [H] * STEPS


@pytest.mark.parametrize("cfg, key", [
    ({"name": "quadratic"}, "schedule"),
    ({"name": "iterative", "fraction": 1.5}, "schedule.fraction"),
    ({"name": "linear", "warmup": 0.6, "anneal": 0.6}, "schedule.anneal"),
    ({"name": "cubic", "warmup": -0.1}, "schedule.warmup"),
])
def test_bad_schedule_config_names_the_key(cfg, key):
    with pytest.raises(ConfigError) as err:
        schedules.check(OmegaConf.create(cfg))
    assert err.value.key == key


@pytest.mark.parametrize("name", schedules.SCHEDULES)
def test_every_schedule_yaml_is_valid_and_reaches_k(name):
    cfg = group_cfg("schedule", name)
    assert cfg.name == name
    schedules.check(cfg)
    assert schedules.keep_at(cfg, STEPS - 1, STEPS, H, K) == K
    assert schedules.rounds(cfg, H, K)[-1] == K


# ----------------------------------------------------------------------------- temperature
def test_exponential_temperature_end_points_and_constant_ratio():
    start, end, cool = 1000.0, 1e-8, 100
    taus = [schedules.temperature_at(t, start, end, cool) for t in range(150)]
    assert taus[0] == pytest.approx(start) and taus[cool] == pytest.approx(end)
    assert all(t == pytest.approx(end) for t in taus[cool:])
    assert taus[50] == pytest.approx(math.sqrt(start * end), rel=1e-9)  # geometric midpoint
    ratios = [b / a for a, b in itertools.pairwise(taus[: cool + 1])]
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-9)


def test_linear_and_constant_temperature():
    assert schedules.temperature_at(5, 1.0, 0.0 + 1e-3, 10, "linear") == pytest.approx(0.5 + 5e-4)
    assert schedules.temperature_at(7, 2.0, 1e-3, 10, "constant") == 2.0
    assert schedules.temperature_at(3, 2.0, 1e-3, 0) == 1e-3  # no cooldown: already cold
    with pytest.raises(ConfigError):
        schedules.temperature_at(0, 1.0, 0.1, 10, "cosine")
