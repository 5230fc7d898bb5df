"""Small statistics helpers for reporting rates: Wilson score intervals of binomial proportions, and the
exact McNemar test of two methods scored on the same trials.

A rate measured on n trials (say 0.63 = 19 of 30 target pairs) says little without its uncertainty: the
Wilson 95 % interval of 19 of 30 is [0.455, 0.778]. The Wilson interval (Wilson 1927) keeps its coverage
near the nominal level for small n and for rates near 0 or 1, where the normal ("Wald") interval collapses
to a point; it is what ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` returns.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from handvla.errors import InputError

#: two-sided 95 % quantile of the standard normal (scipy.stats.norm.ppf(0.975)); "1.96"
Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval (lo, hi) of a binomial proportion: ``successes`` of ``n`` trials, ``z`` the
    normal quantile (default the two-sided 95 % one, 1.96). Returns (0.0, 1.0) for n = 0 (nothing known);
    the ends are exactly 0 / 1 at 0 / n successes."""
    if isinstance(n, bool) or int(n) != n or n < 0:
        raise InputError("wilson_interval", "n", "a whole number >= 0", repr(n))
    if isinstance(successes, bool) or int(successes) != successes or not 0 <= successes <= n:
        raise InputError("wilson_interval", "successes", f"a whole number in [0, n = {n}]", repr(successes))
    if not (math.isfinite(z) and z > 0):
        raise InputError("wilson_interval", "z", "a positive normal quantile", repr(z))
    n, successes = int(n), int(successes)
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def rate_summary(hits: Iterable[bool], prefix: str = "", z: float = Z95) -> dict[str, object]:
    """{``prefix``: the rate (None without trials), ``prefix_ci95``: [lo, hi] (None without trials),
    ``prefix_n``: trials, ``prefix_successes``} of 0/1 outcomes; with ``prefix=""`` the keys are ``rate``,
    ``ci95``, ``n``, ``successes``."""
    h = [bool(x) for x in hits]
    k, n = sum(h), len(h)
    name = prefix or "rate"
    pre = f"{prefix}_" if prefix else ""
    return {
        name: k / n if n else None,
        f"{pre}ci95": list(wilson_interval(k, n, z)) if n else None,
        f"{pre}n": n,
        f"{pre}successes": k,
    }


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value from the discordant pair counts: trials only method a got right and
    trials only method b got right (a binomial test of ``only_a`` of their sum at 1/2; 1.0 without any)."""
    from scipy.stats import binomtest

    for name, v in (("only_a", only_a), ("only_b", only_b)):
        if isinstance(v, bool) or int(v) != v or v < 0:
            raise InputError("mcnemar_exact", name, "a whole number >= 0", repr(v))
    n = int(only_a) + int(only_b)
    return 1.0 if n == 0 else float(binomtest(int(only_a), n, 0.5).pvalue)


def paired_comparison(a: Iterable[bool], b: Iterable[bool]) -> dict[str, object]:
    """Method b against method a on the same trials (``a[i]``, ``b[i]``: trial i right): ``won`` (only b
    right), ``lost`` (only a right), ``n`` trials and the exact McNemar ``p``."""
    a, b = [bool(x) for x in a], [bool(x) for x in b]
    if len(a) != len(b):
        raise InputError("paired_comparison", "b", f"{len(a)} outcomes, one per trial of a", f"{len(b)}")
    won = sum(y and not x for x, y in zip(a, b))
    lost = sum(x and not y for x, y in zip(a, b))
    return {"won": won, "lost": lost, "n": len(a), "p": mcnemar_exact(lost, won)}


__all__ = ["Z95", "mcnemar_exact", "paired_comparison", "rate_summary", "wilson_interval"]
