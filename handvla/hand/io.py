"""Hand files on disk: joint recordings and hand-parameter files (both ``.npz``, read without pickle).

Joints file (the layout of ``/work/shared/data/real_hands``, see its README):

| key | meaning |
| --- | --- |
| ``joints`` | (T, 21, 3) float, metres; NaN where the tracker lost the hand |
| ``t`` | (T,) seconds, strictly increasing (spacing may be uneven); optional if ``fps`` is given |
| ``side`` | 'right' or 'left' |
| ``fps`` | nominal (median) frame rate; optional if ``t`` is given |
| ``source``, ``licence`` | provenance (optional, 'unknown' when absent) |
| ``joint_order`` | what the 21 points are: ``'<scheme>: description'``, scheme in ``JOINT_SCHEMES`` |
| ``frame`` | the coordinate frame, free text |

What point 0 is matters: OpenPose/MediaPipe order starts at the wrist joint, but Leap Motion exports put
the PALM CENTRE there (the other 20 points are as in OpenPose: the thumb's first point is its CMC base,
which Leap names "mcp"). The scheme before the colon of ``joint_order`` says which, and
``JointsRecording.root_is_palm`` carries it to the fitter (see ``handvla.hand.fitting``), which then treats
point 0 as a point rigidly attached to the palm instead of the wrist joint. A file without
``joint_order`` is taken to be OpenPose order.

Parameter file: ``HandMotion.to_dict()`` saved with ``np.savez`` (keys global_orient, hand_pose, wrist_pos,
betas, valid, side, fps, hand_model).

All writers are atomic: a temporary file in the same folder, then ``os.replace``.
"""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from handvla.atomic import atomic_savez
from handvla.errors import InputError
from handvla.hand.motion import HandMotion, interp_points
from handvla.hand.topology import NUM_JOINTS, SIDES

#: joint_order scheme -> whether point 0 is the palm centre (True) or the wrist joint (False)
JOINT_SCHEMES = {"openpose21": False, "mediapipe21": False, "leap21": True}
DEFAULT_JOINT_ORDER = "openpose21: wrist, thumb(cmc,mcp,ip,tip), index(mcp,pip,dip,tip), middle, ring, little"
PARAM_KEYS = ("global_orient", "hand_pose", "wrist_pos")


@dataclass
class JointsRecording:
    """One hand of one recording: (T, 21, 3) points in metres with timestamps."""

    joints: np.ndarray  # (T, 21, 3) float32 metres, NaN = missing
    t: np.ndarray  # (T,) float64 seconds, strictly increasing
    side: str = "right"
    fps: float = 30.0  # nominal (median) rate
    source: str = "unknown"
    licence: str = "unknown"
    joint_order: str = DEFAULT_JOINT_ORDER
    frame: str = "unknown"
    path: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        self.joints = np.asarray(self.joints, np.float32)
        self.t = np.asarray(self.t, np.float64)
        self.validate()

    @property
    def where(self) -> str:
        return self.path or "JointsRecording"

    def validate(self) -> None:
        """Raise ``InputError`` naming the file and field for anything the fitter cannot use."""
        w = self.where
        j, t = self.joints, self.t
        if j.ndim != 3 or j.shape[1:] != (NUM_JOINTS, 3) or j.shape[0] < 1:
            raise InputError(w, "joints", "shape (T, 21, 3) with T >= 1", str(j.shape))
        if np.isinf(j).any():
            raise InputError(w, "joints", "finite values in metres or NaN for missing", "inf")
        if not np.isfinite(j).any():
            raise InputError(w, "joints", "at least one observed (non-NaN) frame", "only NaN")
        if t.shape != (j.shape[0],):
            raise InputError(w, "t", f"shape ({j.shape[0]},) matching joints", str(t.shape))
        if not np.isfinite(t).all():
            raise InputError(w, "t", "finite timestamps in seconds", "NaN or inf")
        if t.size > 1 and not (np.diff(t) > 0).all():
            k = int(np.argmax(~(np.diff(t) > 0)))
            raise InputError(
                w, "t", "strictly increasing timestamps", f"t[{k}]={t[k]:.6f} >= t[{k + 1}]={t[k + 1]:.6f}"
            )
        if self.side not in SIDES:
            raise InputError(w, "side", "'left' or 'right'", repr(self.side))
        if not (np.isfinite(self.fps) and self.fps > 0):
            raise InputError(w, "fps", "a positive frame rate", repr(self.fps))
        scheme = self.joint_order.split(":", 1)[0].strip().lower()
        if scheme not in JOINT_SCHEMES:
            raise InputError(
                w,
                "joint_order",
                f"a description starting with one of {sorted(JOINT_SCHEMES)} and ':'",
                repr(self.joint_order[:60]),
            )

    @property
    def joint_scheme(self) -> str:
        """'openpose21', 'mediapipe21' or 'leap21' (the part of ``joint_order`` before the colon)."""
        return self.joint_order.split(":", 1)[0].strip().lower()

    @property
    def root_is_palm(self) -> bool:
        """True when point 0 is the palm centre (Leap), not the wrist joint."""
        return JOINT_SCHEMES[self.joint_scheme]

    @property
    def observed(self) -> np.ndarray:
        """(T,) True where all 21 points are finite."""
        return np.isfinite(self.joints).all(axis=(1, 2))

    def __len__(self) -> int:
        return self.joints.shape[0]

    @property
    def duration_s(self) -> float:
        return float(self.t[-1] - self.t[0]) if len(self) > 1 else 0.0

    def resample(self, fps: float) -> JointsRecording:
        """A copy on a uniform grid at ``fps`` (see ``resample_joints``)."""
        joints, t = resample_joints(self.joints, self.t, fps, where=self.where)
        return replace(self, joints=joints, t=t, fps=float(fps))


def resample_joints(
    joints: np.ndarray, t: np.ndarray, fps: float, where: str = "resample"
) -> tuple[np.ndarray, np.ndarray]:
    """Linear interpolation of (T, J, 3) positions at uneven times ``t`` onto a uniform grid at ``fps``.

    The grid is ``t[0] + k / fps`` up to ``t[-1]``. NaN-aware without inventing data: a target point is
    interpolated between the two source samples that bracket it and is NaN if either of them is NaN
    (a target landing exactly on a finite sample takes it), so gaps stay gaps and are filled later by
    the fitter in parameter space. Returns (joints (K, J, 3) float32, t (K,) float64).
    """
    if not (np.isfinite(fps) and fps > 0):
        raise InputError(where, "fps", "a positive target frame rate", repr(fps))
    joints = np.asarray(joints, np.float64)
    t = np.asarray(t, np.float64)
    if t.ndim != 1 or joints.shape[0] != t.shape[0] or t.size == 0:
        raise InputError(where, "t", f"shape ({joints.shape[0]},) matching joints", str(t.shape))
    if t.size > 1 and not (np.diff(t) > 0).all():
        raise InputError(where, "t", "strictly increasing timestamps", "non-increasing values")
    n = int(np.floor((t[-1] - t[0]) * fps + 1e-6)) + 1
    tq = t[0] + np.arange(n) / fps  # (K,)
    out = interp_points(joints, t, np.minimum(tq, t[-1]))  # (the last grid time may pass t[-1] by round-off)
    return out.astype(np.float32), tq


def _scalar_str(d, key: str, where: str, default: str | None) -> str:
    if key not in d:
        if default is None:
            raise InputError(where, key, "a string field", "missing")
        return default
    v = _read_array(d, key, where)
    if v.shape != () or v.dtype.kind not in "US":
        raise InputError(where, key, "a scalar string", f"{v.dtype} array of shape {v.shape}")
    return str(v)


def _open_npz(path: str | Path) -> np.lib.npyio.NpzFile:
    p = Path(path)
    if not p.is_file():
        raise InputError(str(p), None, "an existing .npz file", "no such file")
    if p.stat().st_size == 0:
        raise InputError(str(p), None, "a readable .npz file (numpy savez)", "an empty (0-byte) file")
    try:
        return np.load(p, allow_pickle=False)
    except _READ_ERRORS as e:
        raise InputError(
            str(p),
            None,
            "a readable .npz file (numpy savez, no pickled objects)",
            type(e).__name__ + f": {e}",
        ) from None


#: what reading a truncated or corrupt .npz raises (numpy parses each member's header and data lazily)
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    zipfile.BadZipFile,
    zlib.error,
    SyntaxError,
    tokenize.TokenError,
)


def _read_array(d, key: str, where: str) -> np.ndarray:
    try:
        return np.asarray(d[key])
    except _READ_ERRORS as e:  # object arrays need pickle, which we refuse; or a corrupt member
        if "pickle" in str(e).lower():
            raise InputError(where, key, "a plain numeric array (no pickled objects)", str(e)) from None
        raise InputError(
            where, key, "a readable array (the file looks truncated or corrupt)", f"{type(e).__name__}: {e}"
        ) from None


def load_joints(path: str | Path) -> JointsRecording:
    """Read a joints ``.npz`` into a validated ``JointsRecording``."""
    where = str(path)
    with _open_npz(path) as d:
        if "joints" not in d:
            raise InputError(
                where, "joints", "a (T, 21, 3) array in metres", f"missing (keys: {sorted(d.files)})"
            )
        joints = _read_array(d, "joints", where)
        if joints.dtype.kind not in "fiu":
            raise InputError(where, "joints", "a float array in metres", str(joints.dtype))
        if "t" in d:
            t = _read_array(d, "t", where).astype(np.float64)
        elif "fps" in d:
            t = None
        else:
            raise InputError(
                where, "t", "timestamps in seconds (or an 'fps' field)", "missing both 't' and 'fps'"
            )
        if "side" not in d:
            raise InputError(where, "side", "'left' or 'right'", "missing")
        side = _scalar_str(d, "side", where, None)
        if "fps" in d:
            fps_arr = _read_array(d, "fps", where)
            if fps_arr.shape != () or fps_arr.dtype.kind not in "fiu":
                raise InputError(
                    where, "fps", "a scalar frame rate", f"{fps_arr.dtype} array of shape {fps_arr.shape}"
                )
            fps = float(fps_arr)
        else:
            dt = np.diff(t) if t is not None and t.size > 1 else np.array([])
            fps = float(1.0 / np.median(dt)) if dt.size and np.median(dt) > 0 else 30.0
        if t is None:
            if not (np.isfinite(fps) and fps > 0):
                raise InputError(where, "fps", "a positive frame rate", repr(fps))
            t = np.arange(joints.shape[0]) / fps if joints.ndim >= 1 else np.zeros(0)
        return JointsRecording(
            joints=joints,
            t=t,
            side=side,
            fps=fps,
            source=_scalar_str(d, "source", where, "unknown"),
            licence=_scalar_str(d, "licence", where, "unknown"),
            joint_order=_scalar_str(d, "joint_order", where, DEFAULT_JOINT_ORDER),
            frame=_scalar_str(d, "frame", where, "unknown"),
            path=where,
        )


def save_joints(path: str | Path, rec: JointsRecording) -> Path:
    """Write a joints file in the layout ``load_joints`` reads (atomically)."""
    rec.validate()
    return atomic_savez(
        path,
        {
            "joints": rec.joints.astype(np.float32),
            "t": rec.t.astype(np.float64),
            "side": np.array(rec.side),
            "fps": np.array(float(rec.fps)),
            "source": np.array(rec.source),
            "licence": np.array(rec.licence),
            "joint_order": np.array(rec.joint_order),
            "frame": np.array(rec.frame),
        },
    )


def save_motion(path: str | Path, motion: HandMotion) -> Path:
    """Write a hand-parameter file (``HandMotion.to_dict``) atomically."""
    return atomic_savez(path, motion.to_dict())


def load_motion(path: str | Path) -> HandMotion:
    """Read a hand-parameter file written by ``save_motion``."""
    where = str(path)
    with _open_npz(path) as d:
        arrays = {k: _read_array(d, k, where) for k in d.files}
    motion = HandMotion.from_dict(arrays, where=where)
    for name in ("global_orient", "hand_pose", "wrist_pos", "betas"):
        if not np.isfinite(getattr(motion, name)).all():
            raise InputError(where, name, "finite values", "NaN or inf")
    return motion


def load_any(path: str | Path) -> JointsRecording | HandMotion:
    """Read either kind of file, told apart by its keys: 'joints' -> joints, 'global_orient' -> params."""
    where = str(path)
    with _open_npz(path) as d:
        keys = set(d.files)
    if keys.issuperset(PARAM_KEYS):
        return load_motion(path)
    if "joints" in keys:
        return load_joints(path)
    raise InputError(
        where,
        None,
        "a joints file (key 'joints') or a hand-parameter file (keys global_orient, hand_pose, wrist_pos)",
        f"keys {sorted(keys)}",
    )
