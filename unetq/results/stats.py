"""The statistics of the headline table: mean +- standard deviation over seeds, and the change
against full precision with Welch's t interval (two samples, unequal variances)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from scipy.special import stdtrit

LEVEL = 0.95


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (n - 1; None for one value) and count of some values."""

    mean: float
    sd: float | None
    n: int


@dataclass(frozen=True)
class Difference:
    """mean(x) - mean(y), with its ``LEVEL`` interval (None when a side has fewer than 2 values)."""

    delta: float
    low: float | None = None
    high: float | None = None
    df: float | None = None

    @property
    def contains_zero(self) -> bool:
        """True when the interval exists and holds 0: the difference cannot be told from noise."""
        return self.low is not None and self.low <= 0.0 <= self.high


def summarize(values: Sequence[float]) -> Summary:
    """Mean and sample standard deviation of ``values`` (at least one)."""
    n = len(values)
    if n == 0:
        raise ValueError("summarize: no values")
    mean = math.fsum(values) / n
    if n == 1:
        return Summary(mean, None, 1)
    return Summary(mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)), n)


def welch(x: Sequence[float], y: Sequence[float], level: float = LEVEL) -> Difference:
    """mean(x) - mean(y) and, when both have 2 or more values, Welch's t interval: standard error
    sqrt(sx^2/nx + sy^2/ny), Welch-Satterthwaite degrees of freedom, the t quantile from scipy.special.stdtrit
    (the inverse of Student's t distribution function; scipy.stats is slow to import)."""
    sx, sy = summarize(x), summarize(y)
    delta = sx.mean - sy.mean
    if sx.sd is None or sy.sd is None:
        return Difference(delta)
    vx, vy = sx.sd ** 2 / sx.n, sy.sd ** 2 / sy.n
    se = math.sqrt(vx + vy)
    if se == 0.0:                      # identical values on both sides: no spread to widen by
        return Difference(delta, delta, delta, math.inf)
    df = (vx + vy) ** 2 / (vx ** 2 / (sx.n - 1) + vy ** 2 / (sy.n - 1))
    half = float(stdtrit(df, 0.5 + level / 2)) * se
    return Difference(delta, delta - half, delta + half, df)


def pooled_sd(groups: Sequence[Sequence[float]]) -> tuple[float, int] | None:
    """The pooled standard deviation of several groups (sum of squared deviations over the sum of
    n - 1) and its degrees of freedom; None when no group has 2 or more values."""
    ss, dof = 0.0, 0
    for values in groups:
        if len(values) >= 2:
            s = summarize(values)
            ss += s.sd ** 2 * (s.n - 1)
            dof += s.n - 1
    return (math.sqrt(ss / dof), dof) if dof else None
