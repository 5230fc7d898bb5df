"""``HandMotion``: one hand's motion over time, in the project's single parameter convention.

Convention (every adapter converts to this; every consumer reads this):
- ``global_orient`` (T, 3): wrist rotation, axis-angle, in the camera (or world) frame of the episode.
- ``hand_pose`` (T, 15, 3): finger joint rotations, axis-angle, relative to the parent joint, MANO joint
  order (index, middle, little, ring, thumb; base to tip), *flat* convention (no ``hands_mean`` added:
  zero pose = the flat template hand).
- ``wrist_pos`` (T, 3): position of the wrist joint in metres, same frame as ``global_orient``. This is
  not MANO's ``transl`` (which offsets the shape-dependent root): see ``HandModel.mano_transl``.
- ``betas`` (10,): shape coefficients of the hand model named by ``hand_model`` (one of ``HAND_MODELS``).
- ``valid`` (T,): False where the hand was not observed (values there are meaningless).
- ``side``: 'left' or 'right'; ``fps``: frames per second.

The operations on a motion are its methods: ``mirrored`` (the other hand), ``transformed`` (a rigid change
of frame), ``resampled`` / ``at_times`` (slerp for every rotation, linear for the wrist) and ``filled``
(gaps interpolated). Their array-level cores, ``sample_frames`` and ``fill_frames`` (unit quaternions and
points on any time axis), also serve the ingest pipeline's quaternion tracks; ``interp_points`` samples
point tracks (joints) the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from handvla.errors import InputError
from handvla.hand import rotations as R
from handvla.hand.topology import NUM_BETAS, NUM_FINGER_JOINTS, check_side

#: names of the hand models (``HandMotion.hand_model``; made by ``handvla.hand.registry``)
HAND_MODELS = ("builtin", "mano")
_MIRROR_POINT = np.array([-1.0, 1.0, 1.0])  # a point reflected through the x = 0 plane


# ---------------------------------------------------------------------------------------------------------
# Sampling on a time axis (array level)
# ---------------------------------------------------------------------------------------------------------


def bracket_times(
    t: np.ndarray, tq: np.ndarray, tol: float = 1e-9
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For increasing source times ``t`` (T,) and query times ``tq`` (N,): indices lo, hi of the source
    samples around each query, the weight of hi in [0, 1], and whether the query lies inside
    [t0, t_end] (within ``tol``). An exact hit (within ``tol``) takes the sample itself (lo = hi)."""
    t, tq = np.asarray(t, np.float64), np.asarray(tq, np.float64)
    hi = np.clip(np.searchsorted(t, tq, side="left"), 0, t.size - 1)
    lo = np.clip(hi - 1, 0, t.size - 1)
    exact = np.abs(t[hi] - tq) <= tol
    lo = np.where(exact, hi, lo)
    inside = (tq >= t[0] - tol) & (tq <= t[-1] + tol)
    span = t[hi] - t[lo]
    a = np.where(span > 0, (tq - t[lo]) / np.where(span > 0, span, 1.0), 0.0)
    return lo, hi, np.clip(a, 0.0, 1.0), inside


def sample_frames(
    t: np.ndarray, tq: np.ndarray, quats: np.ndarray, points: np.ndarray, valid: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rotations ``quats`` (T, ..., 4) wxyz and points (T, ..., 3) at times ``t`` -> at times ``tq``: slerp
    and linear between the two bracketing samples. A query is valid when both samples around it are
    valid and it lies inside the source's time span (an exact hit needs only its own sample)."""
    if len(t) == 0:
        raise InputError("sample_frames", "times", "at least one source frame", "0")
    lo, hi, a, inside = bracket_times(t, tq)
    quats, points = np.asarray(quats, np.float64), np.asarray(points, np.float64)
    aq = a.reshape(a.shape + (1,) * (quats.ndim - 2))
    ap = a.reshape(a.shape + (1,) * (points.ndim - 1))
    return (
        R.slerp(quats[lo], quats[hi], aq),
        points[lo] * (1 - ap) + points[hi] * ap,
        valid[lo] & valid[hi] & inside,
    )


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True in a 1-D bool array."""
    m = np.concatenate([[False], np.asarray(mask, bool), [False]])
    d = np.diff(m.astype(np.int8))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def fill_frames(
    t: np.ndarray, quats: np.ndarray, points: np.ndarray, valid: np.ndarray, max_gap: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Invalid frames of rotations (T, ..., 4) wxyz and points (T, ..., 3) at times ``t`` interpolated
    from the nearest valid frames around them (slerp / linear, by time); frames before the first / after
    the last valid frame hold its value. Gaps of at most ``max_gap`` frames with valid frames on both
    sides become valid (``None``: validity is unchanged). Returns (quats, points, valid), float64;
    the input is returned as it is when no frame is valid."""
    quats, points = np.array(quats, np.float64), np.array(points, np.float64)
    valid = np.array(valid, bool)
    vidx = np.flatnonzero(valid)
    if vidx.size == 0:
        return quats, points, valid
    T = len(valid)
    out_valid = valid.copy()
    for a, b in _runs(~valid):
        if a == 0 or b == T:  # an end: hold the nearest valid frame, never valid
            src = vidx[0] if a == 0 else vidx[-1]
            quats[a:b], points[a:b] = quats[src], points[src]
            continue
        lo, hi = a - 1, b
        w = (t[a:b] - t[lo]) / (t[hi] - t[lo])
        wq = w.reshape((-1,) + (1,) * (quats.ndim - 2))
        wp = w.reshape((-1,) + (1,) * (points.ndim - 1))
        quats[a:b] = R.slerp(quats[lo][None], quats[hi][None], wq)
        points[a:b] = points[lo] * (1 - wp) + points[hi] * wp
        if max_gap is not None and b - a <= max_gap:
            out_valid[a:b] = True
    return quats, points, out_valid


def interp_points(values: np.ndarray, t: np.ndarray, tq: np.ndarray) -> np.ndarray:
    """(T, ...) positions at times t -> at times tq, linear; NaN where a bracketing sample is NaN or the
    query is outside [t0, t_end] (no data is invented; an exact hit takes its own sample)."""
    v = np.asarray(values, np.float64)
    lo, hi, a, inside = bracket_times(t, tq)
    a = a.reshape((-1,) + (1,) * (v.ndim - 1))
    out = v[lo] * (1 - a) + v[hi] * a
    exact = lo == hi
    out[exact] = v[hi[exact]]  # NaN * 0 would poison an exact hit
    out[~inside] = np.nan
    return out


# ---------------------------------------------------------------------------------------------------------
# The motion
# ---------------------------------------------------------------------------------------------------------


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
            raise InputError(
                "HandMotion", "hand_pose", f"shape ({T}, 15, 3) or ({T}, 45)", str(self.hand_pose.shape)
            )
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

    # ---- operations -------------------------------------------------------------------------------------

    @property
    def times(self) -> np.ndarray:
        """(T,) frame times in seconds, k / fps."""
        return np.arange(len(self)) / float(self.fps)

    def rotations_quat(self) -> np.ndarray:
        """(T, 16, 4) float64 unit quaternions wxyz: the wrist rotation then the 15 finger rotations."""
        return R.axis_angle_to_quaternion(np.concatenate([self.global_orient[:, None], self.hand_pose], 1))

    def _with_frames(self, quats: np.ndarray, wrist: np.ndarray, valid: np.ndarray, fps: float) -> HandMotion:
        aa = R.quaternion_to_axis_angle(quats) if len(quats) else np.zeros((0, 16, 3))
        return replace(
            self,
            global_orient=aa[:, 0].astype(np.float32),
            hand_pose=aa[:, 1:].astype(np.float32),
            wrist_pos=np.asarray(wrist).astype(np.float32),
            valid=np.asarray(valid, bool).copy(),
            fps=float(fps),
        )

    def mirrored(self) -> HandMotion:
        """The other hand: reflected through the x = 0 plane of its frame. Every axis-angle (x, y, z) ->
        (x, -y, -z), wrist position x -> -x, betas unchanged; a hand model's left hand is the mirror image
        of its right hand, so the joints are mirrored exactly."""
        return replace(
            self,
            global_orient=R.mirror_axis_angle(self.global_orient),
            hand_pose=R.mirror_axis_angle(self.hand_pose),
            wrist_pos=self.wrist_pos * _MIRROR_POINT.astype(np.float32),
            side="left" if self.side == "right" else "right",
            valid=self.valid.copy(),
        )

    def transformed(self, rotation: np.ndarray, translation: np.ndarray | None = None) -> HandMotion:
        """A rigid change of frame p -> R p + t: the wrist rotation composed on the left (R R_wrist), the
        wrist position mapped as a point (``wrist_pos`` is the wrist joint, so this is exact for every
        hand model); finger rotations are relative and do not change. ``rotation`` (3, 3) or per frame
        (T, 3, 3), ``translation`` (3,) or (T, 3) (None: zero). Computed in float64."""
        Rm = np.asarray(rotation, np.float64)
        go = R.matrix_to_axis_angle(Rm @ R.axis_angle_to_matrix(self.global_orient))
        wrist = (Rm @ self.wrist_pos.astype(np.float64)[..., None])[..., 0]
        if translation is not None:
            wrist = wrist + np.asarray(translation, np.float64)
        return replace(
            self,
            global_orient=go.astype(np.float32),
            wrist_pos=wrist.astype(np.float32),
            valid=self.valid.copy(),
        )

    def at_times(self, tq: np.ndarray, fps: float | None = None) -> HandMotion:
        """The motion sampled at times ``tq`` (seconds, frame k at k / fps), as a motion at ``fps``
        (default: its own): slerp for every rotation, linear for the wrist (``sample_frames``; a frame is
        valid when both frames around it are)."""
        tq = np.asarray(tq, np.float64)
        q, wrist, valid = sample_frames(self.times, tq, self.rotations_quat(), self.wrist_pos, self.valid)
        return self._with_frames(q, wrist, valid, self.fps if fps is None else fps)

    def resampled(self, fps: float) -> HandMotion:
        """The motion on the grid k / ``fps`` over its duration (itself when already at ``fps``)."""
        if abs(self.fps - fps) <= 1e-6 * fps:
            return self
        t_last = (len(self) - 1) / float(self.fps)
        n = int(np.floor(t_last * fps + 1e-6)) + 1
        return self.at_times(np.minimum(np.arange(n) / fps, t_last), fps)

    def filled(self, max_gap: int | None = None) -> HandMotion:
        """Invalid frames interpolated from the nearest valid frames (``fill_frames``: slerp / linear, ends
        hold the nearest valid frame; valid frames are kept as they are); gaps of at most ``max_gap``
        frames between valid frames become valid (None: validity unchanged). A motion without a valid
        frame is returned as it is."""
        if self.valid.all() or not self.valid.any():
            return self
        q, wrist, valid = fill_frames(self.times, self.rotations_quat(), self.wrist_pos, self.valid, max_gap)
        gap = ~self.valid
        aa = R.quaternion_to_axis_angle(q[gap])
        go, hp, wp = self.global_orient.copy(), self.hand_pose.copy(), self.wrist_pos.copy()
        go[gap], hp[gap], wp[gap] = aa[:, 0], aa[:, 1:], wrist[gap]
        return replace(self, global_orient=go, hand_pose=hp, wrist_pos=wp, valid=valid)

    # ---- files ------------------------------------------------------------------------------------------

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
            raise InputError(
                where, missing[0], "a hand-parameter array (global_orient, hand_pose, wrist_pos)", "missing"
            )
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
