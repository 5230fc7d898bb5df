"""One action space across embodiments: Being-H0.5's published 200-d slot layout, and the per-dataset
mapping of a robot's state and action vectors into it.

The layout (state and action share it; slot ranges are [start, end) in the 200-d vector)::

    eef_position 0:3, eef_rotation 3:6 (axis-angle), 6:9 reserved       right arm end effector
    left_eef_position 9:12, left_eef_rotation 12:15, 15:18 reserved      left arm end effector
    gripper_position 18:19, left_gripper_position 19:20                  grippers (0 closed, 1 open)
    dexhand_position 20:26, dexhand_extension 26:32                      right dexterous hand
    left_dexhand_position 32:38, left_dexhand_extension 38:44            left dexterous hand
    libero_gripper_position 44:46, 46:50 reserved
    arm_joint_position 50:57, left_arm_joint_position 57:64              arm joints (7-DoF)
    head_position 64:66, waist_position 66:69, 69:70 reserved
    base_position 70:73, base_motion 73:74, control_mode 74:75, 75:76    mobile base
    76:90 reserved
    right_beta 90:100, left_beta 100:110                                 human hands, MANO shape (state only)
    right_theta 110:155, left_theta 155:200                              human hands, MANO pose (axis-angle)

A dataset declares where its vectors go (`EmbodimentMap`, the posttrain config's ``data.embodiment``)::

    embodiment:
      name: franka_inspire
      state:  [{slot: arm_joint_position, index: "0:7"}, {slot: dexhand_position, index: "7:13"}]
      action: [{slot: arm_joint_position, index: "0:7"}, {slot: dexhand_position, index: "7:13"}]

``slot`` is a slot name or an explicit range ``"start:end"`` (for a reserved region); ``index`` lists the
dataset vector's dimensions (a list or ``"a:b"``), which fill the slot's first dimensions in order. Every
action dimension must be mapped (the policy must produce all of them); state dimensions may be left out
(e.g. privileged simulator values). Unmapped slots are zero and masked out of the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field, field_validator

from handvla.config import ConfigModel
from handvla.errors import ConfigError

UNIFIED_DIM = 200
SLOTS: dict[str, tuple[int, int]] = {
    "eef_position": (0, 3),
    "eef_rotation": (3, 6),
    "left_eef_position": (9, 12),
    "left_eef_rotation": (12, 15),
    "gripper_position": (18, 19),
    "left_gripper_position": (19, 20),
    "dexhand_position": (20, 26),
    "dexhand_extension": (26, 32),
    "left_dexhand_position": (32, 38),
    "left_dexhand_extension": (38, 44),
    "libero_gripper_position": (44, 46),
    "arm_joint_position": (50, 57),
    "left_arm_joint_position": (57, 64),
    "head_position": (64, 66),
    "waist_position": (66, 69),
    "base_position": (70, 73),
    "base_motion": (73, 74),
    "control_mode": (74, 75),
    "right_beta": (90, 100),
    "left_beta": (100, 110),
    "right_theta": (110, 155),
    "left_theta": (155, 200),
}


def _range(text: str, what: str) -> tuple[int, int]:
    a, sep, b = text.partition(":")
    try:
        lo, hi = int(a), int(b)
    except ValueError:
        raise ValueError(f"{what} {text!r}: expected 'start:end'") from None
    if not sep or not 0 <= lo < hi:
        raise ValueError(f"{what} {text!r}: expected 'start:end' with 0 <= start < end")
    return lo, hi


class SlotAssignment(ConfigModel):
    """Dataset dimensions ``index`` -> the first dimensions of ``slot``."""

    slot: str = Field(..., description=f"a slot name ({', '.join(SLOTS)}) or 'start:end' in 0..{UNIFIED_DIM}")
    index: list[int] | str = Field(..., description="the dataset vector's dimensions: a list or 'a:b'")

    @field_validator("slot")
    @classmethod
    def _slot(cls, v: str) -> str:
        if v not in SLOTS:
            lo, hi = _range(v, "slot")
            if hi > UNIFIED_DIM:
                raise ValueError(f"slot {v!r}: the unified space has {UNIFIED_DIM} dimensions")
        return v

    def slot_range(self) -> tuple[int, int]:
        return SLOTS[self.slot] if self.slot in SLOTS else _range(self.slot, "slot")

    def indices(self) -> list[int]:
        if isinstance(self.index, str):
            return list(range(*_range(self.index, "index")))
        return [int(i) for i in self.index]


class EmbodimentMap(ConfigModel):
    """Where one embodiment's state and action dimensions live in the unified space (module doc)."""

    name: str = Field(..., min_length=1)
    state: list[SlotAssignment] = Field(default_factory=list)
    action: list[SlotAssignment] = Field(..., min_length=1)

    def resolve(self, state_dim: int, action_dim: int, where: str = "embodiment") -> ResolvedMap:
        """Index arrays for vectors of these sizes; ConfigError naming the field when the map does not fit."""
        return ResolvedMap(
            self.name,
            *_resolve(self.state, state_dim, f"{where}.state", require_all=False),
            *_resolve(self.action, action_dim, f"{where}.action", require_all=True),
        )


def _resolve(assignments: list[SlotAssignment], dim: int, where: str, require_all: bool):
    src: list[int] = []
    dst: list[int] = []
    for j, a in enumerate(assignments):
        idx = a.indices()
        lo, hi = a.slot_range()
        if len(idx) > hi - lo:
            raise ConfigError(
                f"{where}[{j}]: {len(idx)} dimensions do not fit slot {a.slot!r} ({hi - lo} wide, {lo}:{hi})"
            )
        bad = [i for i in idx if not 0 <= i < dim]
        if bad:
            raise ConfigError(f"{where}[{j}].index: {bad} outside the dataset vector's {dim} dimensions")
        src += idx
        dst += list(range(lo, lo + len(idx)))
    if len(set(src)) != len(src):
        raise ConfigError(f"{where}: a dataset dimension is mapped twice")
    if len(set(dst)) != len(dst):
        raise ConfigError(f"{where}: two assignments write the same unified dimensions")
    if require_all and sorted(src) != list(range(dim)):
        missing = sorted(set(range(dim)) - set(src))
        raise ConfigError(
            f"{where}: dimensions {missing} are not mapped (the policy must produce every action)"
        )
    return np.asarray(src, np.int64), np.asarray(dst, np.int64)


@dataclass(frozen=True)
class ResolvedMap:
    """`EmbodimentMap` as index arrays: dataset dims ``*_src`` <-> unified dims ``*_dst``."""

    name: str
    state_src: np.ndarray
    state_dst: np.ndarray
    action_src: np.ndarray
    action_dst: np.ndarray

    def state_to_unified(self, x):
        return _scatter(x, self.state_src, self.state_dst)

    def action_to_unified(self, x):
        return _scatter(x, self.action_src, self.action_dst)

    def action_from_unified(self, y):
        out = y[..., self.action_dst]
        order = np.argsort(self.action_src)
        return out[..., order]

    def action_mask(self) -> np.ndarray:
        """(200,) bool: the unified dimensions this embodiment's actions use."""
        m = np.zeros(UNIFIED_DIM, bool)
        m[self.action_dst] = True
        return m


def _scatter(x, src: np.ndarray, dst: np.ndarray):
    """(..., D) -> (..., 200) with x[..., src] at dst and zeros elsewhere (numpy or torch)."""
    if isinstance(x, np.ndarray):
        out = np.zeros((*x.shape[:-1], UNIFIED_DIM), x.dtype)
        out[..., dst] = x[..., src]
        return out
    out = torch.zeros((*x.shape[:-1], UNIFIED_DIM), dtype=x.dtype, device=x.device)
    out[..., torch.as_tensor(dst, device=x.device)] = x[..., torch.as_tensor(src, device=x.device)]
    return out
