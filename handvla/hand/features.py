"""Motion features MANO-D51 / D99 / D109 / D114 / D162: the single source of truth for their layouts.

Per hand and frame (``rot`` = axis-angle "aa" or the 6D first-two-columns form, see ``rotations``):

| name | layout (in this order)                                     | dims |
| D51  | finger pose aa 45, wrist rotation aa 3, wrist position 3   | 51   |
| D99  | finger pose 6D 90, wrist rotation 6D 6, wrist position 3   | 99   |
| D109 | D99 + betas 10                                             | 109  |
| D114 | D51 + 21 joints x 3                                        | 114  |
| D162 | D99 + 21 joints x 3                                        | 162  |

Wrist position is in metres. The 21 joints (OpenPose order) are wrist-centred; by default they are also
expressed in the hand's own frame (``joints_frame="local"``: global rotation removed), so they describe
finger articulation and shape only and belong to the finger part. ``joints_frame="camera"`` keeps the
camera-frame orientation (wrist-centred joints as a MANO layer with the wrist as centre joint gives them).

Part split for the part-level tokenizer: wrist part = wrist rotation + position (6 or 9 dims); finger part
= finger pose (+ betas) (+ the 20 non-wrist joints, 60 dims; the wrist joint is identically zero).
For D162 that is 9 + 150 dims.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from handvla.errors import InputError
from handvla.hand import rotations as R
from handvla.hand.model import HandModel
from handvla.hand.motion import HandMotion
from handvla.hand.registry import motion_output

FEATURE_SETS = ("D51", "D99", "D109", "D114", "D162")
PARTS = ("wrist", "finger")


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    rot: str  # "aa" or "6d"
    has_betas: bool
    has_joints: bool
    joints_frame: str = "local"

    @property
    def rot_dim(self) -> int:
        return 3 if self.rot == "aa" else 6

    def layout(self) -> list[tuple[str, int]]:
        """Ordered (field, size) of the full feature vector."""
        out = [("hand_pose", 15 * self.rot_dim), ("global_orient", self.rot_dim), ("wrist_pos", 3)]
        if self.has_betas:
            out.append(("betas", 10))
        if self.has_joints:
            out.append(("joints", 63))
        return out

    @property
    def dim(self) -> int:
        return sum(n for _, n in self.layout())

    def slices(self) -> dict[str, slice]:
        out, i = {}, 0
        for field, n in self.layout():
            out[field] = slice(i, i + n)
            i += n
        return out

    def part_indices(self, part: str) -> np.ndarray:
        """Indices into the full feature vector that make up ``part`` ('wrist' or 'finger')."""
        s = self.slices()
        if part == "wrist":
            return np.r_[s["global_orient"], s["wrist_pos"]]
        if part == "finger":
            idx = [np.arange(s["hand_pose"].start, s["hand_pose"].stop)]
            if self.has_betas:
                idx.append(np.arange(s["betas"].start, s["betas"].stop))
            if self.has_joints:
                idx.append(np.arange(s["joints"].start + 3, s["joints"].stop))  # skip the zero wrist joint
            return np.concatenate(idx)
        raise InputError(None, "part", f"one of {PARTS}", repr(part))

    def part_dim(self, part: str) -> int:
        return len(self.part_indices(part))


def feature_spec(name: str, joints_frame: str = "local") -> FeatureSpec:
    """Look up a feature set by name (case-insensitive, 'MANO-' prefix allowed)."""
    key = str(name).upper().removeprefix("MANO-").removeprefix("MANO_")
    if key not in FEATURE_SETS:
        raise InputError(None, "features", f"one of {', '.join(FEATURE_SETS)}", repr(name))
    if joints_frame not in ("local", "camera"):
        raise InputError(None, "joints_frame", "'local' or 'camera'", repr(joints_frame))
    rot = "aa" if key in ("D51", "D114") else "6d"
    return FeatureSpec(key, rot, key == "D109", key in ("D114", "D162"), joints_frame)


def _encode_rot(aa: torch.Tensor, rot: str) -> torch.Tensor:
    return aa if rot == "aa" else R.axis_angle_to_rot6d(aa)


def _decode_rot(x: torch.Tensor, rot: str) -> torch.Tensor:
    return x if rot == "aa" else R.rot6d_to_axis_angle(x)


def params_to_features(
    spec: FeatureSpec,
    global_orient: torch.Tensor,
    hand_pose: torch.Tensor,
    wrist_pos: torch.Tensor,
    betas: torch.Tensor | None = None,
    joints: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pack (T, 3), (T, 15, 3), (T, 3), betas (T, 10)|(10,), joints (T, 21, 3) camera frame -> (T, D)."""
    T = global_orient.shape[0]
    parts = [
        _encode_rot(hand_pose.reshape(T, 15, 3), spec.rot).reshape(T, -1),
        _encode_rot(global_orient, spec.rot),
        wrist_pos,
    ]
    if spec.has_betas:
        if betas is None:
            raise InputError(None, "betas", f"shape coefficients for {spec.name}", "None")
        parts.append(betas.expand(T, 10) if betas.dim() == 1 else betas)
    if spec.has_joints:
        if joints is None:
            raise InputError(None, "joints", f"(T, 21, 3) joints for {spec.name}", "None")
        rel = joints - joints[:, :1]
        if spec.joints_frame == "local":
            rel = rel @ R.axis_angle_to_matrix(global_orient)  # == (R^T rel^T)^T: into the hand frame
        parts.append(rel.reshape(T, 63))
    return torch.cat([p.to(global_orient.dtype) for p in parts], -1)


def features_to_params(spec: FeatureSpec, feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """(T, D) -> global_orient (T, 3), hand_pose (T, 15, 3), wrist_pos (T, 3) [, betas, joints_rel]."""
    if feats.shape[-1] != spec.dim:
        raise InputError(None, "features", f"last dimension {spec.dim} for {spec.name}", str(tuple(feats.shape)))
    s = spec.slices()
    lead = feats.shape[:-1]
    out = {
        "hand_pose": _decode_rot(feats[..., s["hand_pose"]].reshape(lead + (15, spec.rot_dim)), spec.rot),
        "global_orient": _decode_rot(feats[..., s["global_orient"]], spec.rot),
        "wrist_pos": feats[..., s["wrist_pos"]],
    }
    if spec.has_betas:
        out["betas"] = feats[..., s["betas"]]
    if spec.has_joints:
        out["joints_rel"] = feats[..., s["joints"]].reshape(lead + (21, 3))
    return out


def motion_to_features(
    spec: FeatureSpec, motion: HandMotion, hand_model: HandModel | str = "builtin"
) -> torch.Tensor:
    """A ``HandMotion`` -> (T, D) float32 features. Sets with joints take them from ``hand_model`` (a model
    of the motion's side or a model name, see ``handvla.hand.registry.motion_output``)."""
    # copies: the arrays may be read-only views (memory-mapped or from parquet)
    go = torch.tensor(motion.global_orient)
    hp = torch.tensor(motion.hand_pose)
    wp = torch.tensor(motion.wrist_pos)
    betas = torch.tensor(motion.betas)
    joints = motion_output(motion, hand_model).joints if spec.has_joints else None
    return params_to_features(spec, go, hp, wp, betas, joints)


def features_to_joints(
    spec: FeatureSpec, feats: torch.Tensor, betas: torch.Tensor, hand_model: HandModel
) -> torch.Tensor:
    """Differentiable: raw features (B, W, D) + betas (B, 10) -> joints (B, W, 21, 3) in metres, in the
    features' frame (wrist joint at the decoded wrist position).

    The rotations go straight from their feature form (6D by Gram-Schmidt, or axis-angle) to matrices and
    through ``HandModel.joints_from_rotations``: no detour through axis-angle, whose conversion from a
    matrix has branch switches that make gradients noisy."""
    B, W = feats.shape[:2]
    f = feats.reshape(B * W, spec.dim)
    b = betas[:, None].expand(B, W, betas.shape[-1]).reshape(B * W, -1)
    s = spec.slices()
    to_mat = R.rot6d_to_matrix if spec.rot == "6d" else R.axis_angle_to_matrix
    hand_pose = to_mat(f[:, s["hand_pose"]].reshape(B * W, 15, spec.rot_dim))
    mats = torch.cat([to_mat(f[:, s["global_orient"]])[:, None], hand_pose], 1)  # (BW, 16, 3, 3)
    return hand_model.joints_from_rotations(mats, b, f[:, s["wrist_pos"]]).reshape(B, W, -1, 3)


def split_parts(spec: FeatureSpec, feats: torch.Tensor) -> dict[str, torch.Tensor]:
    """(..., D) -> {'wrist': (..., Dw), 'finger': (..., Df)}."""
    return {p: feats[..., torch.as_tensor(spec.part_indices(p))] for p in PARTS}


def merge_parts(spec: FeatureSpec, parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """Inverse of ``split_parts`` (the wrist joint of the joint block is filled with zeros)."""
    w = parts["wrist"]
    out = w.new_zeros(w.shape[:-1] + (spec.dim,))
    for p in PARTS:
        out[..., torch.as_tensor(spec.part_indices(p))] = parts[p]
    return out


class FeatureNormalizer:
    """Per-dimension mean/std normalisation, fitted on training features and saved with the tokenizer."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor, min_std: float = 1e-3):
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.std = torch.as_tensor(std, dtype=torch.float32).clamp(min=min_std)

    @classmethod
    def fit(cls, feats: list[torch.Tensor] | torch.Tensor, min_std: float = 1e-3) -> FeatureNormalizer:
        x = torch.cat(list(feats), 0) if isinstance(feats, (list, tuple)) else feats.reshape(-1, feats.shape[-1])
        x = x.double()
        return cls(x.mean(0).float(), x.std(0).float(), min_std)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x)) / self.std.to(x)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std.to(x) + self.mean.to(x)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_state_dict(cls, d: dict[str, torch.Tensor]) -> FeatureNormalizer:
        return cls(d["mean"], d["std"], min_std=0.0)
