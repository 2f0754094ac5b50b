"""How many heads are kept when, and how hot a relaxation is: the schedules of a pruning run.

Scorers prune in rounds (`rounds`): a list of head counts that decreases to the target K. Michel et
al.'s iterative pruning removes a fixed share of the heads per round and re-scores in between.

Learners ask, every optimisation step, how many heads the budget allows now (`keep_at`) and, for
the relaxed methods, the temperature (`temperature_at`). Both are pure functions of the step with
fixed end points, so a resumed run recomputes them exactly.

Budget schedules (`schedule.name`), for H heads in scope and a target of K kept:

* one_shot  : K from step 0 (the DSP paper's setting).
* linear    : H during the warm-up, then straight down to K over the anneal window.
* cubic     : K_t = K + (H - K) * (1 - p)^3, p the progress through the anneal window (the cubic
              sparsity schedule of Zhu & Gupta 2017 that GRAIN uses): fast at first, gentle at the end.
* iterative : a staircase through the counts of `rounds()` (a fixed share of the ORIGINAL heads per
  geometric   round, or of the REMAINING heads for geometric), one step of the stairs per 1/n of the
              anneal window, the last (K) landing at its end.

`warmup` and `anneal` are fractions of the run's LAST step index (total_steps - 1), so with
warmup + anneal = 1 the budget reaches K exactly at the final step; every annealing schedule reaches
K at the end of its anneal window and stays there.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig

from prune_cli.errors import ConfigError

SCHEDULES = ("one_shot", "iterative", "geometric", "linear", "cubic")


def rounds(cfg: DictConfig, total: int, k: int) -> list[int]:
    """Head counts kept after each scoring round, strictly decreasing, ending exactly at k.

    * one_shot: [k]
    * iterative: remove `fraction` of the ORIGINAL heads per round (Michel et al.: 10% a time)
    * geometric: keep (1 - fraction) of the heads REMAINING each round
    """
    name = cfg.name
    if k >= total:
        return [total]
    if name == "one_shot" or name in ("linear", "cubic"):
        return [k]
    frac = float(cfg.get("fraction", 0.1))
    if not 0 < frac < 1:
        raise ConfigError("schedule.fraction", frac, "a number in (0, 1)")
    counts, kept = [], total
    while kept > k:
        if name == "iterative":
            nxt = kept - max(1, round(frac * total))
        elif name == "geometric":
            nxt = min(kept - 1, math.floor(kept * (1 - frac)))
        else:
            raise ConfigError("schedule", name, f"one of {list(SCHEDULES)}")
        kept = max(k, nxt)
        counts.append(kept)
    return counts


# --------------------------------------------------------------------------- learners' budget
def _fraction(cfg: DictConfig, key: str, default: float) -> float:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ConfigError(f"schedule.{key}", value, "a fraction of the training steps in [0, 1]")
    return float(value)


def check(cfg: DictConfig) -> None:
    """Validate a schedule config without a model: name, fraction, warmup and anneal."""
    name = cfg.get("name")
    if name not in SCHEDULES:
        raise ConfigError("schedule", name, f"one of {', '.join(SCHEDULES)}")
    if name in ("iterative", "geometric"):
        frac = cfg.get("fraction", 0.1)
        if isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 < frac < 1:
            raise ConfigError("schedule.fraction", frac, "a number in (0, 1)")
    if name != "one_shot":
        warmup, anneal = _fraction(cfg, "warmup", 0.0), _fraction(cfg, "anneal", 1.0)
        if warmup + anneal > 1 + 1e-9:
            raise ConfigError("schedule.anneal", anneal, f"at most 1 - warmup = {1 - warmup:g}")


def progress(cfg: DictConfig, step: int, total_steps: int) -> float:
    """0 until the warm-up ends, then linear to 1 at the end of the anneal window, then 1.

    A run of a single step is all end: its only step is the last, where the budget is K."""
    if int(total_steps) <= 1:
        return 1.0
    last = int(total_steps) - 1
    start = _fraction(cfg, "warmup", 0.0) * last
    length = _fraction(cfg, "anneal", 1.0) * last
    if length <= 0:
        return 0.0 if step < start else 1.0
    return min(1.0, max(0.0, (step - start) / length))


def keep_at(cfg: DictConfig, step: int, total_steps: int, total: int, k: int) -> int:
    """Heads kept at `step` (0-based) of a `total_steps` run: `total` at the start, `k` at the end.

    Non-increasing in `step`, always within [k, total].
    """
    name = cfg.get("name")
    if name not in SCHEDULES:
        raise ConfigError("schedule", name, f"one of {', '.join(SCHEDULES)}")
    if k >= total or name == "one_shot":
        return min(k, total)
    p = progress(cfg, step, total_steps)
    if name == "linear":
        kept = k + (total - k) * (1.0 - p)
    elif name == "cubic":
        kept = k + (total - k) * (1.0 - p) ** 3
    else:  # iterative / geometric: the scorers' rounds as a staircase over the anneal window
        counts = rounds(cfg, total, k)
        done = math.floor(p * len(counts) + 1e-9)  # rounds completed by now
        return total if done == 0 else counts[min(done, len(counts)) - 1]
    return math.floor(kept + 0.5)


# ----------------------------------------------------------------------------- temperature
TEMPERATURE_SCHEDULES = ("exponential", "linear", "constant")


def temperature_at(step: int, tau_start: float, tau_end: float, cooldown_steps: int,
                   kind: str = "exponential") -> float:
    """Temperature of a relaxation at `step`: tau_start at 0, tau_end from `cooldown_steps` on.

    exponential (the DSP code's annealing): tau = exp(log tau_start - t/T (log tau_start - log
    tau_end)), i.e. a constant factor per step; linear: a straight line; constant: tau_start always.
    """
    if kind not in TEMPERATURE_SCHEDULES:
        raise ConfigError("method.tau_schedule", kind, f"one of {', '.join(TEMPERATURE_SCHEDULES)}")
    if kind == "constant":
        return float(tau_start)
    if cooldown_steps <= 0 or step >= cooldown_steps:
        return float(tau_end)
    p = max(0.0, step / cooldown_steps)
    if kind == "linear":
        return float(tau_start + (tau_end - tau_start) * p)
    return float(math.exp(math.log(tau_start) + p * (math.log(tau_end) - math.log(tau_start))))
