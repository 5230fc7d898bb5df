"""Batched Gauss-Newton refinement of hand parameters against 3D joints, with analytic Jacobians.

The fast path of ``handvla.hand.fitting`` (``FitConfig.method = 'fast'``): after the analytic
initialisation there (shape from bone lengths, Kabsch wrist, swing IK per finger chain), a few
Gauss-Newton / Levenberg-Marquardt iterations solve, for all frames at once,

    min  sum_t [ mean_i |p_i(theta_t, beta) - x_ti|^2 (cm^2) + w_limits |beyond the limits(theta_t)|^2 ]
         + w_betas |beta|^2

where theta_t (51 per frame: wrist rotation increment, wrist position, 15 finger axis-angles) are per-frame
unknowns and beta (the 10 shape coefficients, plus the palm landmarks' offsets when they are fitted, see
``GNState.offsets``, with their prior) is shared by the sequence. The normal equations are block-arrow
shaped (one 51 x 51 block per frame, all coupled only through the shared unknowns; within a frame each
finger's 9 couple only to the wrist's 6), so one step eliminates the fingers (batched 9 x 9 blocks), then
the wrist (6 x 6), and solves a small Schur complement for the shared unknowns, as in bundle adjustment. Temporal smoothness is not in this
loss; the fitter low-passes the result afterwards (see ``handvla.hand.fitting``).

Kinematics: the model's rest skeleton (``HandModel.rest_joints_and_tips``) posed by the same chain as
``fitting.local_joints_fn``: wrist frame R, then per finger three joints, each rotating the bones below
it. With a rotation written as ``R exp([d]x)`` (wrist) or ``exp(aa + d) ~ exp(aa) exp([J_r(aa) d]x)``
(fingers, J_r the right Jacobian of SO(3)), a point p below a joint at P with global frame G moves by
``-[p - P]x G J_r d``; shape coefficients move the rest bones, which move every point below them by the
bone's global frame times the bone's derivative. Everything is torch and device-agnostic (CPU or GPU).
A model whose ``forward`` adds to the skeleton (a mesh model's tips as vertices) is refined on its
skeleton here; the fitter reports its error through the model's own forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from handvla.hand.rotations import axis_angle_to_matrix
from handvla.hand.topology import NUM_BETAS

#: 21-point index (MANO 16 joints then tips thumb, index, middle, ring, little) of the tip of each finger
#: in MANO finger order (index, middle, little, ring, thumb)
_TIP_OF_FINGER = (17, 18, 20, 19, 16)
#: position in the finger-major layout (5 fingers in MANO order x 4 points) of OpenPose points 1..20
_OPENPOSE_FROM_FINGER_MAJOR = (16, 17, 18, 19, 0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 14, 15, 8, 9, 10, 11)
#: and the inverse: position among OpenPose points 1..20 of each finger-major point
_FINGER_MAJOR_FROM_OPENPOSE = tuple(_OPENPOSE_FROM_FINGER_MAJOR.index(m) for m in range(20))

#: OpenPose index of the point each row of ``GNState.offsets`` moves: point 0, then the base (MCP, or the
#: thumb's CMC) of each finger in the finger-major (MANO) order
OFFSET_POINTS = (0,) + tuple(1 + _FINGER_MAJOR_FROM_OPENPOSE[4 * f] for f in range(5))

NP = 51  # per-frame unknowns: wrist rotation increment (3), wrist position (3, metres), 15 x 3 axis-angle


def skew(v: torch.Tensor) -> torch.Tensor:
    """(..., 3) -> (..., 3, 3) cross-product matrices."""
    z = torch.zeros_like(v[..., 0])
    x, y, w = v.unbind(-1)
    return torch.stack([z, -w, y, w, z, -x, -y, x, z], -1).reshape(v.shape + (3,))


def right_jacobian(aa: torch.Tensor) -> torch.Tensor:
    """(..., 3) axis-angle -> (..., 3, 3) right Jacobian J_r: exp(aa + d) ~ exp(aa) exp([J_r d]x)."""
    th2 = (aa * aa).sum(-1)[..., None, None]
    th = th2.sqrt()
    small = th < 1e-3
    ths = torch.where(small, torch.ones_like(th), th)
    a = torch.where(small, 0.5 - th2 / 24.0, (1.0 - torch.cos(ths)) / (ths * ths))
    b = torch.where(small, 1.0 / 6.0 - th2 / 120.0, (ths - torch.sin(ths)) / (ths * ths * ths))
    K = skew(aa)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device)
    return eye - a * K + b * (K @ K)


def _exp(d: torch.Tensor) -> torch.Tensor:
    return axis_angle_to_matrix(d)


@dataclass
class Skeleton:
    """The rest skeleton in the finger-chain layout, and its derivative with respect to the shape."""

    base: torch.Tensor  # (5, 3) level-1 joint of each finger, wrist at the origin (MANO finger order)
    bones: torch.Tensor  # (5, 3, 3) the bone leaving each of the finger's three joints
    d_base: torch.Tensor  # (5, 3, 10) d base / d betas
    d_bones: torch.Tensor  # (5, 3, 3, 10)


def rest_points(model, betas: torch.Tensor) -> torch.Tensor:
    """(B, 10) -> (B, 21, 3) rest points with the wrist at the origin, MANO order (16 joints, then the tips
    thumb, index, middle, ring, little)."""
    J, tips = model.rest_joints_and_tips(betas)
    return torch.cat([J, tips], 1) - J[:, :1]


def rest_points_and_jacobian(
    model, betas: torch.Tensor, eps: float = 1e-2
) -> tuple[torch.Tensor, torch.Tensor]:
    """(10,) -> rest points (21, 3) and their derivative (21, 3, 10) by central differences, all 21
    evaluations in one batched call (exact for rest skeletons that are at most quadratic in the shape, as
    the built-in hand's: bone lengths times overall size)."""
    betas = betas.detach().reshape(NUM_BETAS)
    E = torch.eye(NUM_BETAS, dtype=betas.dtype, device=betas.device) * eps
    batch = torch.cat([betas[None], betas + E, betas - E], 0)  # (21, 10)
    with torch.no_grad():
        pts = rest_points(model, batch)
    d = (pts[1 : 1 + NUM_BETAS] - pts[1 + NUM_BETAS :]) / (2 * eps)  # (10, 21, 3)
    return pts[0], d.permute(1, 2, 0)


def _chain(pts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., 21, 3) rest points -> level-1 joints (..., 5, 3) and bones (..., 5, 3, 3), finger-major."""
    joints = pts[..., 1:16, :].reshape(pts.shape[:-2] + (5, 3, 3))
    tip = pts[..., list(_TIP_OF_FINGER), :]
    ch = torch.cat([joints, tip[..., None, :]], -2)  # (..., 5, 4, 3)
    return ch[..., 0, :], ch[..., 1:, :] - ch[..., :-1, :]


def skeleton(model, betas: torch.Tensor, previous: Skeleton | None = None) -> Skeleton:
    """Rest skeleton of ``model`` at ``betas`` (10,) and its Jacobian, or the Jacobian of ``previous``
    (shape steps are small; the Jacobian only steers the step, the cost is always exact)."""
    if previous is not None:
        with torch.no_grad():
            base, bones = _chain(rest_points(model, betas.detach().reshape(1, NUM_BETAS))[0])
        return Skeleton(base, bones, previous.d_base, previous.d_bones)
    pts, d = rest_points_and_jacobian(model, betas)
    base, bones = _chain(pts)
    d_base, d_bones = _chain(d.movedim(-1, 0))  # (10, 5, 3), (10, 5, 3, 3)
    return Skeleton(base, bones, d_base.movedim(0, -1), d_bones.movedim(0, -1))


def pose_chain(
    R: torch.Tensor, t: torch.Tensor, pose: torch.Tensor, sk: Skeleton
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Forward kinematics. R (N, 3, 3), t (N, 3), pose (N, 15, 3) -> finger points (N, 5, 4, 3) world,
    global frames G (N, 5, 3, 3, 3) of each finger joint (after its own rotation), local rotations r."""
    N = pose.shape[0]
    r = _exp(pose.reshape(N, 5, 3, 3))  # (N, 5, 3, 3, 3)
    Gp = R[:, None].expand(N, 5, 3, 3)
    p = t[:, None] + (R[:, None] @ sk.base[None, :, :, None])[..., 0]  # (N, 5, 3)
    pts, Gs = [p], []
    for lvl in range(3):
        G = Gp @ r[:, :, lvl]
        p = p + (G @ sk.bones[None, :, lvl, :, None])[..., 0]
        pts.append(p)
        Gs.append(G)
        Gp = G
    return torch.stack(pts, 2), torch.stack(Gs, 2), r


def joints21(
    R: torch.Tensor,
    t: torch.Tensor,
    pose: torch.Tensor,
    sk: Skeleton,
    offsets: torch.Tensor | None = None,
) -> torch.Tensor:
    """(N, 21, 3) OpenPose order; point 0 is the wrist. With ``offsets`` (6, 3) (``GNState.offsets``) the
    six palm landmarks are moved by them, in the wrist frame."""
    pts, _, _ = pose_chain(R, t, pose, sk)
    N = pts.shape[0]
    root = t
    if offsets is not None:
        root, pts = _offset_landmarks(R, t, pts, offsets)
    fm = pts.reshape(N, 20, 3)[:, list(_OPENPOSE_FROM_FINGER_MAJOR)]
    return torch.cat([root[:, None], fm], 1)


def _offset_landmarks(
    R: torch.Tensor, t: torch.Tensor, pts: torch.Tensor, offsets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Point 0 (``t + R o_0``) and the finger points (N, 5, 4, 3) with each finger's base moved by ``R o_f``."""
    Ro = (R[:, None] @ offsets[None, :, :, None])[..., 0]  # (N, 6, 3)
    base = pts[:, :, :1] + Ro[:, 1:, None]
    return t + Ro[:, 0], torch.cat([base, pts[:, :, 1:]], 2)


def offset_rows(
    root_is_palm: bool, landmark_offsets: bool, w_offsets: float
) -> tuple[list[int], torch.Tensor]:
    """The rows of ``GNState.offsets`` that are fitted and the prior weight of each (per m^2, float64): all
    six with ``landmark_offsets``, else only a palm centre's (row 0 of ``root_is_palm`` data), which is
    never penalised."""
    rows = list(range(6)) if landmark_offsets else [0] if root_is_palm else []
    w = [0.0 if (r == 0 and root_is_palm) else w_offsets for r in rows]
    return rows, torch.tensor(w, dtype=torch.float64)


@dataclass
class GNState:
    R: torch.Tensor  # (N, 3, 3)
    t: torch.Tensor  # (N, 3) metres
    pose: torch.Tensor  # (N, 15, 3)
    betas: torch.Tensor  # (10,)
    #: (6, 3) metres in the wrist frame, or None: per-sequence offsets of the palm landmarks (point 0, then
    #: each finger's base in ``OFFSET_POINTS`` order) from the model's joints; rows not fitted stay zero
    offsets: torch.Tensor | None


class GaussNewtonFitter:
    """Batched LM on the loss in the module docstring, for observed joints x (N, 21, 3) metres (OpenPose
    order). The anatomical angles are ``signs * F^T aa`` with ``frames`` F (15, 3, 3) (columns twist,
    spread, bend) and ``signs`` (3,) (-1, -1, 1 for a left hand); ``lo``/``hi`` (15, 3) radians."""

    def __init__(
        self,
        model,
        x: torch.Tensor,
        frames: torch.Tensor,
        signs: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        w_limits: float,
        w_betas: float,
        fit_betas: bool,
        root_is_palm: bool,
        betas_bound: float = float("inf"),
        damping: float = 0.1,
        max_step_rad: float = 0.5,
        landmark_offsets: bool = False,
        w_offsets: float = 0.0,
    ):
        """``root_is_palm``: point 0 is the palm centre, its offset from the wrist (``offsets`` row 0) is
        fitted without a prior; ``landmark_offsets``: all six rows are fitted, with the Gaussian prior
        ``w_offsets |o|^2`` (o in metres) on every row but a palm centre's; ``betas_bound``: every shape
        coefficient is kept within +-this (a step is projected onto the box before it is judged)."""
        self.model, self.x = model, x
        dev, dt = x.device, x.dtype
        self.F = frames.to(dev, dt)  # (15, 3, 3) columns twist, spread, bend
        self.signs = signs.to(dev, dt)
        self.lo, self.hi = lo.to(dev, dt), hi.to(dev, dt)
        self.w_limits, self.w_betas = w_limits, w_betas
        self.fit_betas, self.root_is_palm = fit_betas, root_is_palm
        self.betas_bound = float(betas_bound)
        #: the fitted rows of ``offsets`` (after the betas among the shared unknowns) and their prior weights
        self.off_rows, self.w_off = offset_rows(root_is_palm, landmark_offsets, w_offsets)
        self.n_shared = (NUM_BETAS if fit_betas else 0) + 3 * len(self.off_rows)
        self.damping = damping
        self.max_step = max_step_rad
        # absolute damping (cm^2 per unit^2 of each unknown): steers what the joints do not determine (the
        # twist of a last finger joint does not move its tip) without moving what they do
        self.eps = 1e-2
        self.eye3 = torch.eye(3, device=dev, dtype=dt)
        self.mask = (torch.arange(4, device=dev)[:, None] > torch.arange(3, device=dev)[None, :]).to(dt)
        self.x0 = x[:, 0]
        self.x_fm = x[:, 1:][:, list(_FINGER_MAJOR_FROM_OPENPOSE)].reshape(-1, 5, 4, 3)
        self.scale = 100.0 / 21**0.5  # residual scale: cm, mean over 21 points

    # -- loss pieces --------------------------------------------------------------------------------------
    def _angles(self, pose: torch.Tensor) -> torch.Tensor:
        return torch.einsum("jba,njb->nja", self.F, pose) * self.signs

    def _beyond(self, pose: torch.Tensor) -> torch.Tensor:
        a = self._angles(pose)
        return torch.relu(a - self.hi) - torch.relu(self.lo - a)  # signed: + above, - below, 0 inside

    def frame_costs(self, s: GNState, sk: Skeleton) -> torch.Tensor:
        """(N,) per-frame loss (data + limits)."""
        j = joints21(s.R, s.t, s.pose, sk, s.offsets)
        d = (j - self.x) * self.scale
        lim = self._beyond(s.pose)
        return (d * d).sum((-1, -2)) + self.w_limits * (lim * lim).sum((-1, -2))

    # -- one step -----------------------------------------------------------------------------------------
    def _linearise(self, s: GNState, sk: Skeleton):
        """Residuals and Jacobians in the finger-major layout (point 0 apart):
        res0 (N, 3), res (N, 5, 4, 3); wrist Jacobians Jw0 (N, 3, 6), Jw (N, 5, 4, 3, 6) (rotation increment,
        position); finger Jacobians Jf (N, 5, 4, 3, 9) (each finger's points on its own 3 joints);
        shared Jacobians Js0 (N, 3, S), Js (N, 5, 4, 3, S) or None."""
        N = s.R.shape[0]
        sc = self.scale
        pts, G, _ = pose_chain(s.R, s.t, s.pose, sk)  # (N, 5, 4, 3), (N, 5, 3, 3, 3)
        A = G @ right_jacobian(s.pose.reshape(N, 5, 3, 3))  # (N, 5, 3[l], 3, 3): world axis per unit aa
        # finger points: column (l, c) = A[l][:, c] x (p_k - P_l), zero unless k > l
        diff = pts[:, :, :, None, :] - pts[:, :, None, :3, :]  # (N, 5, 4, 3[l], 3)
        cols = A.transpose(-1, -2)  # (N, 5, 3[l], 3[c], 3[xyz])
        Jf = torch.linalg.cross(cols[:, :, None], diff[:, :, :, :, None, :].expand(-1, -1, -1, -1, 3, -1))
        Jf = Jf * self.mask[None, None, :, :, None, None]  # (N, 5, 4, 3[l], 3[c], 3[xyz])
        Jf = Jf.permute(0, 1, 2, 5, 3, 4).reshape(N, 5, 4, 3, 9) * sc
        Rt = s.R.transpose(-1, -2)  # rows = columns of R
        Ro = None
        root = s.t
        if s.offsets is not None:
            Ro = (s.R[:, None] @ s.offsets[None, :, :, None])[..., 0]  # (N, 6, 3)
            root, pts = _offset_landmarks(s.R, s.t, pts, s.offsets)  # the bases move; Jf used the joints
        rel = pts - s.t[:, None, None]
        Jw = pts.new_empty(N, 5, 4, 3, 6)
        Jw[..., :3] = torch.linalg.cross(
            Rt[:, None, None], rel[..., None, :].expand(N, 5, 4, 3, 3)
        ).transpose(-1, -2)
        Jw[..., 3:] = self.eye3
        Jw = Jw * sc
        Jw0 = pts.new_zeros(N, 3, 6)
        Jw0[:, :, 3:] = self.eye3
        if Ro is not None:
            Jw0[:, :, :3] = torch.linalg.cross(Rt, Ro[:, :1].expand(N, 3, 3)).transpose(-1, -2)
        Jw0 = Jw0 * sc
        res0 = (root - self.x0) * sc
        res = (pts - self.x_fm) * sc
        Js0 = Js = None
        if self.n_shared:
            parts0, parts = [], []
            if self.fit_betas:
                # d p_k / d beta = R d_base + sum_{l<k} G_l d_bone_l
                db = (s.R[:, None] @ sk.d_base[None]).unsqueeze(2)  # (N, 5, 1, 3, 10)
                dbo = G @ sk.d_bones[None]  # (N, 5, 3, 3, 10)
                parts.append(torch.cat([db, db + torch.cumsum(dbo, 2)], 2))
                parts0.append(pts.new_zeros(N, 3, NUM_BETAS))
            if self.off_rows:
                # d point / d o_row = R, for the row's own point only
                Jo = pts.new_zeros(N, 5, 4, 3, 6, 3)
                eye5 = torch.eye(5, dtype=pts.dtype, device=pts.device)
                Jo[:, :, 0, :, 1:, :] = torch.einsum("fg,nij->nfigj", eye5, s.R)
                J0 = pts.new_zeros(N, 3, 6, 3)
                J0[:, :, 0] = s.R
                parts.append(Jo[..., self.off_rows, :].reshape(N, 5, 4, 3, -1))
                parts0.append(J0[..., self.off_rows, :].reshape(N, 3, -1))
            Js0, Js = torch.cat(parts0, -1) * sc, torch.cat(parts, -1) * sc
        return res0, res, Jw0, Jw, Jf, Js0, Js

    def step(
        self, s: GNState, sk: Skeleton, lam: torch.Tensor, lam_shared: float = 1e-3
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One damped Gauss-Newton step: (N, 51) per-frame increments and (S,) shared increments.

        Per frame the normal matrix is an arrow: the wrist's 6 unknowns couple to every finger, each
        finger's 9 only to the wrist. It is solved by eliminating the fingers (5 blocks of 9 x 9) and then
        the wrist (6 x 6); the shared unknowns by the Schur complement over all frames."""
        N = s.R.shape[0]
        res0, res, Jw0, Jw, Jf, Js0, Js = self._linearise(s, sk)
        # All products of the Jacobian blocks and residuals in one batched Gram matrix per finger (its 12
        # rows: wrist 6 | finger 9 | shared S | residual 1) and one for point 0 (batched small matrix
        # products cost per call more than per element)
        S = self.n_shared
        K = 16 + S
        parts = [Jw, Jf] + ([Js] if S else []) + [res[..., None]]
        Z = torch.cat(parts, -1).reshape(N * 5, 12, K)
        G = (Z.transpose(-1, -2) @ Z).reshape(N, 5, K, K)
        parts0 = [Jw0, Jw0.new_zeros(N, 3, 9)] + ([Js0] if S else []) + [res0[..., None]]
        Z0 = torch.cat(parts0, -1)  # (N, 3, K)
        G0 = Z0.transpose(-1, -2) @ Z0  # (N, K, K)
        Gw = G[:, :, :6].sum(1) + G0[:, :6]  # (N, 6, K): wrist rows summed over all points
        Hww, gw = Gw[..., :6], Gw[..., -1]
        Hwf = G[:, :, :6, 6:15]  # (N, 5, 6, 9)
        Hff = G[:, :, 6:15, 6:15]
        gf = G[:, :, 6:15, -1]
        # joint limits: residual sqrt(w) * beyond, Jacobian sqrt(w) * active * sign * F^T (per joint 3 x 3)
        beyond = self._beyond(s.pose)  # (N, 15, 3)
        active = (beyond != 0).to(res.dtype)
        Fs = self.F * self.signs  # (15, 3[b], 3[c]): column c = sign_c * F[:, c]
        FsA = Fs * active[..., None, :]  # (N, 15, 3, 3)
        Hl = (FsA @ Fs.transpose(-1, -2)) * self.w_limits  # (N, 15, 3, 3)
        gl = (Fs @ beyond[..., None])[..., 0] * self.w_limits  # (N, 15, 3)
        Hl_bd = Hff.new_zeros(N, 5, 3, 3, 3, 3)
        for lvl in range(3):
            Hl_bd[:, :, lvl, :, lvl, :] = Hl.reshape(N, 5, 3, 3, 3)[:, :, lvl]
        Hff = Hff + Hl_bd.reshape(N, 5, 9, 9)
        gf = gf + gl.reshape(N, 5, 9)
        # Marquardt damping, plus a small absolute term for what the joints do not determine (the twist
        # of a last finger joint does not move its tip)
        Hww = Hww + torch.diag_embed(lam[:, None] * torch.diagonal(Hww, dim1=-2, dim2=-1) + self.eps)
        Hff = Hff + torch.diag_embed(lam[:, None, None] * torch.diagonal(Hff, dim1=-2, dim2=-1) + self.eps)
        # right-hand sides: (N, 6, 1 + S), (N, 5, 9, 1 + S): the gradient, then the coupling to the shared
        rw = torch.cat([gw[..., None], Gw[..., 15 : 15 + S]], -1)
        rf = torch.cat([gf[..., None], G[:, :, 6:15, 15 : 15 + S]], -1)
        # eliminate the fingers, then the wrist
        # (explicit inverses of the small damped SPD blocks: batched, faster than per-matrix solves)
        Y = torch.linalg.inv_ex(Hff)[0] @ torch.cat([Hwf.transpose(-1, -2), rf], -1)  # (N, 5, 9, 6 + 1 + S)
        Sw = Hww - (Hwf @ Y[..., :6]).sum(1)
        rw2 = rw - (Hwf @ Y[..., 6:]).sum(1)
        Xw = torch.linalg.inv_ex(Sw)[0] @ rw2  # (N, 6, 1 + S)
        Xf = Y[..., 6:] - Y[..., :6] @ Xw[:, None]  # (N, 5, 9, 1 + S)
        if not S:
            return -torch.cat([Xw[..., 0], Xf[..., 0].reshape(N, 45)], -1), None
        Gs = G[:, :, 15 : 15 + S].sum((0, 1)) + G0[:, 15 : 15 + S].sum(0)  # (S, K)
        C, gs = Gs[:, 15 : 15 + S].double(), Gs[:, -1].double()
        if self.fit_betas:
            C[:NUM_BETAS, :NUM_BETAS] += self.w_betas * torch.eye(NUM_BETAS, device=C.device, dtype=C.dtype)
            gs[:NUM_BETAS] += self.w_betas * s.betas.double()
        if self.off_rows:
            k = NUM_BETAS if self.fit_betas else 0
            w = self.w_off.to(C.device).repeat_interleave(3)
            C[k:, k:] += torch.diag(w)
            gs[k:] += w * s.offsets[self.off_rows].reshape(-1).double()
        # B^T A^-1 [g | B] summed over frames: (S, 1 + S)
        T = (rw[..., 1:].transpose(-1, -2) @ Xw).sum(0) + (rf[..., 1:].transpose(-1, -2) @ Xf).sum((0, 1))
        T = T.double()
        Schur = C - T[:, 1:]
        rhs = -gs + T[:, 0]
        Schur = Schur + torch.diag(lam_shared * torch.diagonal(Schur).abs() + 1e-8)
        d_sh = torch.linalg.solve(Schur, rhs).to(res.dtype)
        d_w = -(Xw[..., 0] + Xw[..., 1:] @ d_sh)
        d_f = -(Xf[..., 0] + Xf[..., 1:] @ d_sh)
        return torch.cat([d_w, d_f.reshape(N, 45)], -1), d_sh

    def apply(self, s: GNState, d_p: torch.Tensor, d_sh: torch.Tensor | None) -> GNState:
        N = s.R.shape[0]
        R = s.R @ _exp(d_p[:, 0:3])
        t = s.t + d_p[:, 3:6]
        pose = s.pose + d_p[:, 6:].reshape(N, 15, 3)
        betas, off = s.betas, s.offsets
        if d_sh is not None:
            k = 0
            if self.fit_betas:
                betas = (betas + d_sh[:NUM_BETAS]).clamp(-self.betas_bound, self.betas_bound)
                k = NUM_BETAS
            if self.off_rows:
                off = off.clone()
                off[self.off_rows] = off[self.off_rows] + d_sh[k:].reshape(-1, 3)
        return GNState(R, t, pose, betas, off)

    def prior(self, s: GNState) -> float:
        """The shared unknowns' prior: shape, and the offsets of the fitted landmark rows."""
        p = self.w_betas * float((s.betas * s.betas).sum()) if self.fit_betas else 0.0
        if self.off_rows:
            o = s.offsets[self.off_rows].double().cpu()
            p += float((self.w_off[:, None] * o * o).sum())
        return p

    def run(self, s: GNState, iters: int) -> tuple[GNState, Skeleton, dict]:
        """``iters`` LM iterations, never raising the loss. Per frame, a step that raises the frame's cost
        is not taken and the frame's damping grows (it shrinks after a taken step); the shared step is
        taken only when the total loss (frames at their better pose, plus the shape prior) falls, else it
        is dropped, its damping grows, and the frames' steps are judged with the old shared unknowns.
        Returns the state, its skeleton and the loss per frame after each iteration."""
        N = s.R.shape[0]
        lam = s.t.new_full((N,), self.damping)
        lam_sh = 1e-3
        sk = skeleton(self.model, s.betas)
        cost = self.frame_costs(s, sk)
        total = float(cost.sum()) + self.prior(s)
        history = [total]

        def merge(better: torch.Tensor, a: GNState, b: GNState) -> GNState:
            b3 = better[:, None, None]
            return GNState(
                torch.where(b3, a.R, b.R),
                torch.where(better[:, None], a.t, b.t),
                torch.where(b3, a.pose, b.pose),
                b.betas,
                b.offsets,
            )

        for _ in range(iters):
            d_p, d_sh = self.step(s, sk, lam, lam_sh)
            d_p = torch.nan_to_num(d_p)
            # trust region: no joint or wrist rotation turns by more than max_step in one iteration
            rot = torch.cat([d_p[:, :3], d_p[:, 6:]], -1).reshape(N, 16, 3).norm(dim=-1).amax(-1)
            d_p = d_p * (self.max_step / rot.clamp(min=self.max_step))[:, None]
            new = self.apply(s, d_p, d_sh)
            accepted_shared = False
            if d_sh is not None and bool(torch.isfinite(d_sh).all()):
                sk_new = skeleton(self.model, new.betas, sk) if self.fit_betas else sk
                old_pose = GNState(s.R, s.t, s.pose, new.betas, new.offsets)
                c_new, c_keep = self.frame_costs(new, sk_new), self.frame_costs(old_pose, sk_new)
                better = c_new <= c_keep
                c_merged = torch.where(better, c_new, c_keep)
                total_new = float(c_merged.sum()) + self.prior(new)
                if total_new <= total:
                    s, sk, cost, total = merge(better, new, old_pose), sk_new, c_merged, total_new
                    accepted_shared = True
                    lam_sh = max(lam_sh * 0.3, 1e-6)
                else:
                    lam_sh = min(lam_sh * 4.0, 1e6)
            if not accepted_shared:
                same_shared = GNState(new.R, new.t, new.pose, s.betas, s.offsets)
                c_new = self.frame_costs(same_shared, sk)
                better = c_new <= cost
                s = merge(better, same_shared, s)
                cost = torch.where(better, c_new, cost)
                total = float(cost.sum()) + self.prior(s)
            lam = torch.where(better, lam * 0.3, lam * 4.0).clamp(1e-6, 1e6)
            history.append(total)
        return s, sk, {"gn_loss_per_frame": [round(h / N, 5) for h in history]}
