"""Human hand -> Adroit hand retargeting: 21 hand joints (OpenPose order, metres) -> the Adroit arm and hand's
30 joint positions, by matching keypoints through the robot's own kinematics (MuJoCo).

What is matched (``ADROIT_KEYPOINTS``): the human wrist to the Adroit palm's origin (the Shadow-hand palm
starts at its wrist joint, 0.10 m before the middle finger's knuckle; a human wrist is 0.09 m before it),
and for every finger the knuckle, the two inner finger joints and the tip to the matching Adroit body
origins and tip sites. The human hand is scaled by ``scale`` (default: the ratio of the robot's
wrist-to-fingertip chain lengths to the human's, about 1.1-1.2 for adult hands), so fingertip positions,
not joint angles, carry over.

Two stages per frame, each a damped Gauss-Newton (Levenberg-Marquardt) solve within the joint limits, from
the previous frame's solution with a small pull towards it (temporal smoothing); Jacobians from
``mujoco.mj_jac`` on a scratch ``MjData``, so a running simulation is never disturbed:

1. **hand shape**: the 22 finger and thumb joints, matching the keypoints in the palm's own frame (the
   "anatomical" frame built the same way on both hands from the wrist and the index, middle and ring
   knuckles), so the hand's shape is independent of where the arm can put it;
2. **placement**: the arm's 6 joints and the 2 wrist joints, with the fingers fixed, matching the keypoints
   in the robot's world after the human hand is moved by ``offset``: the grasp centre (mean of the knuckles
   and fingertips) with a high weight, every keypoint with a low one (orientation). The Adroit arm turns only +-0.75 rad
   about each axis, so a human hand turned further keeps its grasp centre and gives up orientation.

Not a library: the well-kept retargeting libraries (dex-retargeting) need a URDF of the hand and a pinocchio
build; the Adroit hand exists here as the simulator's MJCF model, and its kinematics are exactly what a
replay drives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from handvla.errors import InputError

#: (MuJoCo object kind, name, human joint index in the OpenPose 21-point order, weight)
ADROIT_KEYPOINTS: tuple[tuple[str, str, int, float], ...] = (
    ("body", "palm", 0, 1.0),
    ("body", "thproximal", 1, 0.5),
    ("body", "thmiddle", 2, 0.5),
    ("body", "thdistal", 3, 1.0),
    ("site", "S_thtip", 4, 2.0),
    *(
        kp
        for finger, base in (("ff", 5), ("mf", 9), ("rf", 13), ("lf", 17))
        for kp in (
            ("body", f"{finger}proximal", base, 1.0),
            ("body", f"{finger}middle", base + 1, 0.5),
            ("body", f"{finger}distal", base + 2, 1.0),
            ("site", f"S_{finger}tip", base + 3, 2.0),
        )
    ),
)
NUM_ARM_HAND_JOINTS = 30  # ARTx ARTy ARTz ARRx ARRy ARRz, wrist (2), fingers (17), thumb (5)
ARM_JOINTS = np.arange(8)  # the arm's 3 slides and 3 rotations, and the two wrist joints
HAND_JOINTS = np.arange(8, NUM_ARM_HAND_JOINTS)
#: human joints of the grasp centre (knuckles and fingertips) and of the palm frame (wrist, knuckles)
CENTRE_JOINTS = (4, 5, 8, 9, 12, 13, 16, 17, 20)
_WRIST, _INDEX_MCP, _MIDDLE_MCP, _RING_MCP = 0, 5, 9, 13
#: human joint chains whose summed lengths set the default scale (wrist -> knuckles, finger bones)
_CHAINS = ((0, 5, 6, 7, 8), (0, 9, 10, 11, 12), (0, 13, 14, 15, 16), (0, 17, 18, 19, 20), (0, 1, 2, 3, 4))
CENTRE_WEIGHT = 20.0
#: the keypoints' weight in the placement stage, relative to the hand-shape stage: orientation yields first
PLACEMENT_KEYPOINT_WEIGHT = 0.05
#: placement cost (weighted m^2) above which a frame is solved again from the arm's rest pose (about a
#: 1 cm grasp-centre error, or what orientation alone costs a hand turned 30 degrees past the arm's reach)
RESTART_COST = 4e-3


def palm_frame(points: np.ndarray) -> np.ndarray:
    """(..., 3, 3) right-hand palm frames (columns: towards the middle knuckle, across the knuckles, palm
    normal) from (..., 21, 3) points in OpenPose order (or any array indexed the same way)."""
    p = np.asarray(points, float)
    x = p[..., _MIDDLE_MCP, :] - p[..., _WRIST, :]
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    across = p[..., _INDEX_MCP, :] - p[..., _RING_MCP, :]
    z = np.cross(x, across)
    z /= np.linalg.norm(z, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=-1)


@dataclass
class RetargetResult:
    qpos: np.ndarray  # (T, 30) joint positions (rad / m), within the model's limits
    targets: np.ndarray  # (T, K, 3) keypoint targets in the robot's world (metres)
    reached: np.ndarray  # (T, K, 3) where the robot's keypoints are at ``qpos``
    shape_error_m: np.ndarray  # (T, K) keypoint error of the hand-shape stage (palm frame)
    scale: float

    def errors_m(self) -> np.ndarray:
        """(T, K) distance of each robot keypoint from its target in the world, metres."""
        return np.linalg.norm(self.reached - self.targets, axis=-1)

    def centre_error_m(self) -> np.ndarray:
        """(T,) distance of the robot's grasp centre from the human's (moved), metres."""
        c = _centre_rows()
        return np.linalg.norm(self.reached[:, c].mean(1) - self.targets[:, c].mean(1), axis=-1)


def _centre_rows() -> list[int]:
    return [k for k, kp in enumerate(ADROIT_KEYPOINTS) if kp[2] in CENTRE_JOINTS]


class AdroitRetargeter:
    """Human joints -> Adroit joint positions on the kinematics of ``model`` (an Adroit MjModel, e.g. an
    ``AdroitSim``'s ``model``). ``smooth``: pull towards the previous frame's solution (in m^2 of weighted
    keypoint error per rad^2 or m^2 of joint change)."""

    def __init__(self, model, iterations: int = 10, first_iterations: int = 60, damping: float = 1e-5,
                 smooth: float = 1e-4):  # fmt: skip
        import mujoco

        self._mj, self.model = mujoco, model
        self.data = mujoco.MjData(model)
        self.iterations, self.first_iterations = int(iterations), int(first_iterations)
        self.damping, self.smooth = float(damping), float(smooth)
        n = NUM_ARM_HAND_JOINTS
        if model.njnt < n or model.nv < n:
            raise InputError("retarget", "model", f"an Adroit model with >= {n} joints", f"{model.njnt} joints")
        self.lo, self.hi = model.jnt_range[:n, 0].copy(), model.jnt_range[:n, 1].copy()
        self._points = []
        for kind, name, _, _ in ADROIT_KEYPOINTS:
            obj = mujoco.mjtObj.mjOBJ_BODY if kind == "body" else mujoco.mjtObj.mjOBJ_SITE
            i = mujoco.mj_name2id(model, obj, name)
            if i < 0:
                raise InputError("retarget", "model", f"an Adroit hand model with {kind} {name!r}", "missing")
            self._points.append((kind, i))
        self.human_index = np.array([k[2] for k in ADROIT_KEYPOINTS])
        self.weights = np.array([k[3] for k in ADROIT_KEYPOINTS], float)
        self.centre_rows = _centre_rows()
        self._jacp = np.zeros((3, model.nv))
        self.rest_keypoints = self.keypoints(np.zeros(n))
        # the palm frame at rest (arm and wrist at 0): hand-shape targets are placed in it
        full = np.zeros((21, 3))
        full[self.human_index] = self.rest_keypoints
        self._rest_origin, self._rest_frame = full[_WRIST], palm_frame(full)

    # -- kinematics ----------------------------------------------------------------------------------------
    def _forward(self, q: np.ndarray) -> np.ndarray:
        d = self.data
        d.qpos[:NUM_ARM_HAND_JOINTS] = q
        self._mj.mj_kinematics(self.model, d)
        self._mj.mj_comPos(self.model, d)
        return np.stack([d.xpos[i] if kind == "body" else d.site_xpos[i] for kind, i in self._points])

    def keypoints(self, q: np.ndarray) -> np.ndarray:
        """(K, 3) robot keypoint positions at joint positions ``q`` (30,)."""
        return self._forward(np.asarray(q, float)).copy()

    def _jacobian(self, p: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """(K, 3, len(cols)) d keypoints / d q[cols] at the current ``data``."""
        mj, m, d = self._mj, self.model, self.data
        out = np.empty((len(p), 3, len(cols)))
        for k, ((kind, i), point) in enumerate(zip(self._points, p)):
            mj.mj_jac(m, d, self._jacp, None, point, i if kind == "body" else m.site_bodyid[i])
            out[k] = self._jacp[:, cols]
        return out

    # -- the human side -----------------------------------------------------------------------------------
    def default_scale(self, joints: np.ndarray) -> float:
        """Robot / human length of the wrist-to-fingertip chains (median over frames)."""
        j = np.asarray(joints, float).reshape(-1, 21, 3)
        human = sum(np.linalg.norm(j[:, c[1:]] - j[:, c[:-1]], axis=-1).sum(-1) for c in _CHAINS)
        pos = dict(zip(self.human_index, self.rest_keypoints))
        robot = sum(np.linalg.norm(pos[b] - pos[a]) for c in _CHAINS for a, b in zip(c[:-1], c[1:]))
        return float(robot / np.median(human))

    # -- solving ---------------------------------------------------------------------------------------------
    def _residual(self, q, cols, targets, w, centre, q_prev, reg, with_jacobian=True):
        """Weighted residual r (and its Jacobian A = d r / d q[cols]); the cost is r @ r."""
        p = self._forward(q)
        wc = np.sqrt(CENTRE_WEIGHT)
        r = [((targets - p) * w).reshape(-1)]
        if centre is not None:
            r.append(wc * (centre - p[self.centre_rows].mean(0)))
        if reg:
            r.append(np.sqrt(reg) * (q_prev[cols] - q[cols]))
        r = np.concatenate(r)
        if not with_jacobian:
            return r, None
        J = self._jacobian(p, cols)
        A = [-(J * w[:, :, None]).reshape(-1, len(cols))]
        if centre is not None:
            A.append(-wc * J[self.centre_rows].mean(0))
        if reg:
            A.append(np.sqrt(reg) * np.eye(len(cols)))
        return r, np.concatenate(A)

    def _solve(self, q, cols, targets, iterations, q_prev=None, centre=None, keypoint_weight=1.0):
        """Move ``q[cols]`` so the keypoints reach ``targets`` (K, 3) (and their grasp centre ``centre``):
        Levenberg-Marquardt within the joint limits. Returns (q, cost)."""
        q = q.copy()
        w = np.sqrt(self.weights * keypoint_weight)[:, None]
        lo, hi = self.lo[cols], self.hi[cols]
        reg = self.smooth if q_prev is not None else 0.0
        lam = 1e-3
        r, A = self._residual(q, cols, targets, w, centre, q_prev, reg)
        cost = float(r @ r)
        for _ in range(iterations):
            g, H = -(A.T @ r), A.T @ A
            x = q[cols]
            for _ in range(6):  # raise the damping until the step lowers the cost
                Hd = H + (lam + self.damping) * np.diag(np.diag(H) + 1e-6)
                dq = np.linalg.solve(Hd, g)
                # joints at a limit that the step pushes further out are held and the rest solved again:
                # otherwise the clipped step need not descend and the solve stalls at the limit
                held = ((x <= lo + 1e-9) & (dq < 0)) | ((x >= hi - 1e-9) & (dq > 0))
                if held.any() and not held.all():
                    free = ~held
                    dq = np.zeros_like(dq)
                    dq[free] = np.linalg.solve(Hd[np.ix_(free, free)], g[free])
                trial = q.copy()
                trial[cols] = np.clip(x + dq, lo, hi)
                r_new, _ = self._residual(trial, cols, targets, w, centre, q_prev, reg, with_jacobian=False)
                new_cost = float(r_new @ r_new)
                if new_cost < cost:
                    break
                lam *= 10.0
            else:
                break  # no step lowers the cost: converged (or stuck)
            converged = cost - new_cost < 1e-10 * max(cost, 1e-12) or np.abs(trial[cols] - x).max() < 1e-6
            q, lam = trial, max(lam / 10.0, 1e-7)
            r, A = self._residual(q, cols, targets, w, centre, q_prev, reg)
            cost = float(r @ r)
            if converged:
                break
        return q, cost

    def retarget(self, joints: np.ndarray, offset: np.ndarray | None = None, scale: float | None = None,
                 q_start: np.ndarray | None = None) -> RetargetResult:  # fmt: skip
        """Retarget a sequence of right-hand joints (T, 21, 3), metres, in a frame whose axes are the robot
        world's; ``offset`` (3,) or (T, 3): the translation from that frame to the robot's world (default
        0). The hand is scaled about its grasp centre, so the centre goes exactly to ``centre + offset``."""
        j = np.asarray(joints, float)
        if j.ndim != 3 or j.shape[1:] != (21, 3) or not np.isfinite(j).all():
            raise InputError("retarget", "joints", "finite (T, 21, 3) hand joints in metres", str(j.shape))
        T, n = len(j), NUM_ARM_HAND_JOINTS
        s = self.default_scale(j) if scale is None else float(scale)
        off = np.broadcast_to(np.zeros(3) if offset is None else np.asarray(offset, float), (T, 3))
        centre = j[:, list(CENTRE_JOINTS)].mean(1)
        world = (centre + off)[:, None] + s * (j - centre[:, None])  # (T, 21, 3) robot world
        frames = palm_frame(j)  # (T, 3, 3)
        local = np.einsum("tji,tkj->tki", frames, s * (j - j[:, :1]))  # (T, 21, 3) palm frame
        shape_targets = self._rest_origin + local @ self._rest_frame.T
        q = np.zeros(n) if q_start is None else np.clip(np.asarray(q_start, float), self.lo, self.hi)
        qs = np.zeros((T, n))
        reached = np.zeros((T, len(self._points), 3))
        shape_err = np.zeros((T, len(self._points)))
        for t in range(T):
            first = t == 0
            its = self.first_iterations if first else self.iterations
            prev = None if first else qs[t - 1]
            rest_arm = q.copy()
            rest_arm[ARM_JOINTS] = 0.0
            hand, _ = self._solve(rest_arm, HAND_JOINTS, shape_targets[t, self.human_index], its, prev)
            shape_err[t] = np.linalg.norm(self._forward(hand) - shape_targets[t, self.human_index], axis=-1)
            q[HAND_JOINTS] = hand[HAND_JOINTS]
            tg = world[t, self.human_index]
            centre_t = tg[self.centre_rows].mean(0)
            placed, cost = self._solve(q, ARM_JOINTS, tg, its, prev, centre_t, PLACEMENT_KEYPOINT_WEIGHT)
            if cost > RESTART_COST:  # a local minimum at the limits: try again from the arm's rest pose
                fresh = q.copy()
                fresh[ARM_JOINTS] = 0.0
                again, cost2 = self._solve(fresh, ARM_JOINTS, tg, self.first_iterations, prev, centre_t,
                                           PLACEMENT_KEYPOINT_WEIGHT)  # fmt: skip
                if cost2 < cost:
                    placed = again
            q = placed
            qs[t] = q
            reached[t] = self._forward(q)
        return RetargetResult(qs, world[:, self.human_index], reached, shape_err, s)
