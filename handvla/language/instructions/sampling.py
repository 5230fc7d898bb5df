"""Balanced subsets: a target number of samples split over task types and sources.

Strata are (source, task type). The total is split over task types by ``task_weights`` (UniHand-2.5M's
1.6M / 0.4M / 0.5M generation / translation / prediction by default), then each task type's share over the
sources that have candidates of that type, by ``source_balance``:
- 'uniform' (default): every source the same share (small sources are repeated, large ones subsampled),
- 'sqrt': shares proportional to the square root of the source's candidate count,
- 'proportional': shares proportional to the candidate counts (no rebalancing),
or explicit ``source_weights``. Quotas are whole numbers by the largest-remainder method, so they add up
to exactly the target. A stratum with at least its quota of candidates is sampled without replacement;
a smaller one contributes every candidate once and the rest drawn with replacement (reported). A task type
with no candidates at all gives its share to the others (reported). Everything is seeded: the same
candidates, target and seed give the same subset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import Field, model_validator

from handvla.config import ConfigModel
from handvla.errors import ConfigError
from handvla.language.annotate.base import stable_hash
from handvla.language.instructions.templates import TASK_TYPES

#: UniHand-2.5M: 1.6M generation, 0.4M translation, 0.5M contextual prediction
DEFAULT_TASK_WEIGHTS = {"generation": 1.6, "translation": 0.4, "prediction": 0.5}
SOURCE_BALANCE = ("uniform", "sqrt", "proportional")


class InstructionBalanceConfig(ConfigModel):
    """The balanced subset of instruction samples: its size, seed, task-type weights and source shares."""

    size: int
    seed: int = 0
    task_weights: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_TASK_WEIGHTS))
    source_balance: str = "uniform"
    source_weights: dict[str, float] | None = None  # explicit shares per source (override source_balance)

    @model_validator(mode="after")
    def _check(self) -> InstructionBalanceConfig:
        if self.size < 0:
            raise ConfigError(f"--size: expected a whole number >= 0, got {self.size!r}")
        bad = [k for k in self.task_weights if k not in TASK_TYPES]
        if bad:
            raise ConfigError(f"task weights: unknown task type(s) {bad}; expected {TASK_TYPES}")
        for k, v in self.task_weights.items():
            if not (math.isfinite(v) and v >= 0):
                raise ConfigError(f"task weight of {k}: expected a number >= 0, got {v!r}")
        if sum(self.task_weights.values()) <= 0:
            raise ConfigError("task weights: at least one must be positive")
        if self.source_balance not in SOURCE_BALANCE:
            raise ConfigError(
                f"--source-balance: expected one of {SOURCE_BALANCE}, got {self.source_balance!r}"
            )
        if self.source_weights is not None:
            for k, v in self.source_weights.items():
                if not (math.isfinite(v) and v >= 0):
                    raise ConfigError(f"source weight of {k}: expected a number >= 0, got {v!r}")
        return self


def parse_task_weights(text: str) -> dict[str, float]:
    """'1.6,0.4,0.5' (generation, translation, prediction) or 'generation=1.6,prediction=0.5'."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        if all("=" in p for p in parts):
            out = {k.strip(): float(v) for k, v in (p.split("=", 1) for p in parts)}
        elif len(parts) == len(TASK_TYPES):
            out = dict(zip(TASK_TYPES, (float(p) for p in parts)))
        else:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--proportions: expected three numbers (generation,translation,prediction) or name=weight pairs, got {text!r}"
        ) from None
    InstructionBalanceConfig(size=0, task_weights=out)  # validates
    return out


def largest_remainder(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Whole-number quotas proportional to ``weights`` that add up to ``total`` (ties: name order)."""
    names = sorted(weights)
    w = np.array([max(0.0, float(weights[n])) for n in names])
    if total <= 0 or w.sum() <= 0:
        return {n: 0 for n in names}
    exact = total * w / w.sum()
    base = np.floor(exact).astype(int)
    rest = total - int(base.sum())
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - base[i]), names[i]))
    for i in order[:rest]:
        base[i] += 1
    return {n: int(b) for n, b in zip(names, base)}


def _source_shares(counts: dict[str, int], cfg: InstructionBalanceConfig) -> dict[str, float]:
    if cfg.source_weights is not None:
        return {s: float(cfg.source_weights.get(s, 0.0)) for s in counts}
    if cfg.source_balance == "uniform":
        return {s: 1.0 for s in counts}
    if cfg.source_balance == "sqrt":
        return {s: math.sqrt(n) for s, n in counts.items()}
    return {s: float(n) for s, n in counts.items()}


def balanced_sample(
    strata: dict[tuple[str, str], np.ndarray], cfg: InstructionBalanceConfig
) -> tuple[np.ndarray, dict[str, Any]]:
    """Pick ``cfg.size`` candidate indices from ``strata`` ({(source, task type): candidate indices}).

    Returns the indices (shuffled) and a report: target and resulting proportions per task type and per
    source, and per stratum the candidates available, the quota and whether it was drawn with replacement.
    """
    tasks_present = {t for (_, t), idx in strata.items() if len(idx)}
    weights = {t: w for t, w in cfg.task_weights.items() if w > 0}
    lost = sorted(t for t in weights if t not in tasks_present)
    usable = {t: w for t, w in weights.items() if t in tasks_present}
    if cfg.size and not usable:
        raise ConfigError(
            "no candidates for any task type with a positive weight "
            f"(weights {cfg.task_weights}, task types with candidates {sorted(tasks_present)})"
        )
    task_quota = largest_remainder(int(cfg.size), usable)
    picked: list[np.ndarray] = []
    report_strata = []
    for t in TASK_TYPES:
        q_t = task_quota.get(t, 0)
        if q_t == 0:
            continue
        counts = {s: len(idx) for (s, tt), idx in strata.items() if tt == t and len(idx)}
        shares = {s: w for s, w in _source_shares(counts, cfg).items() if w > 0}
        if not shares:
            raise ConfigError(f"task type {t}: every source with candidates has weight 0")
        quota = largest_remainder(q_t, shares)
        for s in sorted(quota):
            q = quota[s]
            idx = strata[(s, t)]
            rng = np.random.default_rng(
                [int(cfg.seed) & 0xFFFFFFFF, stable_hash(s) & 0xFFFFFFFF, TASK_TYPES.index(t)]
            )
            n = len(idx)
            if q <= n:
                sel = idx[rng.choice(n, size=q, replace=False)] if q else idx[:0]
                replaced = False
            else:
                extra = idx[rng.choice(n, size=q - n, replace=True)]
                sel = np.concatenate([idx[rng.permutation(n)], extra])
                replaced = True
            picked.append(sel)
            report_strata.append(
                {
                    "source": s,
                    "task_type": t,
                    "available": n,
                    "quota": q,
                    "with_replacement": replaced,
                    "repeats": max(0, q - n),
                }
            )
    out = np.concatenate(picked) if picked else np.zeros(0, np.int64)
    out = out[np.random.default_rng([int(cfg.seed) & 0xFFFFFFFF, 7]).permutation(len(out))]
    total = max(1, len(out))
    by_task = {t: sum(r["quota"] for r in report_strata if r["task_type"] == t) for t in TASK_TYPES}
    sources = sorted({s for s, _ in strata})
    by_source = {s: sum(r["quota"] for r in report_strata if r["source"] == s) for s in sources}
    wsum = sum(weights.values()) or 1.0
    report = {
        "size": int(len(out)),
        "seed": int(cfg.seed),
        "source_balance": "explicit" if cfg.source_weights is not None else cfg.source_balance,
        "task_types": {
            t: {
                "target_share": round(weights.get(t, 0.0) / wsum, 4),
                "count": by_task[t],
                "share": round(by_task[t] / total, 4),
                "available": int(sum(len(i) for (_, tt), i in strata.items() if tt == t)),
            }
            for t in TASK_TYPES
        },
        "sources": {s: {"count": by_source[s], "share": round(by_source[s] / total, 4)} for s in sources},
        "strata": report_strata,
        "strata_with_replacement": [
            f"{r['source']}/{r['task_type']}" for r in report_strata if r["with_replacement"]
        ],
        "task_types_without_candidates": lost,
    }
    return out, report
