"""The hand-model interface and the built-in hand.

Every hand model maps the project's parameters (see ``handvla.hand.motion``) to 21 joints in OpenPose
order, in metres, with joint 0 exactly at ``wrist_pos``; models with a mesh also return 778 vertices.
``HandModel.joints_from_rotations`` is the same map from rotation matrices (differentiable, for 6D
features). Models are made by name in ``handvla.hand.registry`` (the built-in hand here, MANO in
``handvla.hand.mano``), which also runs motions through them.

``BuiltinHand`` is the default everywhere: MANO's 16-joint topology and joint order, adult bone lengths,
10 shape coefficients with a meaning (size, finger length, palm width, ...), forward kinematics. Its
rest pose is a flat hand with the fingers along +x, the palm facing -y and (right hand) the thumb on the
-z side; the left hand is its mirror image through the x = 0 plane, so mirroring a pose right <-> left is
``(x, y, z) -> (x, -y, -z)`` per joint, as with MANO.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from handvla.hand.rotations import axis_angle_to_matrix
from handvla.hand.topology import MANO_FINGERS, MANO_PARENTS, MANO_TO_OPENPOSE, NUM_BETAS, check_side

#: MANO joints attached to each tip, in tip order (thumb, index, middle, ring, little)
TIP_PARENTS = (15, 3, 6, 12, 9)
#: MANO joint indices by depth in the tree (all parents of a level are in the previous level)
_LEVELS = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))


@dataclass
class HandOutput:
    joints: torch.Tensor  # (B, 21, 3) OpenPose order, metres
    verts: torch.Tensor | None = None  # (B, 778, 3) metres, models with a mesh only


def forward_kinematics(
    rot_mats: torch.Tensor, rest_joints: torch.Tensor, rest_tips: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Pose MANO's 16-joint tree.

    rot_mats: (B, 16, 3, 3) local rotations (0 = global), rest_joints: (B, 16, 3), rest_tips: (B, 5, 3).
    Returns global rotations (B, 16, 3, 3), joint positions (B, 16, 3) relative to the rest root, and tip
    positions (B, 5, 3) (None without rest_tips). The rest pose has identity joint frames, as in MANO.
    """
    B = rot_mats.shape[0]
    G = [None] * 16
    P = [None] * 16
    G[0] = rot_mats[:, 0]
    P[0] = rest_joints[:, 0]
    parents = MANO_PARENTS
    for level in _LEVELS:
        idx = list(level)
        par = [int(parents[i]) for i in idx]
        Gp = torch.stack([G[p] for p in par], 1)  # (B, 5, 3, 3)
        Pp = torch.stack([P[p] for p in par], 1)
        bone = rest_joints[:, idx] - rest_joints[:, par]  # (B, 5, 3)
        pos = Pp + (Gp @ bone[..., None])[..., 0]
        rot = Gp @ rot_mats[:, idx]
        for k, i in enumerate(idx):
            G[i], P[i] = rot[:, k], pos[:, k]
    G_all = torch.stack(G, 1)
    P_all = torch.stack(P, 1)
    tips = None
    if rest_tips is not None:
        tp = list(TIP_PARENTS)
        off = rest_tips - rest_joints[:, tp]
        tips = P_all[:, tp] + (G_all[:, tp] @ off[..., None])[..., 0]
    assert G_all.shape == (B, 16, 3, 3)
    return G_all, P_all, tips


def _as_batch(x: torch.Tensor | np.ndarray, shape_tail: tuple[int, ...], ref: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x, dtype=ref.dtype, device=ref.device)
    if x.dim() == len(shape_tail):
        x = x.expand((ref.shape[0],) + shape_tail)
    return x


class HandModel(nn.Module):
    """Interface: parameters -> joints (and vertices). Subclasses implement ``rest_joints_and_tips``
    and may override ``forward`` to add a mesh."""

    name: str = "hand"
    has_mesh: bool = False
    side: str

    def rest_joints_and_tips(self, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 10) -> rest joints (B, 16, 3) and tips (B, 5, 3) in the model frame (metres)."""
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        return torch.float32

    def forward(
        self,
        global_orient: torch.Tensor,
        hand_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        wrist_pos: torch.Tensor | None = None,
    ) -> HandOutput:
        """global_orient (B, 3), hand_pose (B, 15, 3) or (B, 45), betas (B, 10) or (10,), wrist_pos (B, 3)."""
        global_orient = torch.as_tensor(global_orient, dtype=self.dtype)
        B = global_orient.shape[0]
        hand_pose = torch.as_tensor(hand_pose, dtype=self.dtype).reshape(B, 15, 3)
        betas = torch.zeros(NUM_BETAS, dtype=self.dtype) if betas is None else betas
        betas = _as_batch(betas, (NUM_BETAS,), global_orient)
        rot = axis_angle_to_matrix(torch.cat([global_orient[:, None], hand_pose], 1))  # (B, 16, 3, 3)
        wrist = None if wrist_pos is None else _as_batch(wrist_pos, (3,), global_orient)
        return HandOutput(joints=self.joints_from_rotations(rot, betas, wrist))

    def joints_from_rotations(
        self, rot_mats: torch.Tensor, betas: torch.Tensor, wrist_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Differentiable: local rotation matrices (B, 16, 3, 3) (0 = the wrist, then the 15 finger joints in
        the flat convention), betas (B, 10), wrist_pos (B, 3) -> joints (B, 21, 3) in OpenPose order with
        ``joints[:, 0] == wrist_pos`` (the origin when None). ``forward`` is this on axis-angle inputs;
        callers that hold matrices (6D features) skip the detour through axis-angle."""
        J, tips_rest = self.rest_joints_and_tips(betas)
        _, P, tips = forward_kinematics(rot_mats, J, tips_rest)
        joints = torch.cat([P, tips], 1)[:, torch.as_tensor(MANO_TO_OPENPOSE)]
        joints = joints - joints[:, :1]
        return joints if wrist_pos is None else joints + wrist_pos[:, None]

    def mano_transl(self, betas: torch.Tensor, wrist_pos: torch.Tensor) -> torch.Tensor:
        """MANO's ``transl`` for a wanted wrist position: transl = wrist_pos - J0(betas)."""
        betas = torch.as_tensor(betas, dtype=self.dtype)
        J, _ = self.rest_joints_and_tips(betas.reshape(-1, NUM_BETAS))
        return torch.as_tensor(wrist_pos, dtype=self.dtype) - J[:, 0].reshape(betas.shape[:-1] + (3,))

    def palm_normal(self, rest_joints: torch.Tensor) -> torch.Tensor:
        """(B, 16, 3) -> (B, 3) unit normal pointing out of the palm (the side fingers flex towards)."""
        a = rest_joints[:, 1] - rest_joints[:, 0]  # wrist -> index MCP
        b = rest_joints[:, 7] - rest_joints[:, 0]  # wrist -> little MCP
        n = F.normalize(torch.cross(a, b, dim=-1), dim=-1)  # right hand: index x little points out of the palm (-y)
        return n if self.side == "right" else -n

    def anatomical_frames(self, betas: torch.Tensor | None = None) -> torch.Tensor:
        """Rest-pose frames of the 15 finger joints, (B, 15, 3, 3), columns (twist, spread, bend).

        twist = the bone leaving the joint; bend = the axis whose positive rotation flexes the finger
        towards the palm; spread = bend x twist. Joint limits and the conversion to angles, including the
        sign convention that makes both hands share one limit table, are in ``handvla.hand.anatomy``.
        """
        betas = torch.zeros(1, NUM_BETAS, dtype=self.dtype) if betas is None else torch.as_tensor(betas, dtype=self.dtype)
        betas = betas.reshape(-1, NUM_BETAS)
        J, tips = self.rest_joints_and_tips(betas)
        pts = torch.cat([J, tips], 1)  # (B, 21, 3): MANO 16 then tips thumb, index, middle, ring, little
        n = self.palm_normal(J)
        tip_of = {3: 17, 6: 18, 9: 20, 12: 19, 15: 16}  # last joint of each finger -> its tip in ``pts``
        frames = []
        for i in range(1, 16):
            child = tip_of.get(i, i + 1)
            twist = F.normalize(pts[:, child] - pts[:, i], dim=-1)
            flex_dir = n
            if i in MANO_FINGERS["thumb"]:
                # The thumb flexes across the palm, towards the little finger's base.
                across = F.normalize(J[:, 7] - J[:, 13], dim=-1)
                flex_dir = F.normalize(n + across, dim=-1)
            bend = F.normalize(torch.cross(twist, flex_dir, dim=-1), dim=-1)
            spread = torch.cross(bend, twist, dim=-1)
            frames.append(torch.stack([twist, spread, bend], -1))
        return torch.stack(frames, 1)


# ---------------------------------------------------------------------------------------------------------
# The built-in hand
# ---------------------------------------------------------------------------------------------------------

# Right hand, metres. Finger bases (MCP) and bone lengths of an average adult hand (hand length ~18.5 cm).
_FINGER_BASES = {
    "index": (0.088, 0.000, -0.024),
    "middle": (0.092, 0.000, -0.003),
    "ring": (0.086, 0.000, 0.016),
    "little": (0.076, 0.000, 0.033),
    "thumb": (0.024, -0.012, -0.020),  # the CMC joint
}
_FINGER_DIRS = {
    "index": (1.0, 0.0, -0.08),
    "middle": (1.0, 0.0, 0.0),
    "ring": (1.0, 0.0, 0.07),
    "little": (1.0, 0.0, 0.15),
    "thumb": (0.70, -0.25, -0.70),
}
#: proximal, middle, distal (thumb: metacarpal, proximal, distal); the last bone ends at the tip
_BONE_LENGTHS = {
    "index": (0.039, 0.023, 0.019),
    "middle": (0.044, 0.027, 0.020),
    "ring": (0.041, 0.026, 0.020),
    "little": (0.032, 0.019, 0.018),
    "thumb": (0.040, 0.032, 0.027),
}
_TIP_FINGER_ORDER = ("thumb", "index", "middle", "ring", "little")

#: what each of the 10 shape coefficients does, and by how much per unit (relative change)
BETA_MEANING = (
    ("overall size", 0.07),
    ("finger phalanx length (index..little)", 0.05),
    ("palm width", 0.08),
    ("thumb length", 0.06),
    ("palm length", 0.05),
    ("index length", 0.04),
    ("middle length", 0.04),
    ("ring length", 0.04),
    ("little length", 0.04),
    ("thumb distal length", 0.05),
)


class BuiltinHand(HandModel):
    """A MANO-topology skeletal hand that needs no licensed files. Joints only (no mesh)."""

    name = "builtin"
    has_mesh = False

    def __init__(self, side: str = "right"):
        super().__init__()
        self.side = check_side(side)
        bases = np.zeros((16, 3), np.float32)
        dirs = np.zeros((16, 3), np.float32)  # direction of the bone leaving each joint
        lengths = np.zeros(16, np.float32)
        for finger, (j1, j2, j3) in MANO_FINGERS.items():
            d = np.asarray(_FINGER_DIRS[finger], np.float32)
            d /= np.linalg.norm(d)
            bases[j1] = _FINGER_BASES[finger]
            for j, L in zip((j1, j2, j3), _BONE_LENGTHS[finger]):
                dirs[j] = d
                lengths[j] = L
        mirror = np.array([-1.0 if side == "left" else 1.0, 1.0, 1.0], np.float32)
        self.register_buffer("_bases", torch.from_numpy(bases * mirror), persistent=False)
        self.register_buffer("_dirs", torch.from_numpy(dirs * mirror), persistent=False)
        self.register_buffer("_lengths", torch.from_numpy(lengths), persistent=False)
        # Which shape coefficient scales what: (16,) per-bone multipliers for each beta, relative.
        fingers4 = ("index", "middle", "ring", "little")
        bone_w = np.zeros((NUM_BETAS, 16), np.float32)
        for f in fingers4:
            for j in MANO_FINGERS[f]:
                bone_w[1, j] = 1.0
        for j in MANO_FINGERS["thumb"]:
            bone_w[3, j] = 1.0
        for k, f in enumerate(fingers4):
            for j in MANO_FINGERS[f]:
                bone_w[5 + k, j] = 1.0
        bone_w[9, MANO_FINGERS["thumb"][2]] = 1.0
        scales = np.array([s for _, s in BETA_MEANING], np.float32)
        self.register_buffer("_bone_w", torch.from_numpy(bone_w * scales[:, None]), persistent=False)
        self.register_buffer("_scales", torch.from_numpy(scales), persistent=False)

    def rest_joints_and_tips(self, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        betas = betas.to(self._bases.dtype)
        B = betas.shape[0]
        size = 1 + betas[:, 0:1] * self._scales[0]  # (B, 1)
        bases = self._bases.expand(B, 16, 3).clone()
        # palm width: spread the finger bases sideways (z); palm length: move them along x
        bases = bases * torch.stack(
            [1 + betas[:, 4] * self._scales[4], torch.ones_like(betas[:, 0]), 1 + betas[:, 2] * self._scales[2]], -1
        )[:, None]
        bone_len = self._lengths * (1 + betas @ self._bone_w)  # (B, 16)
        bone = self._dirs * bone_len[..., None]  # (B, 16, 3) the bone leaving each joint
        J = torch.zeros(B, 16, 3, dtype=betas.dtype, device=betas.device)
        tips = []
        for j1, j2, j3 in MANO_FINGERS.values():
            J[:, j1] = bases[:, j1]
            J[:, j2] = J[:, j1] + bone[:, j1]
            J[:, j3] = J[:, j2] + bone[:, j2]
        for finger in _TIP_FINGER_ORDER:
            j3 = MANO_FINGERS[finger][2]
            tips.append(J[:, j3] + bone[:, j3])
        tips_t = torch.stack(tips, 1)
        return J * size[..., None], tips_t * size[..., None]
