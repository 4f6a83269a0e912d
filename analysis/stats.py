"""Spread and comparison: percentile-bootstrap confidence intervals of a mean, the difference
and ratio of two means with theirs, and the time-weighted distribution of concurrent flows.

The bootstrap is the percentile method (Efron and Tibshirani, "An Introduction to the
Bootstrap", 1993, ch. 13): the units (tasks of one run, or the repetitions of one setting)
are resampled with replacement RESAMPLES times and the interval is the central LEVEL share
of the resampled means. It is seeded, so a report is reproduced exactly; below MIN_UNITS
units it gives no interval (NaN) instead of a misleadingly narrow one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.metrics import LOOP

RESAMPLES = 4000
LEVEL = 0.95
SEED = 20_261_201
MIN_UNITS = 2
Values = pd.Series | np.ndarray | list[float]


@dataclass(frozen=True)
class Interval:
    """A mean (or a difference/ratio of means) with its LEVEL bootstrap interval over `n` units."""

    mean: float
    low: float
    high: float
    n: int

    @property
    def known(self) -> bool:
        return not (math.isnan(self.low) or math.isnan(self.high))

    def overlaps(self, other: Interval) -> bool:
        """True when either interval is unknown: no evidence of a difference."""
        if not (self.known and other.known):
            return True
        return self.low <= other.high and other.low <= self.high

    def excludes(self, value: float) -> bool:
        return self.known and not (self.low <= value <= self.high)

    def format(self, pattern: str) -> str:
        if math.isnan(self.mean):
            return "–"
        spread = f" [{pattern.format(self.low)}, {pattern.format(self.high)}]" if self.known else " [n < 2]"
        return pattern.format(self.mean) + spread

    def as_dict(self) -> dict[str, float]:
        return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _finite(values: Values) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    return array[np.isfinite(array)]


def _resampled_means(values: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    return values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)


def _bounds(samples: np.ndarray, level: float) -> tuple[float, float]:
    tail = (1 - level) / 2
    low, high = np.quantile(samples, [tail, 1 - tail])
    return float(low), float(high)


def interval(values: Values, level: float = LEVEL, resamples: int = RESAMPLES, seed: int = SEED) -> Interval:
    """The mean of the finite values and its percentile-bootstrap interval."""
    data = _finite(values)
    if len(data) < MIN_UNITS:
        return Interval(float(data.mean()) if len(data) else math.nan, math.nan, math.nan, len(data))
    means = _resampled_means(data, np.random.default_rng(seed), resamples)
    return Interval(float(data.mean()), *_bounds(means, level), len(data))


def _compare(treated: Values, control: Values, op: np.ufunc, level: float, seed: int) -> Interval:
    """op(mean(treated), mean(control)) and its interval, the two samples resampled independently."""
    a, b = _finite(treated), _finite(control)
    n = min(len(a), len(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        point = float(op(a.mean(), b.mean())) if n else math.nan
        if not math.isfinite(point) or n < MIN_UNITS:
            return Interval(point if math.isfinite(point) else math.nan, math.nan, math.nan, n)
        rng = np.random.default_rng(seed)
        samples = op(_resampled_means(a, rng, RESAMPLES), _resampled_means(b, rng, RESAMPLES))
    return Interval(point, *_bounds(samples[np.isfinite(samples)], level), n)


def difference(treated: Values, control: Values, level: float = LEVEL, seed: int = SEED) -> Interval:
    """mean(treated) - mean(control), with the interval of the difference of resampled means."""
    return _compare(treated, control, np.subtract, level, seed)


def ratio(treated: Values, control: Values, level: float = LEVEL, seed: int = SEED) -> Interval:
    """mean(treated) / mean(control), with its interval; NaN where the control's mean is 0."""
    return _compare(treated, control, np.divide, level, seed)


# --- per task ---------------------------------------------------------------------------------

# summary key -> (per-task column, scale to the summary's unit); the per-task means of the headline
TASK_MEANS: dict[str, tuple[str, float]] = {
    "task_s_mean": ("duration_ns", 1e-9),
    "flows_per_task": ("flows", 1.0),
    "new_flows_per_task": ("new_flows", 1.0),
    "peers_per_task": ("peers", 1.0),
    "llm_calls_per_task": ("llm_calls", 1.0),
    "packets_per_task": ("packets", 1.0),
    "bytes_per_task": ("bytes", 1.0),
    **{f"{column}_per_task": (column, 1.0) for column in LOOP},
}


def units(per_task: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The measured tasks grouped into the units an interval resamples: the repetitions when a run
    has several (tasks within one repetition share its conditions, so they are not independent of
    each other across repetitions), else the tasks themselves."""
    counted = per_task[~per_task["warmup"]]
    if counted["repetition"].nunique() >= MIN_UNITS:
        numeric = counted.select_dtypes("number")
        return numeric.groupby(counted["repetition"]).mean(), "repetitions"
    return counted, "tasks"


# --- concurrency ------------------------------------------------------------------------------


def concurrent_flows(flows: pd.DataFrame) -> pd.DataFrame:
    """`flows` (node, start_ns, end_ns): per node, the number of its connections open at once and how
    long (ns) that number held, between the node's first open and its last close: a time-weighted
    distribution."""
    if flows.empty:
        return pd.DataFrame({"node": [], "open": [], "duration_ns": []})
    edges = pd.concat(
        [
            pd.DataFrame({"node": flows["node"], "ts_ns": flows["start_ns"], "step": 1}),
            pd.DataFrame({"node": flows["node"], "ts_ns": flows["end_ns"], "step": -1}),
        ],
        ignore_index=True,
    ).sort_values(["node", "ts_ns", "step"], ascending=[True, True, False])
    edges["open"] = edges.groupby("node")["step"].cumsum()
    edges["duration_ns"] = edges.groupby("node")["ts_ns"].shift(-1) - edges["ts_ns"]
    held = edges.dropna(subset=["duration_ns"])
    return held.loc[held["duration_ns"] > 0, ["node", "open", "duration_ns"]].reset_index(drop=True)
