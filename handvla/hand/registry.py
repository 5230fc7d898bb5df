"""Hand models by name, and the one path from a ``HandMotion`` to its joints.

- ``load_hand_model(name, side, mano_dir)``: the factory, a new model ('builtin', or 'mano' from the
  licensed files in ``mano_dir``). Use it to own a model (to move it to a device, to train through it).
- ``shared_hand_model(name, side, mano_dir)``: the process-wide instance per (name, side, mano_dir),
  loaded once (thread-safe). Callers must not modify it.
- ``motion_output`` / ``motion_joints``: a motion through a hand model (a ``HandModel``, a name, or None
  for the motion's own ``hand_model``), without gradients: joints (T, 21, 3) in metres in the motion's
  frame, OpenPose order, ``joints[:, 0] == wrist_pos``; ``motion_output`` also gives a mesh model's
  vertices.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch

from handvla.errors import ConfigError, InputError
from handvla.hand.mano import MANOHand
from handvla.hand.model import BuiltinHand, HandModel, HandOutput
from handvla.hand.motion import HAND_MODELS, HandMotion
from handvla.hand.topology import check_side

_SHARED: dict[tuple[str, str, str | None], HandModel] = {}
_LOCK = threading.Lock()


def load_hand_model(
    name: str = "builtin", side: str = "right", mano_dir: str | Path | None = None
) -> HandModel:
    """A new hand model: 'builtin' (default) or 'mano' (needs ``mano_dir``)."""
    check_side(side)
    if name == "builtin":
        return BuiltinHand(side)
    if name == "mano":
        return MANOHand.from_dir(mano_dir, side)
    raise ConfigError(f"unknown hand model {name!r}: expected one of {', '.join(HAND_MODELS)}")


def shared_hand_model(
    name: str = "builtin", side: str = "right", mano_dir: str | Path | None = None
) -> HandModel:
    """The process-wide model for (name, side, mano_dir), loaded on first use (see the module docstring)."""
    key = (name, side, None if mano_dir is None else str(mano_dir))
    with _LOCK:
        if key not in _SHARED:
            _SHARED[key] = load_hand_model(name, side, mano_dir)
        return _SHARED[key]


def hand_model_for(
    motion: HandMotion,
    hand_model: HandModel | str | None = None,
    mano_dir: str | Path | None = None,
    where: str = "hand_model",
) -> HandModel:
    """The model a motion goes through: ``hand_model`` itself (checked: a ``HandModel`` of the motion's
    side), ``shared_hand_model`` of a name, or of the motion's own ``hand_model`` name when None."""
    if hand_model is None or isinstance(hand_model, str):
        return shared_hand_model(hand_model or motion.hand_model, motion.side, mano_dir)
    if not isinstance(hand_model, HandModel):
        raise InputError(where, "hand_model", "a HandModel, a model name or None", type(hand_model).__name__)
    if getattr(hand_model, "side", motion.side) != motion.side:
        raise InputError(where, "hand_model", f"a {motion.side} hand model", f"a {hand_model.side} one")
    return hand_model


@torch.no_grad()
def motion_output(
    motion: HandMotion, hand_model: HandModel | str | None = None, mano_dir: str | Path | None = None
) -> HandOutput:
    """Joints (T, 21, 3) and, for a mesh model, vertices (T, V, 3) of a motion (tensors, no gradients).

    ``hand_model``: a model of the motion's side, a model name, or None (the motion's own ``hand_model``);
    names resolve to ``shared_hand_model``.
    """
    model = hand_model_for(motion, hand_model, mano_dir, "motion_output")
    return model(  # torch.tensor copies: a motion's arrays may be read-only views (stores, parquet)
        torch.tensor(motion.global_orient),
        torch.tensor(motion.hand_pose),
        torch.tensor(motion.betas),
        torch.tensor(motion.wrist_pos),
    )


def motion_joints(
    motion: HandMotion, hand_model: HandModel | str | None = None, mano_dir: str | Path | None = None
) -> np.ndarray:
    """(T, 21, 3) joints of a motion in metres, its frame, OpenPose order, in the model's dtype (float32
    for the built-in hand and MANO); ``hand_model`` as for ``motion_output``."""
    return motion_output(motion, hand_model, mano_dir).joints.numpy()
