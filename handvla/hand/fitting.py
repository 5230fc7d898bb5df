"""Fit hand parameters to 3D joint sequences: (T, 21, 3) metres -> ``HandMotion`` for any ``HandModel``.

What is optimised, per sequence of T frames (N of them observed):
- per frame: the wrist rotation (as ``R_init @ exp(delta)``, a residual on the initial rotation, so the
  optimiser never meets the axis-angle singularity at pi), the 15 finger rotations (axis-angle) and the
  wrist position;
- per sequence: one ``betas`` (bone lengths / shape) with a Gaussian prior, and, for recordings whose point
  0 is the PALM CENTRE (Leap Motion), the position of that point in the palm frame (see below).

Loss (every term summed over frames) = data (mean over the 21 points of the squared error, cm^2) + soft
anatomical joint limits + temporal smoothness + betas prior. Two methods (``FitConfig.method``):

- ``'fast'`` (default): the analytic initialisation below, then ``gn_iters`` (3) batched Gauss-Newton /
  Levenberg-Marquardt iterations on data + limits + betas prior with analytic Jacobians, every frame at
  once and the shape shared by the sequence (``handvla.hand.ik``: per frame a 51-unknown arrow-shaped
  system, the shared shape by a Schur complement), then the temporal smoothing as a low-pass of the
  fitted parameters (the smoothing spline of each parameter track at ``acc_hz``, finger rotations also
  damped at ``vel_hz``). Device-agnostic torch (``FitConfig.device``). On the shared real captures it is
  more accurate than 'lbfgs' and several times faster (``benchmarks/fitting.py`` prints both).
- ``'lbfgs'``: smoothness inside the loss (acceleration of all parameters, velocity of the finger
  rotations, weighted as below) and the whole loss minimised by L-BFGS; CPU only.

The smoothness weights are set by a cutoff frequency (``acc_hz``): each parameter is weighted by how far
it moves the joints, so above the cutoff the penalty outweighs the data for every parameter alike (a
4th-order low-pass on the fit; 8 Hz by default).

Initialisation does most of the work, all of it batched over frames (no Python loop over frames):
(0) betas from bone lengths: the rest skeleton whose bones and palm distances best match the median
observed ones (pose-independent; a few Gauss-Newton steps); (1) the wrist rotation from a
Procrustes/Kabsch fit of the model's rest palm points (wrist, thumb CMC, four MCPs: one rigid body in
MANO's tree) to the observed ones, and the wrist position from their centroids; (2) each finger rotation
as the swing that points the rest bone along the observed bone in its parent's frame, level by level (all
frames, all five fingers at once); (3) the same low-pass as the smoothness terms applied to these
per-frame estimates. The 'lbfgs' method then runs two L-BFGS stages: the global parameters (wrist, shape,
palm offset) with the fingers fixed, then everything. Its unknowns are scaled so that a unit step moves
the joints by about a centimetre whatever their unit (L-BFGS converges slowly when curvatures differ by
orders of magnitude).

Units: joints must be in metres. Joints whose median finger bone is longer than 0.5 (millimetres or
centimetres) are refused with an ``InputError`` naming the field (``handvla hand fit --units mm``
converts).

Fit quality (``FitResult.summary()``, printed by ``handvla hand fit``): the error in mm (mean and 95th
percentile over frames), the worst frames (index, mm), and ``beyond_limits_deg``: per finger, the mean and
max over frames of the largest angle (over the finger's 3 joints x twist/spread/bend) past the strict
literature limits, in degrees. A few degrees are normal for real trackers (see the margin below).

Anatomical limits (degrees) are stated in the frames of ``HandModel.anatomical_frames()`` (columns twist,
spread, bend), from datasets.md (manotorch's anatomy loss). The angles are the components of each joint's
axis-angle along those axes. For a left hand the twist and spread components are negated before the
comparison, because the left model's anatomical frames are right-handed like the right hand's (not its
mirror image), so a mirrored pose would otherwise read as the opposite twist and spread.
``limit_margin_deg`` widens every limit on both sides (default 10 deg): real trackers report some
hyperextension, MCP spread beyond +-5 deg when the hand splays, and a little twist, and a strict prior
would trade fit error for it. Set it to 0 for the literature values.

Point 0 as the palm centre (``root_is_palm``, Leap files): the palm (wrist, thumb CMC and the four MCPs)
is one rigid body in MANO's tree, so the palm centre is a fixed point in the wrist frame. It is modelled
as ``wrist_pos + R_wrist @ palm_offset`` with ``palm_offset`` (3,) a per-sequence unknown, initialised as
the median over frames of the observed palm centre expressed in the Kabsch palm frame, and optimised with
the rest. We chose this over a fixed combination of wrist and MCPs because the measured offset differs
between recordings (palm centre to middle MCP: about 2 cm in most Leap clips, about 5 cm in one), which
a fixed combination cannot absorb without biasing the wrist; the Leap thumb's first point is its CMC
base, the same point as the model's thumb CMC, so nothing else changes. The wrist is then estimated (no
Leap clip observes it): it sits where the model's rest geometry puts it relative to the palm points.

Palm landmarks (``FitConfig.landmark_offsets``, on by default): sources do not put the wrist, the thumb's
CMC and the MCPs where the model has its joint centres (an RGB detector's landmarks follow the skin and its
own hand model; a tracker's palm is its own template), and the model's palm is one rigid body whose shape
only the 10 betas move. So each of these six points is modelled as the model's joint plus a per-sequence
offset in the wrist frame (``FitResult.landmark_offsets``, reported in mm per landmark by ``summary()``),
with a weak Gaussian prior; the palm centre above is row 0 of the same offsets. Being rigid in the wrist
frame, they cannot absorb finger articulation; they stop a palm the betas cannot shape from tilting the
wrist and bending the fingers. On the shared real files: MediaPipe 4.59 -> 3.38 mm, Leap 2.37 -> 1.66 mm
(``benchmarks/fitting.py``); on synthetic data with known offsets they are only partly identifiable (the
shape moves the palm joints too) but bring the model's joints closer to the truth (tests).

Gaps: a frame is fitted when all 21 points are finite. Other frames are filled from the nearest fitted
frames on each side (``HandMotion.filled``: slerp for every rotation, linear for the wrist position, the
nearest fitted frame before the first / after the last) and get ``valid = False``. Smoothness terms only
link frames that are adjacent in the input and both fitted.

Time: smoothness terms use the timestamps (non-uniform finite differences), so a dropped frame is a
longer step, not a jump; spacings are clamped to at least half the nominal 1/fps because trackers stamp
some frames a fraction of a millisecond apart (the Leap clips: 0.5 ms to 37 ms around 9 ms). The weights
are in physical units (per second and per s^2), so they behave the same at 15 and at 120 fps. The output
``HandMotion`` has one frame per input frame at the nominal fps: resample the joints first
(``JointsRecording.resample``) for a uniform motion at another rate.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import model_validator
from scipy.linalg import solveh_banded
from tqdm import tqdm

from handvla.config import ConfigModel
from handvla.errors import ConfigError, InputError
from handvla.hand import anatomy
from handvla.hand.ik import (
    OFFSET_POINTS,
    GaussNewtonFitter,
    GNState,
    offset_rows,
    rest_points_and_jacobian,
)
from handvla.hand.metrics import similarity_transform
from handvla.hand.model import HandModel
from handvla.hand.motion import HandMotion
from handvla.hand.registry import shared_hand_model
from handvla.hand.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    quaternion_to_matrix,
)
from handvla.hand.topology import MANO_FINGERS, MANO_TO_OPENPOSE, NUM_BETAS, NUM_JOINTS, OPENPOSE_PARENTS

# --------------------------------------------------------------------------------------------------------
# Anatomical limits
# --------------------------------------------------------------------------------------------------------


def limits_rad(margin_deg: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(15, 3) lower and upper limits in radians (columns twist, spread, bend), widened by ``margin_deg``."""
    lo, hi = anatomy.limits_rad(margin_deg)
    return torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)


def anatomical_angles(hand_pose: torch.Tensor, frames: torch.Tensor, side: str) -> torch.Tensor:
    """(B, 15, 3) axis-angle + frames (1 or B, 15, 3, 3) -> (B, 15, 3) radians (twist, spread, bend);
    mirror-consistent (see ``handvla.hand.anatomy``)."""
    return anatomy.pose_to_anatomical(hand_pose, frames.to(hand_pose.dtype), side)


def limit_violation(angles: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """(B, 15, 3) radians -> (B, 15, 3) radians outside [lo, hi] (0 inside)."""
    return torch.relu(angles - hi) + torch.relu(lo - angles)


# --------------------------------------------------------------------------------------------------------
# Configuration and result
# --------------------------------------------------------------------------------------------------------


class FitConfig(ConfigModel):
    """Weights are relative to the data term: per frame, the mean over the 21 points of the squared error
    in cm^2, summed over frames. Limits and smoothness are summed over frames too; the betas prior is
    once per sequence (a Gaussian prior, so long clips let the data speak)."""

    # 'fast': analytic initialisation, ``gn_iters`` batched Gauss-Newton iterations (data, limits and shape;
    # ``handvla.hand.ik``), then the low-pass; 'lbfgs': the joint L-BFGS optimisation of data, limits and
    # smoothness (``global_iters`` + ``iters``), about 10-30x slower.
    method: Literal["fast", "lbfgs"] = "fast"
    gn_iters: int = 3  # Gauss-Newton iterations of the fast method
    device: str = "cpu"  # torch device of the fast method's refinement ('cuda' on a GPU)
    iters: int = 50  # L-BFGS iterations of the full stage (method 'lbfgs')
    global_iters: int = 5  # L-BFGS iterations of the global stage (wrist, shape, landmark offsets)
    fit_betas: bool = True
    w_betas: float = 1.0  # Gaussian prior on betas (unit variance), for the whole sequence
    # Every shape coefficient stays within +-betas_bound. They are in standard deviations of the model's
    # training hands: beyond about 3 the shape is no longer a hand, and 21 joints do not determine all ten
    # (with a weak prior, w_betas <= 0.03, unbounded fits ran off to |beta| 10-10000 and 5-90 mm errors).
    betas_bound: float = 3.0
    w_limits: float = 30.0  # per squared radian outside the limits, summed over joints and axes
    limit_margin_deg: float = 10.0
    # Per-sequence offsets of the six palm landmarks (the wrist, the thumb's CMC, the four MCPs) from the
    # model's joints, in the wrist frame (see the module doc), with the Gaussian prior
    # sum (o / landmark_offset_mm)^2 over their 18 coordinates: an offset of that size costs as much as one
    # frame fitted 1 cm off at every point, so clips of more than a few tens of frames let the data decide.
    # The palm centre of ``root_is_palm`` data is always fitted, without a prior.
    landmark_offsets: bool = True
    landmark_offset_mm: float = 10.0
    # Temporal smoothness as cutoff frequencies (0 = off). Each parameter's acceleration (velocity) is
    # weighted by how far it moves the joints (its lever arm on the rest hand), so ``acc_hz`` is, for every
    # parameter alike, the frequency above which the acceleration penalty outweighs the data: a
    # 4th-order low-pass on the fit. Hand motion has little above 5 Hz; tracker jitter is broadband.
    acc_hz: float = 8.0  # wrist position, wrist rotation and finger rotations
    vel_hz: float = 30.0  # finger rotations only: a light damping of what the joints do not determine
    history_size: int = 20
    # The fit's tensors are small (frames x 15 x 3 x 3): one thread avoids synchronisation overhead that
    # costs more than it gains. Fit several files in parallel processes to use more cores. 0 = leave as is.
    num_threads: int = 1

    @model_validator(mode="after")
    def _check(self) -> FitConfig:
        for name in ("iters", "global_iters", "gn_iters", "history_size", "num_threads"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"fitting: {name} must be a non-negative integer, got {v!r}")
        for name in ("w_betas", "w_limits", "limit_margin_deg", "acc_hz", "vel_hz"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ConfigError(f"fitting: {name} must be a non-negative number, got {v!r}")
        if not (np.isfinite(self.betas_bound) and self.betas_bound > 0):
            raise ConfigError(f"fitting: betas_bound must be a positive number, got {self.betas_bound!r}")
        if not (np.isfinite(self.landmark_offset_mm) and self.landmark_offset_mm > 0):
            raise ConfigError(
                f"fitting: landmark_offset_mm must be a positive number, got {self.landmark_offset_mm!r}"
            )
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError) as e:
            raise ConfigError(
                f"fitting: device must be a torch device such as 'cpu' or 'cuda', got {self.device!r}"
            ) from e
        return self


_OPENPOSE_NAMES = {
    0: "wrist",
    1: "thumb_cmc",
    5: "index_mcp",
    9: "middle_mcp",
    13: "ring_mcp",
    17: "little_mcp",
}
#: the palm landmarks of ``FitResult.landmark_offsets``' rows (row 0 is the palm centre for palm-centre data)
LANDMARK_NAMES = tuple(_OPENPOSE_NAMES[i] for i in OFFSET_POINTS)


@dataclass
class FitResult:
    motion: HandMotion  # the fitted parameters, T frames, gaps interpolated and valid=False
    fit_mpjpe_mm: float  # mean joint error over observed frames and points
    per_frame_mpjpe_mm: np.ndarray  # (T,) NaN where not observed
    # (T, 21, 3) the model's points in metres, as compared with the data: its joints, the palm landmarks
    # moved by ``landmark_offsets`` (point 0 = palm centre when root_is_palm)
    joints: np.ndarray
    frames_per_s: float
    seconds: float
    root_is_palm: bool = False
    palm_offset: np.ndarray | None = None  # (3,) metres, wrist frame, when root_is_palm
    #: (6, 3) metres, wrist frame: how far the source's palm landmarks (``LANDMARK_NAMES``) sit from the
    #: model's joints (``FitConfig.landmark_offsets``; row 0 = ``palm_offset`` for palm-centre data, the
    #: other rows zero when only that is fitted); None when none were fitted
    landmark_offsets: np.ndarray | None = None
    #: per finger, how far the fitted angles go past the strict (literature) anatomical limits, in degrees:
    #: per frame the largest excess over the finger's 3 joints x 3 axes, then its mean and max over the
    #: observed frames (see ``beyond_limits_report``). Real trackers report a few degrees of
    #: hyperextension and splay; the fit allows ``FitConfig.limit_margin_deg`` before penalising.
    beyond_limits_deg: dict = field(default_factory=dict)
    stats: dict = field(default_factory=dict)

    def worst_frames(self, k: int = 5) -> list[dict]:
        """The ``k`` observed frames with the largest mean joint error: [{'frame', 'error_mm'}]."""
        e = self.per_frame_mpjpe_mm
        idx = np.flatnonzero(np.isfinite(e))
        top = idx[np.argsort(-e[idx], kind="stable")[:k]]
        return [{"frame": int(i), "error_mm": round(float(e[i]), 2)} for i in top]

    def summary(self) -> dict:
        """JSON-friendly numbers."""
        return {
            "fit_mpjpe_mm": self.fit_mpjpe_mm,
            "fit_mpjpe_p95_mm": float(np.nanpercentile(self.per_frame_mpjpe_mm, 95)),
            "frames": len(self.motion),
            "observed_frames": int(self.motion.valid.sum()),
            "frames_per_s": self.frames_per_s,
            "seconds": self.seconds,
            "root_is_palm": self.root_is_palm,
            "landmark_offsets_mm": None
            if self.landmark_offsets is None
            else {  # in OpenPose order: wrist, thumb, index, middle, ring, little
                LANDMARK_NAMES[r]: round(float(np.linalg.norm(self.landmark_offsets[r])) * 1000, 1)
                for r in np.argsort(OFFSET_POINTS)
            },
            "beyond_limits_deg": self.beyond_limits_deg,
            "worst_frames": self.worst_frames(),
            "betas": [round(float(b), 4) for b in self.motion.betas],
            **self.stats,
        }


#: the fingers of the quality report and their rows of ``hand_pose`` (MANO order)
_FINGER_ROWS = {f: [j - 1 for j in MANO_FINGERS[f]] for f in ("thumb", "index", "middle", "ring", "little")}


def beyond_limits_report(beyond_deg: np.ndarray) -> dict:
    """(N, 15, 3) degrees past the strict limits (0 inside) -> per finger {'mean', 'max'} over frames of
    the per-frame largest excess among the finger's 3 joints x 3 axes (degrees, rounded to 0.1)."""
    out = {}
    for finger, rows in _FINGER_ROWS.items():
        per_frame = (
            beyond_deg[:, rows].reshape(beyond_deg.shape[0], -1).max(-1) if len(beyond_deg) else np.zeros(1)
        )
        out[finger] = {"mean": round(float(per_frame.mean()), 1), "max": round(float(per_frame.max()), 1)}
    return out


# --------------------------------------------------------------------------------------------------------
# Building blocks (all batched over frames)
# --------------------------------------------------------------------------------------------------------

#: OpenPose index of each MANO joint (0..15) and of each tip (16..20, thumb, index, middle, ring, little)
_OP_OF_MANO21 = np.argsort(MANO_TO_OPENPOSE)
#: rigid palm points in OpenPose order: wrist, thumb CMC, index/middle/ring/little MCP
PALM_POINTS = (0, 1, 5, 9, 13, 17)
#: the finger joints of each tree level in MANO order, and the 21-point index of each one's child
_LEVEL_JOINTS = ((1, 4, 7, 10, 13), (2, 5, 8, 11, 14), (3, 6, 9, 12, 15))
_CHILD = {j: j + 1 for j in range(1, 16)}
_CHILD.update({3: 17, 6: 18, 9: 20, 12: 19, 15: 16})


def _swing(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Axis-angle of the smallest rotation taking unit u to unit v, (..., 3) x2 -> (..., 3)."""
    axis = torch.cross(u, v, dim=-1)
    s = axis.norm(dim=-1, keepdim=True)
    c = (u * v).sum(-1, keepdim=True)
    angle = torch.atan2(s, c)
    return axis * torch.where(s > 1e-8, angle / s.clamp(min=1e-8), torch.ones_like(s))


#: OpenPose order of the 20 non-wrist points from the finger-major (index, middle, little, ring, thumb) x
#: (3 joints + tip) layout used by ``local_joints_fn``
_FINGER_MAJOR_TO_OPENPOSE = torch.as_tensor(
    [16, 17, 18, 19, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11]
)
_TIP_OF_FINGER = (17, 18, 20, 19, 16)  # 21-point index of the tip of index, middle, little, ring, thumb


def _uses_base_forward(model: HandModel) -> bool:
    return type(model).forward is HandModel.forward


def local_joints_fn(model: HandModel) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A function (pose (N, 15, 3), betas (10,)) -> (N, 21, 3) joints with the wrist at the origin and
    no global rotation (OpenPose order, metres).

    Models that keep ``HandModel.forward`` get a faster equivalent: the rest skeleton is built once per
    call (one shape for the whole sequence) and the five fingers are posed together, level by level.
    Models that override ``forward`` (a mesh model whose tips are vertices) go through it.
    """
    if not _uses_base_forward(model):

        def through_model(pose: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
            N = pose.shape[0]
            return model(pose.new_zeros(N, 3), pose, betas).joints

        return through_model

    def fast(pose: torch.Tensor, betas: torch.Tensor) -> torch.Tensor:
        N = pose.shape[0]
        J, tips = model.rest_joints_and_tips(betas.reshape(1, NUM_BETAS))  # (1, 16, 3), (1, 5, 3)
        pts = torch.cat([J, tips], 1)[0] - J[0, 0]  # (21, 3) wrist at the origin
        base = pts[1:16].reshape(5, 3, 3)  # (finger, level, xyz), MANO finger order
        tip = pts[list(_TIP_OF_FINGER)]  # (5, 3)
        chain = torch.cat([base, tip[:, None]], 1)  # (5, 4, 3): joint 1..3 and tip
        bones = chain[:, 1:] - chain[:, :-1]  # (5, 3, 3): the bone leaving each joint
        rot = axis_angle_to_matrix(pose.reshape(N, 5, 3, 3))  # (N, 5, 3, 3, 3)
        G = rot[:, :, 0]  # (N, 5, 3, 3) global frame of the level-1 joints (the wrist is identity)
        p = chain[:, 0].expand(N, 5, 3)
        out = [p]
        for lvl in range(3):
            p = p + (G @ bones[:, lvl, :, None])[..., 0]
            out.append(p)
            if lvl < 2:
                G = G @ rot[:, :, lvl + 1]
        finger_major = torch.stack(out, 2).reshape(N, 20, 3)  # (N, finger x 4 points, 3)
        return torch.cat([pose.new_zeros(N, 1, 3), finger_major[:, _FINGER_MAJOR_TO_OPENPOSE]], 1)

    return fast


def init_finger_pose(R_wrist: torch.Tensor, obs: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    """Swing-only inverse kinematics: (N, 3, 3) wrist rotations, (N, 21, 3) observed and (21, 3) rest
    points (OpenPose order) -> (N, 15, 3) axis-angle finger rotations in MANO order."""
    N = obs.shape[0]
    rest21 = rest[torch.as_tensor(_OP_OF_MANO21)]  # (21, 3) MANO order + tips
    obs21 = obs[:, torch.as_tensor(_OP_OF_MANO21)]  # (N, 21, 3)
    pose = obs.new_zeros(N, 15, 3)
    G_parent = R_wrist[:, None].expand(N, 5, 3, 3)
    for level in _LEVEL_JOINTS:
        idx = torch.as_tensor(level)
        child = torch.as_tensor([_CHILD[j] for j in level])
        u = torch.nn.functional.normalize(rest21[child] - rest21[idx], dim=-1).expand(N, 5, 3)
        v_world = torch.nn.functional.normalize(obs21[:, child] - obs21[:, idx], dim=-1)
        v = (G_parent.transpose(-1, -2) @ v_world[..., None])[..., 0]  # in the parent's frame
        aa = _swing(u, v)  # (N, 5, 3)
        pose[:, idx - 1] = aa
        G_parent = G_parent @ axis_angle_to_matrix(aa)
    return pose


#: point pairs whose distance is the same in every pose: the finger bones, and every pair of palm points
#: (wrist, thumb CMC, four MCPs: one rigid body), which carry the palm's width and length
_RIGID_PAIRS = sorted(
    {(int(p), c) for c, p in enumerate(OPENPOSE_PARENTS) if p >= 0}
    | {(a, b) for i, a in enumerate(PALM_POINTS) for b in PALM_POINTS[i + 1 :]}
)


def init_betas(
    model: HandModel,
    x: torch.Tensor,
    root_is_palm: bool = False,
    w_prior: float = 1.0,
    iters: int = 5,
    bound: float = float("inf"),
) -> torch.Tensor:
    """Shape from bone lengths: betas (10,) whose rest skeleton best matches the median observed distance
    of each rigid point pair (pose-independent, so this needs no pose). x: (N, 21, 3) metres. The loss
    is in cm^2 summed over pairs; ``w_prior`` weighs |betas|^2 against it. A few Gauss-Newton steps (the
    rest skeleton's derivative by batched central differences, ``handvla.hand.ik``), each kept within
    +-``bound`` (the fit passes ``FitConfig.betas_bound``)."""
    pairs = [(a, b) for a, b in _RIGID_PAIRS if not (root_is_palm and a == 0)]
    # rest points come in MANO order (16 joints, then tips): the row of each OpenPose point
    a = torch.as_tensor([int(MANO_TO_OPENPOSE[p[0]]) for p in pairs])
    b = torch.as_tensor([int(MANO_TO_OPENPOSE[p[1]]) for p in pairs])
    a_op = torch.as_tensor([p[0] for p in pairs])
    b_op = torch.as_tensor([p[1] for p in pairs])
    obs = (x[:, a_op] - x[:, b_op]).norm(dim=-1).median(0).values.double()  # (P,)
    betas = torch.zeros(NUM_BETAS, dtype=torch.float64)
    eye = torch.eye(NUM_BETAS, dtype=torch.float64)
    for _ in range(iters):
        pts, d = rest_points_and_jacobian(model, betas.float())  # (21, 3), (21, 3, 10)
        v = (pts[a] - pts[b]).double()
        dist = v.norm(dim=-1).clamp(min=1e-9)
        J = torch.einsum("pc,pck->pk", v / dist[:, None], (d[a] - d[b]).double()) * 100.0  # (P, 10) cm
        r = (dist - obs) * 100.0
        H = J.T @ J + w_prior * eye
        g = J.T @ r + w_prior * betas
        betas = (betas - torch.linalg.solve(H, g)).clamp(-bound, bound)
    return betas.float()


def smoothness_levers(rest: torch.Tensor) -> tuple[torch.Tensor, float, float]:
    """Data-term equivalents (cm^2 of mean squared joint motion per unit^2) of each parameter, from the
    (21, 3) rest joints: finger rotations (15,) per rad^2 (sum of squared distances of the points a joint
    moves, over 21), wrist rotation-matrix entries (a rotation by theta changes R by about 2 theta^2 in
    squared Frobenius norm), wrist position per m^2."""
    pts = rest * 100.0  # cm
    mano21 = pts[torch.as_tensor(_OP_OF_MANO21)]  # MANO order + tips
    lever = torch.zeros(15)
    for a, b, c in MANO_FINGERS.values():
        chain = [a, b, c, _CHILD[c]]
        for k, j in enumerate((a, b, c)):
            d = mano21[chain[k + 1 :]] - mano21[j]
            lever[j - 1] = (d * d).sum() / NUM_JOINTS
    lever_rot = float((pts * pts).sum() / NUM_JOINTS / 2.0)
    return lever, lever_rot, 1e4


def lowpass(
    x: torch.Tensor, inv_dt: torch.Tensor, inv_dt2: torch.Tensor, w_acc: float, w_vel: float = 0.0
) -> torch.Tensor:
    """The smoothing spline of each channel of (N, C): argmin |y - x|^2 + w_acc |acc(y)|^2 + w_vel |vel(y)|^2
    with the same finite differences as the smoothness terms; one banded (pentadiagonal) Cholesky solve for
    all channels."""
    n = x.shape[0]
    i1 = inv_dt.double().cpu().numpy()[: max(n - 1, 0)]
    i2 = inv_dt2.double().cpu().numpy()[: max(n - 2, 0)]
    d, o1, o2 = np.ones(n), np.zeros(max(n - 1, 0)), np.zeros(max(n - 2, 0))
    # velocities: row k = i1[k] * (y[k+1] - y[k])
    v2 = w_vel * i1 * i1
    d[:-1] += v2
    d[1:] += v2
    o1 -= v2
    if n > 2:
        # accelerations: row k = i2[k] * (i1[k+1] (y[k+2] - y[k+1]) - i1[k] (y[k+1] - y[k]))
        a0, a2 = i2 * i1[:-1], i2 * i1[1:]
        a1 = -(a0 + a2)
        w = w_acc
        d[:-2] += w * a0 * a0
        d[1:-1] += w * a1 * a1
        d[2:] += w * a2 * a2
        o1[:-1] += w * a0 * a1
        o1[1:] += w * a1 * a2
        o2 += w * a0 * a2
    ab = np.zeros((3, n))
    ab[2] = d
    ab[1, 1:] = o1
    ab[0, 2:] = o2
    y = solveh_banded(ab, x.detach().double().cpu().reshape(n, -1).numpy())
    return torch.as_tensor(y, dtype=x.dtype).reshape(x.shape).to(x.device)


def _hemisphere_aligned(q: torch.Tensor) -> torch.Tensor:
    """(N, 4) quaternions with signs flipped so consecutive ones have a non-negative dot product."""
    flip = ((q[1:] * q[:-1]).sum(-1) < 0).to(q.dtype)
    sign = torch.cat([q.new_ones(1), torch.cumprod(1 - 2 * flip, 0)])
    return q * sign[:, None]


def _time_weights(
    t_obs: torch.Tensor, obs_idx: torch.Tensor, fps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse spacings for ``_smooth_terms`` from the timestamps of the fitted frames.

    Frames are linked when adjacent in the input (no gap frame between them). Spacings are clamped to at
    least half the nominal one: trackers stamp some frames a fraction of a millisecond apart, which would
    turn timing jitter into huge accelerations.
    """
    linked = (obs_idx[1:] - obs_idx[:-1] == 1).float()  # (N-1,)
    dt = (t_obs[1:] - t_obs[:-1]).clamp(min=0.5 / fps)
    inv_dt = linked / dt
    both = linked[1:] * linked[:-1]
    inv_dt2 = both * 2.0 / (dt[1:] + dt[:-1])
    return inv_dt.float(), inv_dt2.float()


def _smooth_terms(
    x: torch.Tensor, inv_dt: torch.Tensor, inv_dt2: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed squared velocity (per s) and acceleration (per s^2) of (N, ...) along frames.

    inv_dt (N-1,): 1 / spacing of consecutive frames, 0 where they are not linked; inv_dt2 (N-2,):
    1 / the mean spacing around a frame, 0 where it is not linked on both sides (non-uniform differences).
    """
    n = x.shape[0]
    z = x.sum() * 0
    if n < 2:
        return z, z
    v = (x[1:] - x[:-1]).reshape(n - 1, -1) * inv_dt[:, None]
    vel = (v * v).sum()
    if n < 3:
        return vel, z
    a = (v[1:] - v[:-1]) * inv_dt2[:, None]
    acc = (a * a).sum()
    return vel, acc


# --------------------------------------------------------------------------------------------------------
# The fitter
# --------------------------------------------------------------------------------------------------------


def fit_joints(
    joints: np.ndarray | torch.Tensor,
    side: str = "right",
    fps: float = 30.0,
    t: np.ndarray | None = None,
    hand_model: HandModel | None = None,
    root_is_palm: bool = False,
    config: FitConfig | None = None,
    progress: bool | Callable[[int, int], None] = False,
    where: str = "joints",
) -> FitResult:
    """Fit a (T, 21, 3) joint sequence in metres (NaN = missing) to hand parameters.

    side: 'right' or 'left' (selects the default built-in model); fps: nominal frame rate of the input
    (the output motion's rate); t: (T,) timestamps in seconds for the smoothness terms (default k / fps);
    hand_model: any ``HandModel`` (default ``BuiltinHand(side)``); root_is_palm: point 0 is the palm centre
    (Leap), not the wrist joint; progress: True for a tqdm bar on stderr, or a callback(done, total);
    where: the name used in error messages (a file path).
    """
    cfg = config or FitConfig()
    threads = torch.get_num_threads()
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    try:
        return _fit(joints, side, fps, t, hand_model, root_is_palm, cfg, progress, where)
    finally:
        torch.set_num_threads(threads)


def fit_recording(
    rec,
    hand_model: HandModel | None = None,
    config: FitConfig | None = None,
    progress: bool | Callable[[int, int], None] = False,
) -> FitResult:
    """Fit a ``handvla.hand.io.JointsRecording`` (uses its side, fps, timestamps and point-0 meaning)."""
    return fit_joints(
        rec.joints,
        side=rec.side,
        fps=rec.fps,
        t=rec.t,
        hand_model=hand_model,
        root_is_palm=rec.root_is_palm,
        config=config,
        progress=progress,
        where=rec.where,
    )


#: the finger bones that do not touch point 0 (which is the palm centre in Leap files): their lengths say
#: the unit whatever point 0 is
_FINGER_BONES = [(int(p), c) for c, p in enumerate(OPENPOSE_PARENTS) if p > 0]
#: a hand's finger bones are 1-6 cm: a median above this (metres) means the joints are not in metres
MAX_MEDIAN_BONE_M = 0.5


def median_bone_length(joints: np.ndarray) -> float:
    """Median over observed frames and the 15 finger bones not attached to point 0 of the bone length,
    in the joints' own unit (NaN when no frame is observed)."""
    j = np.asarray(joints, np.float64)
    ok = np.isfinite(j).all(axis=(1, 2)) if j.ndim == 3 else np.zeros(0, bool)
    if not ok.any():
        return float("nan")
    a = np.array([p for p, _ in _FINGER_BONES])
    b = np.array([c for _, c in _FINGER_BONES])
    return float(np.median(np.linalg.norm(j[ok][:, a] - j[ok][:, b], axis=-1)))


def check_metres(joints: np.ndarray, where: str) -> None:
    """Refuse joints whose bone lengths say they are not in metres (millimetres or centimetres)."""
    m = median_bone_length(joints)
    if np.isfinite(m) and m > MAX_MEDIAN_BONE_M:
        unit = "millimetres" if m > 5.0 else "centimetres"
        flag = "mm" if m > 5.0 else "cm"
        raise InputError(
            where,
            "joints",
            "points in metres (finger bones of 0.01-0.1)",
            f"a median finger bone of {m:.3g}: {unit}? convert them (handvla hand fit --units {flag})",
        )


def _check_inputs(joints, side, fps, t, hand_model, where) -> tuple[HandModel, torch.Tensor, torch.Tensor]:
    if not (isinstance(fps, (int, float, np.floating)) and np.isfinite(fps) and fps > 0):
        raise InputError(where, "fps", "a positive frame rate", repr(fps))
    model = hand_model if hand_model is not None else shared_hand_model("builtin", side)
    if getattr(model, "side", side) != side:
        raise InputError(where, "side", f"the hand model's side '{model.side}'", repr(side))
    arr = joints.detach().cpu().numpy() if isinstance(joints, torch.Tensor) else np.asarray(joints)
    if arr.dtype.kind not in "fiu":
        raise InputError(where, "joints", "a float array in metres", str(arr.dtype))
    x_all = torch.as_tensor(arr.astype(np.float32))
    if x_all.dim() != 3 or x_all.shape[1:] != (NUM_JOINTS, 3) or x_all.shape[0] == 0:
        raise InputError(where, "joints", "shape (T, 21, 3) with T >= 1", str(tuple(x_all.shape)))
    if bool(torch.isinf(x_all).any()):
        raise InputError(where, "joints", "finite values in metres or NaN for missing", "inf")
    check_metres(x_all.numpy(), where)
    T = x_all.shape[0]
    if t is None:
        t_all = torch.arange(T, dtype=torch.float64) / fps
    else:
        t_all = torch.as_tensor(np.asarray(t, np.float64))
        if t_all.shape != (T,) or not bool(torch.isfinite(t_all).all()) or not bool((t_all.diff() > 0).all()):
            raise InputError(
                where,
                "t",
                f"({T},) finite, strictly increasing timestamps in seconds",
                f"shape {tuple(t_all.shape)}",
            )
    return model, x_all, t_all


def _fit(joints, side, fps, t, hand_model, root_is_palm, cfg: FitConfig, progress, where) -> FitResult:
    t_start = time.perf_counter()
    model, x_all, t_all = _check_inputs(joints, side, fps, t, hand_model, where)
    T = x_all.shape[0]
    observed = torch.isfinite(x_all).all(-1).all(-1)  # (T,)
    if not bool(observed.any()):
        raise InputError(where, "joints", "at least one frame with all 21 points finite", "none (NaN-only)")
    obs_idx = torch.nonzero(observed)[:, 0]
    x = x_all[obs_idx]  # (N, 21, 3) the fitted frames
    N = x.shape[0]

    # ---- initialisation: shape from bone lengths, Kabsch on the palm points, swing IK for the fingers ----
    local_fn = local_joints_fn(model)
    # The bone-length prior is weighed as in the full loss, where data is summed over N frames.
    betas0 = (
        init_betas(model, x, root_is_palm, cfg.w_betas / N, bound=cfg.betas_bound)
        if cfg.fit_betas
        else torch.zeros(NUM_BETAS)
    )
    with torch.no_grad():
        rest = local_fn(torch.zeros(1, 15, 3), betas0)[0]  # (21, 3)
    palm = list(PALM_POINTS[1:]) if root_is_palm else list(PALM_POINTS)
    s0, R0, _ = similarity_transform(rest[palm].expand(N, -1, -1), x[:, palm])
    if not bool(torch.isfinite(R0).all()):
        bad = int(torch.nonzero(~torch.isfinite(R0).all(-1).all(-1))[0, 0])
        raise InputError(
            where,
            "joints",
            "palm points (wrist, thumb CMC, MCPs) that are not all coincident",
            f"degenerate frame {int(obs_idx[bad])}",
        )
    R0 = R0.float()
    # The shape is fixed by betas0, so place the wrist at scale 1: the palm centroids coincide.
    t0 = x[:, palm].mean(1) - (R0 @ rest[palm].mean(0)[:, None])[..., 0]  # (N, 3)
    offsets0 = None
    if root_is_palm or cfg.landmark_offsets:
        offsets0 = torch.zeros(6, 3)
    if root_is_palm:
        # Observed palm centre in the Kabsch palm frame, median over frames (robust to bad frames).
        local = (R0.transpose(-1, -2) @ (x[:, 0] - t0)[..., None])[..., 0]
        offsets0[0] = local.median(0).values
    inv_dt, inv_dt2 = _time_weights(t_all[obs_idx], obs_idx, fps)
    w_acc = (2 * np.pi * cfg.acc_hz) ** -4 if cfg.acc_hz > 0 else 0.0
    w_vel = (2 * np.pi * cfg.vel_hz) ** -2 if cfg.vel_hz > 0 else 0.0
    # Per-frame Kabsch and IK carry all the tracker jitter, and the smoothness terms (which couple
    # frames) are what L-BFGS removes most slowly: start from the same low-pass applied to the parameters.
    if w_acc > 0 and N > 2:
        t0 = lowpass(t0, inv_dt, inv_dt2, w_acc)
        R0 = _lowpass_rotations(R0, inv_dt, inv_dt2, w_acc)
    pose0 = init_finger_pose(R0, x, rest)
    # Handedness check. The palm points alone cannot tell a hand from its mirror image (they are nearly
    # coplanar), but fingers flex towards the palm: with the wrong side, the Kabsch palm is flipped and
    # the PIP/DIP/IP joints of the initial pose bend backwards in most frames.
    frames = model.anatomical_frames().detach()  # (1, 15, 3, 3)
    distal = [i for i, k in enumerate(anatomy.joint_kinds()) if k in ("finger_pip", "finger_dip", "thumb_ip")]
    bend0 = anatomical_angles(pose0, frames, model.side)[:, distal, 2]  # (N, 9)
    distal_bend_deg = float(np.rad2deg(bend0.median(-1).values.median().item()))
    if distal_bend_deg < -2.0:
        warnings.warn(
            f"{where}: the fingers bend backwards (median PIP/DIP bend {distal_bend_deg:.0f} deg): the joints "
            f"look like a {'left' if model.side == 'right' else 'right'} hand, but side is '{model.side}'",
            stacklevel=3,
        )
    if w_acc > 0 and N > 2:
        pose0 = lowpass(pose0.reshape(N, 45), inv_dt, inv_dt2, w_acc, w_vel).reshape(N, 15, 3)

    start = _FitStart(x, rest, R0, t0, pose0, betas0, offsets0, frames, inv_dt, inv_dt2, w_acc, w_vel,
                      root_is_palm)  # fmt: skip
    refine = _refine_fast if cfg.method == "fast" else _refine_lbfgs
    R, pose, wrist, betas, offsets, extra = refine(model, local_fn, start, cfg, progress)

    # ---- outputs ----------------------------------------------------------------------------------------------
    with torch.no_grad():
        R, pose, wrist, betas = R.cpu(), pose.cpu(), wrist.cpu(), betas.cpu()
        offsets = offsets.cpu() if offsets is not None else None
        x = x.cpu()
        j = _predict(local_fn, R, pose, wrist, betas, offsets)
        err = (j - x).norm(dim=-1) * 1000.0  # (N, 21) mm
        beyond = limit_violation(anatomical_angles(pose, frames.cpu(), model.side), *limits_rad(0.0))
        obs = obs_idx.numpy()
        go, wp = np.zeros((T, 3), np.float32), np.zeros((T, 3), np.float32)
        hp = np.zeros((T, 15, 3), np.float32)
        go[obs], hp[obs], wp[obs] = matrix_to_axis_angle(R).numpy(), pose.numpy(), wrist.numpy()
        motion = HandMotion(
            global_orient=go,
            hand_pose=hp,
            wrist_pos=wp,
            betas=betas.numpy(),
            side=model.side,
            fps=float(fps),
            valid=observed.numpy(),
            hand_model=getattr(model, "name", "hand"),
        ).filled()  # the unfitted frames slerped / interpolated from their fitted neighbours, still invalid
        # Joints on all T frames from the filled parameters (gap frames included, e.g. for rendering).
        R_all = axis_angle_to_matrix(torch.from_numpy(motion.global_orient))
        wp_all = torch.from_numpy(motion.wrist_pos)
        j_all = _predict(local_fn, R_all, torch.from_numpy(motion.hand_pose), wp_all, betas, offsets)
    per_frame = np.full(T, np.nan, np.float32)
    per_frame[obs] = err.mean(-1).numpy()
    seconds = time.perf_counter() - t_start
    return FitResult(
        motion=motion,
        fit_mpjpe_mm=float(err.mean()),
        per_frame_mpjpe_mm=per_frame,
        joints=j_all.numpy(),
        frames_per_s=T / seconds,
        seconds=seconds,
        root_is_palm=root_is_palm,
        palm_offset=offsets[0].numpy() if root_is_palm else None,
        landmark_offsets=offsets.numpy() if offsets is not None else None,
        beyond_limits_deg=beyond_limits_report(np.rad2deg(beyond.numpy())),
        stats={
            "method": cfg.method,
            "palm_scale": float(s0.median()),
            "init_distal_bend_deg": distal_bend_deg,
            **extra,
        },
    )


def _predict(local_fn, R, pose, wrist, betas, offsets) -> torch.Tensor:
    """(N, 21, 3) model points; with ``offsets`` (6, 3) (``GNState.offsets``) the palm landmarks moved by
    them in the wrist frame (point 0 is then the palm centre of ``root_is_palm`` data)."""
    j = local_fn(pose, betas) @ R.transpose(-1, -2) + wrist[:, None]
    return j if offsets is None else with_landmark_offsets(j, R, offsets)


def with_landmark_offsets(joints: torch.Tensor, R: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(N, 21, 3) joints in OpenPose order -> the points a source reports: its palm landmarks
    (``OFFSET_POINTS``) moved by ``offsets`` (6, 3) (``FitResult.landmark_offsets``) in the wrist frames
    ``R`` (N, 3, 3)."""
    out = joints.clone()
    out[:, list(OFFSET_POINTS)] += (R[:, None] @ offsets.to(R.dtype)[None, :, :, None])[..., 0]
    return out


@dataclass(frozen=True)
class _FitStart:
    """What both refinement paths start from: the observed points ``x`` (N, 21, 3), the rest pose's
    points, the initial parameters (*0), the anatomical frames, the time weights and smoothing weights."""

    x: torch.Tensor
    rest: torch.Tensor
    R0: torch.Tensor
    t0: torch.Tensor
    pose0: torch.Tensor
    betas0: torch.Tensor
    offsets0: torch.Tensor | None
    frames: torch.Tensor
    inv_dt: torch.Tensor
    inv_dt2: torch.Tensor
    w_acc: float
    w_vel: float
    root_is_palm: bool

    @property
    def N(self) -> int:
        return self.x.shape[0]


def _lowpass_rotations(R: torch.Tensor, inv_dt, inv_dt2, w_acc: float) -> torch.Tensor:
    """The smoothing spline of a rotation track (N, 3, 3), through sign-aligned quaternions."""
    q = _hemisphere_aligned(matrix_to_quaternion(R))
    return quaternion_to_matrix(lowpass(q, inv_dt, inv_dt2, w_acc))


def _refine_fast(model, local_fn, start: _FitStart, cfg: FitConfig, progress):
    """Batched Gauss-Newton from the analytic initialisation (``handvla.hand.ik``), then the low-pass."""
    x, frames, N = start.x, start.frames, start.N
    inv_dt, inv_dt2, w_acc, w_vel = start.inv_dt, start.inv_dt2, start.w_acc, start.w_vel
    dev = torch.device(cfg.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"fitting: device '{cfg.device}' asked for, but CUDA is not available here (use 'cpu')"
        )
    gn_model = model if dev.type == "cpu" else copy.deepcopy(model).to(dev)
    xd = x.to(dev)
    lo, hi = limits_rad(cfg.limit_margin_deg)
    signs = torch.tensor([-1.0, -1.0, 1.0]) if model.side == "left" else torch.ones(3)
    gn = GaussNewtonFitter(
        gn_model,
        xd,
        frames[0],
        signs,
        lo,
        hi,
        w_limits=cfg.w_limits,
        w_betas=cfg.w_betas,
        fit_betas=cfg.fit_betas,
        betas_bound=cfg.betas_bound,
        root_is_palm=start.root_is_palm,
        landmark_offsets=cfg.landmark_offsets,
        w_offsets=_offset_prior_weight(cfg),
    )
    state = GNState(
        start.R0.to(dev),
        start.t0.to(dev),
        start.pose0.to(dev),
        start.betas0.to(dev),
        start.offsets0.to(dev) if start.offsets0 is not None else None,
    )
    if callable(progress) and progress is not True:
        progress(0, cfg.gn_iters)
    with torch.no_grad():
        state, _, info = gn.run(state, cfg.gn_iters)
    if callable(progress) and progress is not True:
        progress(cfg.gn_iters, cfg.gn_iters)
    R, wrist, pose = state.R.cpu(), state.t.cpu(), state.pose.cpu()
    if w_acc > 0 and N > 2:
        # Temporal smoothing: the smoothing spline of every parameter track (the same filter as the
        # initial low-pass). The shape and landmark offsets are per sequence already.
        wrist = lowpass(wrist, inv_dt, inv_dt2, w_acc)
        R = _lowpass_rotations(R, inv_dt, inv_dt2, w_acc)
        pose = lowpass(pose.reshape(N, 45), inv_dt, inv_dt2, w_acc, w_vel).reshape(N, 15, 3)
    po = state.offsets.cpu() if state.offsets is not None else None
    return R, pose, wrist, state.betas.cpu(), po, {"gn_iters": cfg.gn_iters, **info}


def _refine_lbfgs(model, local_fn, start: _FitStart, cfg: FitConfig, progress):
    """The joint L-BFGS optimisation of data, limits and smoothness (the slow, original path)."""
    x, rest, frames, N, root_is_palm = start.x, start.rest, start.frames, start.N, start.root_is_palm
    R0, t0, pose0, betas0, offsets0 = start.R0, start.t0, start.pose0, start.betas0, start.offsets0
    inv_dt, inv_dt2, w_acc, w_vel = start.inv_dt, start.inv_dt2, start.w_acc, start.w_vel
    # ---- parameters, scaled so that a unit step moves the joints by about a centimetre ----------------------
    # L-BFGS copes badly with curvatures that differ by orders of magnitude: finger rotations are scaled
    # by their lever arms, the wrist rotation by the hand's radius, the wrist position is in cm, and the
    # per-sequence unknowns (whose curvature is a sum over N frames) are multiplied by sqrt(N).
    sqrt_n = float(np.sqrt(N))
    lever_pose, lever_rot, lever_pos = smoothness_levers(rest)
    lever_pose_sqrt = lever_pose.sqrt()[:, None]  # (15, 1)
    rot_scale = float(np.sqrt(2 * lever_rot))
    delta_u = torch.zeros(N, 3, requires_grad=True)  # residual wrist rotation, rad * rot_scale
    pose_u = (pose0 * lever_pose_sqrt).contiguous().requires_grad_(True)  # rad * sqrt(lever)
    wrist_cm = torch.zeros(N, 3, requires_grad=True)  # offset from the initial wrist, cm
    betas_u = (betas0 * sqrt_n).requires_grad_(True)
    off_u = torch.zeros(6, 3, requires_grad=True)  # landmark offsets from their start, cm * sqrt(N)
    off_free = torch.zeros(6, 1)  # the fitted rows, and the prior's weight on each (per m^2)
    off_w = torch.zeros(6, 1)
    rows, w_rows = offset_rows(root_is_palm, cfg.landmark_offsets, _offset_prior_weight(cfg))
    off_free[rows], off_w[rows, 0] = 1.0, w_rows.float()
    lo, hi = limits_rad(cfg.limit_margin_deg)

    def unpack() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        R = R0 @ axis_angle_to_matrix(delta_u / rot_scale)  # (N, 3, 3)
        pose = pose_u / lever_pose_sqrt  # (N, 15, 3)
        wrist = t0 + wrist_cm / 100.0  # (N, 3)
        betas = (betas_u / sqrt_n).clamp(-cfg.betas_bound, cfg.betas_bound)
        offsets = offsets0 + off_free * off_u / (100.0 * sqrt_n) if offsets0 is not None else None
        return R, pose, wrist, betas, offsets

    def loss_fn(with_parts: bool = False) -> tuple[torch.Tensor, dict[str, float]]:
        # Sums over frames (means over points): every per-frame unknown then has O(1) curvature.
        R, pose, wrist, betas, offsets = unpack()
        d = (_predict(local_fn, R, pose, wrist, betas, offsets) - x) * 100.0  # cm
        data = (d * d).sum(-1).mean(-1).sum()
        viol = limit_violation(anatomical_angles(pose, frames, model.side), lo, hi)
        lim = cfg.w_limits * (viol * viol).sum()
        v_pose, a_pose = _smooth_terms(pose * lever_pose_sqrt, inv_dt, inv_dt2)
        _, a_rot = _smooth_terms(R, inv_dt, inv_dt2)
        _, a_pos = _smooth_terms(wrist, inv_dt, inv_dt2)
        parts = {
            "data": data,
            "limits": lim,
            "vel_pose": w_vel * v_pose,
            "acc_pose": w_acc * a_pose,
            "acc_rot": w_acc * lever_rot * a_rot,
            "acc_pos": w_acc * lever_pos * a_pos,
            "betas": cfg.w_betas * (betas * betas).sum(),
            "offsets": (off_w * offsets * offsets).sum() if offsets is not None else torch.zeros(()),
        }
        total = sum(parts.values())
        return total, ({k: float(v.detach()) / N for k, v in parts.items()} if with_parts else {})

    total_evals = _max_evals(cfg.global_iters) + _max_evals(cfg.iters)
    bar = None
    if progress is True:
        bar = tqdm(total=total_evals, desc="fit", unit="eval", leave=False)
    done = [0]

    def tick(n: int = 1) -> None:
        done[0] += n
        if bar is not None:
            bar.update(n)
        elif callable(progress):
            progress(done[0], total_evals)

    def run_stage(params: list[torch.Tensor], iters: int) -> int:
        if iters <= 0:
            return 0
        max_eval = _max_evals(iters)
        opt = torch.optim.LBFGS(
            params,
            lr=1.0,
            max_iter=iters,
            max_eval=max_eval,
            history_size=cfg.history_size,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
        )
        evals = [0]

        def closure():
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn()
            loss.backward()
            evals[0] += 1
            if evals[0] <= max_eval:
                tick()
            return loss

        # One step() runs the whole stage: L-BFGS keeps its curvature pairs within a call.
        opt.step(closure)
        tick(max(0, max_eval - evals[0]))
        return evals[0]

    glob = (
        [delta_u, wrist_cm] + ([betas_u] if cfg.fit_betas else []) + ([off_u] if offsets0 is not None else [])
    )
    evals = run_stage(glob, cfg.global_iters)
    evals += run_stage(glob + [pose_u], cfg.iters)
    if bar is not None:
        bar.close()

    with torch.no_grad():
        R, pose, wrist, betas, offsets = unpack()
        _, parts = loss_fn(with_parts=True)
    return (
        R,
        pose,
        wrist,
        betas,
        offsets,
        {
            "loss_evals": evals,
            "loss_per_frame": {k: round(v, 5) for k, v in parts.items()},
        },
    )


def _offset_prior_weight(cfg: FitConfig) -> float:
    """The landmark offsets' prior weight per m^2 in the fitting loss (``FitConfig.landmark_offset_mm``)."""
    return 1e6 / cfg.landmark_offset_mm**2


def _max_evals(iters: int) -> int:
    return iters * 5 // 4
