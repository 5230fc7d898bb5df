"""``HandMotion``: one hand's motion over time, in the project's single parameter convention.

Convention (every adapter converts to this; every consumer reads this):
- ``global_orient`` (T, 3): wrist rotation, axis-angle, in the camera (or world) frame of the episode.
- ``hand_pose`` (T, 15, 3): finger joint rotations, axis-angle, relative to the parent joint, MANO joint
  order (index, middle, little, ring, thumb; base to tip), *flat* convention (no ``hands_mean`` added:
  zero pose = the flat template hand).
- ``wrist_pos`` (T, 3): position of the wrist joint in metres, same frame as ``global_orient``. This is
  not MANO's ``transl`` (which offsets the shape-dependent root): see ``HandModel.mano_transl``.
- ``betas`` (10,): shape coefficients of the hand model named by ``hand_model``.
- ``valid`` (T,): False where the hand was not observed (values there are meaningless).
- ``side``: 'left' or 'right'; ``fps``: frames per second.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from handvla.errors import InputError
from handvla.hand.topology import NUM_BETAS, NUM_FINGER_JOINTS, check_side


@dataclass
class HandMotion:
    global_orient: np.ndarray  # (T, 3) axis-angle
    hand_pose: np.ndarray  # (T, 15, 3) axis-angle, flat convention
    wrist_pos: np.ndarray  # (T, 3) metres
    betas: np.ndarray = field(default_factory=lambda: np.zeros(NUM_BETAS, np.float32))  # (10,)
    side: str = "right"
    fps: float = 15.0
    valid: np.ndarray | None = None  # (T,) bool; None = all valid
    hand_model: str = "builtin"

    def __post_init__(self) -> None:
        self.global_orient = np.asarray(self.global_orient, np.float32)
        self.hand_pose = np.asarray(self.hand_pose, np.float32)
        self.wrist_pos = np.asarray(self.wrist_pos, np.float32)
        self.betas = np.asarray(self.betas, np.float32)
        check_side(self.side)
        T = self.global_orient.shape[0] if self.global_orient.ndim == 2 else -1
        if self.global_orient.shape != (T, 3):
            raise InputError("HandMotion", "global_orient", "shape (T, 3)", str(self.global_orient.shape))
        if self.hand_pose.shape == (T, NUM_FINGER_JOINTS * 3):
            self.hand_pose = self.hand_pose.reshape(T, NUM_FINGER_JOINTS, 3)
        if self.hand_pose.shape != (T, NUM_FINGER_JOINTS, 3):
            raise InputError("HandMotion", "hand_pose", f"shape ({T}, 15, 3) or ({T}, 45)", str(self.hand_pose.shape))
        if self.wrist_pos.shape != (T, 3):
            raise InputError("HandMotion", "wrist_pos", f"shape ({T}, 3)", str(self.wrist_pos.shape))
        if self.betas.shape != (NUM_BETAS,):
            raise InputError("HandMotion", "betas", "shape (10,)", str(self.betas.shape))
        if self.valid is None:
            self.valid = np.ones(T, bool)
        self.valid = np.asarray(self.valid, bool)
        if self.valid.shape != (T,):
            raise InputError("HandMotion", "valid", f"shape ({T},)", str(self.valid.shape))
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise InputError("HandMotion", "fps", "a positive number", str(self.fps))

    def __len__(self) -> int:
        return self.global_orient.shape[0]

    @property
    def duration_s(self) -> float:
        return len(self) / self.fps

    def slice(self, start: int, stop: int) -> HandMotion:
        """Frames [start, stop)."""
        return replace(
            self,
            global_orient=self.global_orient[start:stop],
            hand_pose=self.hand_pose[start:stop],
            wrist_pos=self.wrist_pos[start:stop],
            valid=self.valid[start:stop],
        )

    def to_dict(self) -> dict[str, np.ndarray]:
        """Arrays and scalars for ``np.savez`` (the param-file format read by the CLI)."""
        return {
            "global_orient": self.global_orient,
            "hand_pose": self.hand_pose,
            "wrist_pos": self.wrist_pos,
            "betas": self.betas,
            "valid": self.valid,
            "side": np.array(self.side),
            "fps": np.array(self.fps, np.float32),
            "hand_model": np.array(self.hand_model),
        }

    @classmethod
    def from_dict(cls, d, where: str = "HandMotion") -> HandMotion:
        missing = [k for k in ("global_orient", "hand_pose", "wrist_pos") if k not in d]
        if missing:
            raise InputError(where, missing[0], "a hand-parameter array (global_orient, hand_pose, wrist_pos)", "missing")
        try:
            return cls(
                global_orient=np.asarray(d["global_orient"]),
                hand_pose=np.asarray(d["hand_pose"]),
                wrist_pos=np.asarray(d["wrist_pos"]),
                betas=np.asarray(d["betas"]) if "betas" in d else np.zeros(NUM_BETAS, np.float32),
                side=str(np.asarray(d["side"])) if "side" in d else "right",
                fps=float(np.asarray(d["fps"])) if "fps" in d else 15.0,
                valid=np.asarray(d["valid"]) if "valid" in d else None,
                hand_model=str(np.asarray(d["hand_model"])) if "hand_model" in d else "builtin",
            )
        except InputError as e:
            raise InputError(where, e.field, e.expected, e.got) from None
