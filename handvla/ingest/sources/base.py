"""The source-adapter interface, the record every adapter returns, and the conversions they share.

A ``Source`` reads one public hand dataset in its native layout (nothing else: no converted copies) and
returns ``SourceEpisode`` records in the project's single convention (``handvla.hand.motion``):

- MANO-parameter sources (ARCTIC, DexYCB, HOI4D, H2O, TACO, OakInk2, HaMeR pseudo-labels) give per hand a
  ``HandMotion`` with ``hand_model='mano'``: axis-angle, MANO joint order, flat hand pose (no
  ``hands_mean``), ``wrist_pos`` = the wrist JOINT in metres, all in the CAMERA frame (OpenCV axes);
- joint-only sources (EgoDex, FPHA, joints21 files) give per hand ``joints`` (T, 21, 3), OpenPose order,
  metres, camera frame, NaN where missing, and list the hand in ``needs_fit``: the standardisation step
  fits parameters (``handvla.hand.fitting.fit_recording(ep.joint_recording(side))``), adapters never do.

``SourceEpisode`` *is* a ``handvla.data.schema.Episode`` (a subclass), so anything that takes an Episode
takes it; the extra fields say what the build step still has to do (fit joints, turn image files into a
video, per-frame extrinsics of a moving camera). ``to_episode`` drops them.

Errors: a corrupt or truncated file, a missing intrinsics file, wrong shapes raise ``InputError`` naming the
file and field (the build step reports and skips the episode); a missing MANO model raises
``MissingResourceError`` (nothing from that source can be converted without it).

Dataset pickles are read with ``load_pickle``: the restricted unpickler of ``handvla.hand.pickle_safe``
(numpy arrays only) extended with what datasets pickle in practice (``collections.OrderedDict`` and torch
tensors; a tensor's storage bytes are read back with ``torch.load(weights_only=True)``). Nothing from a
file runs code.
"""

from __future__ import annotations

import collections
import io
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from handvla.camera import Camera
from handvla.data.schema import Episode
from handvla.errors import HandvlaError, InputError, MissingResourceError
from handvla.hand.io import DEFAULT_JOINT_ORDER, JointsRecording
from handvla.hand.motion import HandMotion
from handvla.hand.pickle_safe import RestrictedUnpickler, UnsafePickleError
from handvla.hand.rotations import quaternion_to_axis_angle
from handvla.hand.topology import NUM_BETAS, NUM_JOINTS, SIDES

SOURCE_KINDS = ("mocap", "vr", "rgb")
PARAM_KINDS = ("mano", "joints")

# ---------------------------------------------------------------------------------------------------------
# The record
# ---------------------------------------------------------------------------------------------------------


@dataclass
class SourceEpisode(Episode):
    """An ``Episode`` straight from a source, plus what the build step still has to do.

    ``needs_fit``: sides given only as ``joints`` (fit them before storing). ``joint_order``: what the 21
    points are (``handvla.hand.io`` scheme text; ``leap21`` means point 0 is the palm centre).
    ``frame_paths``: one image file per frame when the source ships frames rather than an mp4 (``video`` is
    then None). ``frame_ids``: (T,) the source's own frame numbers. ``world_to_camera``: (T, 4, 4) per-frame
    extrinsics for a moving camera (``camera.extrinsics`` holds a static one).
    """

    needs_fit: tuple[str, ...] = ()
    joint_order: str = DEFAULT_JOINT_ORDER
    frame_paths: list[str] | None = None
    frame_ids: np.ndarray | None = None
    world_to_camera: np.ndarray | None = None

    def validate(self) -> SourceEpisode:
        """Check shapes and consistency; raise ``InputError`` naming the episode and field. Returns self."""
        where = f"episode '{self.key}'" if self.key else "SourceEpisode"
        T = self.num_frames
        if T < 1:
            raise InputError(where, "frames", "at least one frame", "0")
        if not (math.isfinite(float(self.fps)) and self.fps > 0):
            raise InputError(where, "fps", "a positive frame rate", repr(self.fps))
        for side, m in self.hands.items():
            if side not in SIDES or not isinstance(m, HandMotion):
                raise InputError(
                    where, f"hands[{side!r}]", "a HandMotion under 'left' or 'right'", type(m).__name__
                )
            if len(m) != T:
                raise InputError(where, f"hands[{side!r}]", f"{T} frames", str(len(m)))
            if m.side != side:
                raise InputError(where, f"hands[{side!r}].side", repr(side), repr(m.side))
        for side, j in self.joints.items():
            j = np.asarray(j)
            if side not in SIDES or j.shape != (T, NUM_JOINTS, 3):
                raise InputError(
                    where, f"joints[{side!r}]", f"shape ({T}, 21, 3) under 'left'/'right'", str(j.shape)
                )
            if np.isinf(j).any():
                raise InputError(where, f"joints[{side!r}]", "finite values or NaN for missing", "inf")
        for side in self.needs_fit:
            if side not in self.joints:
                raise InputError(
                    where,
                    "needs_fit",
                    f"joints for every side to fit ({side!r} has none)",
                    repr(self.needs_fit),
                )
        if not self.hands and not self.joints:
            raise InputError(where, "hands", "at least one hand (parameters or joints)", "none")
        if self.frame_paths is not None and len(self.frame_paths) != T:
            raise InputError(where, "frame_paths", f"{T} image paths", str(len(self.frame_paths)))
        if self.frame_ids is not None and np.shape(self.frame_ids) != (T,):
            raise InputError(where, "frame_ids", f"shape ({T},)", str(np.shape(self.frame_ids)))
        if self.world_to_camera is not None:
            e = np.asarray(self.world_to_camera)
            if e.shape != (T, 4, 4) or not np.isfinite(e).all():
                raise InputError(where, "world_to_camera", f"finite (T={T}, 4, 4) matrices", str(e.shape))
        if not isinstance(self.camera, Camera):
            raise InputError(where, "camera", "a handvla.data.schema.Camera", type(self.camera).__name__)
        return self

    def joint_recording(self, side: str) -> JointsRecording:
        """The joints of one hand as a ``JointsRecording`` (what ``fit_recording`` takes)."""
        if side not in self.joints:
            raise InputError(f"episode '{self.key}'", f"joints[{side!r}]", "joints for this side", "none")
        T = self.num_frames
        return JointsRecording(
            joints=self.joints[side],
            t=np.arange(T) / float(self.fps),
            side=side,
            fps=float(self.fps),
            source=self.source or "unknown",
            licence=self.licence or "unknown",
            joint_order=self.joint_order,
            frame="camera (OpenCV axes), metres",
            path=self.key or None,
        )

    def load_frames(self) -> np.ndarray:
        """Read ``frame_paths`` as (T, H, W, 3) uint8 RGB (all frames must exist and share one size)."""
        from PIL import Image

        if not self.frame_paths:
            raise InputError(f"episode '{self.key}'", "frame_paths", "image files to read", "none")
        out = []
        for p in self.frame_paths:
            try:
                with Image.open(p) as im:
                    out.append(np.asarray(im.convert("RGB")))
            except (OSError, ValueError) as e:
                raise InputError(p, None, "a readable image", f"{type(e).__name__}: {e}") from None
            if out[-1].shape != out[0].shape:
                raise InputError(p, "size", f"the size of the first frame {out[0].shape}", str(out[-1].shape))
        return np.stack(out)

    def to_episode(self, load_frames: bool = False) -> Episode:
        """A plain ``Episode`` (extra fields dropped; with ``load_frames`` the image files become ``video``)."""
        base = {f.name: getattr(self, f.name) for f in fields(Episode)}
        if load_frames and self.frame_paths and base["video"] is None:
            base["video"] = self.load_frames()
        return Episode(**base)


# ---------------------------------------------------------------------------------------------------------
# The adapter interface
# ---------------------------------------------------------------------------------------------------------


class Source:
    """One dataset. Subclasses set the class attributes and implement ``list_episodes``/``read_episode``.

    ``kind``: 'mocap' (lab capture: markers, multi-view fitting, sensors), 'vr' (headset hand tracking) or
    'rgb' (estimated from video). ``params``: 'mano' (gives HandMotion) or 'joints' (gives joints to fit).
    """

    name: ClassVar[str] = ""
    licence: ClassVar[str] = ""
    kind: ClassVar[str] = ""
    params: ClassVar[str] = "mano"
    fps: ClassVar[float] = 30.0  # nominal frame rate of the episodes
    url: ClassVar[str] = ""
    needs_mano: ClassVar[bool] = False
    layout: ClassVar[str] = ""  # one line: the files this adapter reads

    def __init__(self, mano_dir: str | Path | None = None):
        self.mano_dir = None if mano_dir is None else Path(mano_dir)
        self._mano_cache: dict[tuple[str, bool], Any] = {}

    def list_episodes(self, root: str | Path) -> list[str]:
        """Keys of every episode under ``root`` (sorted; cheap: no parameter file is parsed)."""
        raise NotImplementedError

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        """Read one episode into the project convention."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "licence": self.licence,
            "kind": self.kind,
            "params": self.params,
            "fps": self.fps,
            "needs_mano": self.needs_mano,
            "url": self.url,
            "layout": self.layout,
        }

    # -- helpers for subclasses ---------------------------------------------------------------------------
    def _root(self, root: str | Path) -> Path:
        r = Path(root).expanduser()
        if not r.is_dir():
            raise MissingResourceError(
                f"{self.name}: dataset folder {r} does not exist (expected: {self.layout})"
            )
        return r

    def mano_model(self, side: str, *, fix_left_shapedirs: bool = True):
        """The MANO model of ``side`` (cached). ``fix_left_shapedirs=False`` reproduces tools that use the
        published left file as is (manopth, smplx, manotorch): use it to place the wrist of such sources."""
        from handvla.hand.mano import MANOHand

        if self.mano_dir is None:
            raise MissingResourceError(
                f"{self.name}: its hand annotations are MANO parameters, and converting them to the project "
                "convention needs the licensed MANO model (MANO_RIGHT.pkl / MANO_LEFT.pkl from "
                "https://mano.is.tue.mpg.de): pass mano_dir= (--mano-dir) pointing at the folder that holds them"
            )
        fix = bool(fix_left_shapedirs) if side == "left" else True
        k = (side, fix)
        if k not in self._mano_cache:
            try:
                self._mano_cache[k] = MANOHand.from_dir(self.mano_dir, side, fix_left_shapedirs=fix)
            except MissingResourceError as e:
                raise MissingResourceError(f"{self.name}: {e}") from None
        return self._mano_cache[k]

    def _key_path(self, root: Path, key: str, depth: int) -> tuple[str, ...]:
        """Split ``key`` into ``depth`` parts; refuse keys that climb out of ``root``."""
        parts = tuple(key.strip("/").split("/"))
        if len(parts) != depth or any(p in ("", ".", "..") for p in parts):
            raise InputError(
                f"{self.name} key {key!r}", "key", f"{depth} '/'-separated names (see list_episodes)", key
            )
        return parts


# ---------------------------------------------------------------------------------------------------------
# Reading files safely
# ---------------------------------------------------------------------------------------------------------


def _load_storage_bytes(b: bytes) -> Any:
    """``torch.storage._load_from_bytes`` without arbitrary code: the storage is a legacy torch.save stream."""
    if not isinstance(b, (bytes, bytearray)):
        raise UnsafePickleError(
            None, None, "storage bytes for torch.storage._load_from_bytes", type(b).__name__
        )
    return torch.load(io.BytesIO(bytes(b)), weights_only=True)


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """numpy's protocol-5 array reconstructor (``numpy.core.numeric._frombuffer``): bytes -> array, a copy."""
    a = np.frombuffer(bytes(buf), dtype=np.dtype(dtype))
    return a.reshape(shape, order=order).copy()


_DATA_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch.storage", "_load_from_bytes"): _load_storage_bytes,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("builtins", "complex"): complex,
    ("builtins", "slice"): slice,
}


class _DataUnpickler(RestrictedUnpickler):
    """The MANO-file unpickler plus OrderedDict and torch tensors (what dataset pickles hold)."""

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        if (module, name) in _DATA_GLOBALS:
            return _DATA_GLOBALS[(module, name)]
        return super().find_class(module, name)


def _unpickle(data: bytes, where: Path) -> Any:
    try:
        return _DataUnpickler(io.BytesIO(data), where).load()
    except UnsafePickleError as e:
        expected = (
            "only numpy arrays, torch tensors and plain containers (the global was refused; nothing ran)"
        )
        raise UnsafePickleError(where, e.field, expected, e.got) from None
    except HandvlaError:
        raise
    except Exception as e:  # a corrupted stream: EOFError, UnpicklingError, ValueError, RuntimeError...
        raise InputError(
            where, None, "a readable pickle of arrays/tensors", f"{type(e).__name__}: {e}"
        ) from None


def load_pickle(path: str | Path) -> Any:
    """Unpickle a dataset file (dicts, lists, numpy arrays, torch tensors); never runs code from the file."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "an existing pickle file", "no such file")
    return _unpickle(p.read_bytes(), p)


def load_npy(path: str | Path) -> Any:
    """Read a ``.npy``: a plain array, or (``np.save`` of a dict/object) the pickled object, read safely."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "an existing .npy file", "no such file")
    with open(p, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        except (ValueError, OSError) as e:
            raise InputError(p, None, "a .npy file", f"{type(e).__name__}: {e}") from None
        if dtype.hasobject:
            obj = _unpickle(f.read(), p)
            # np.save of a python object stores a 0-d object array: the pickle is that array
            if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
                return obj.item()
            return obj
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise InputError(p, None, "a readable .npy array", f"{type(e).__name__}: {e}") from None


def load_yaml(path: str | Path) -> Any:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, "an existing YAML file", "no such file")
    try:
        return yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(p, None, "valid YAML", f"{type(e).__name__}: {e}") from None


def read_numbers(path: str | Path, count: int | None = None, what: str = "numbers") -> np.ndarray:
    """Whitespace-separated numbers of a text file as float64 (exactly ``count`` of them if given)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(p, None, f"an existing text file of {what}", "no such file")
    try:
        vals = np.array(p.read_text().split(), dtype=np.float64)
    except (ValueError, UnicodeDecodeError) as e:
        raise InputError(p, None, f"whitespace-separated {what}", f"{type(e).__name__}: {e}") from None
    if count is not None and vals.size != count:
        raise InputError(p, None, f"{count} {what}", f"{vals.size} numbers")
    return vals


def as_array(
    x: Any, where: str | Path, field: str, shape: tuple[int, ...] | None = None, *, finite: bool = True
) -> np.ndarray:
    """A numpy/torch/list value as float64 of ``shape`` (-1 = any size there; a leading 1 may be squeezed)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(
            where, field, "a numeric array" + (f" of shape {shape}" if shape else ""), type(x).__name__
        ) from None
    if shape is not None:

        def fits(s):
            return len(s) == len(shape) and all(w == -1 or w == g for w, g in zip(shape, s))

        if not fits(a.shape):
            # only singleton axes may differ (files store (1, 51) for (51,), (N, 1, 3, 3) for (N, 3, 3), ...)
            core = [d for d in a.shape if d != 1]
            want = [w for w in shape if w != 1]
            if len(core) == len(want) and all(w == -1 or w == c for w, c in zip(want, core)):
                it = iter(core)
                a = a.reshape(tuple(1 if w == 1 else next(it) for w in shape))
            else:
                raise InputError(where, field, f"shape {shape}", str(a.shape))
    if finite and not np.isfinite(a).all():
        raise InputError(where, field, "finite values", "NaN or inf")
    return a


def numeric_key(s: str) -> tuple:
    """Sort key: numbers in names compare as numbers ('9' < '10')."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def video_size(path: str | Path | None, default: tuple[int, int]) -> tuple[int, int, int | None]:
    """(width, height, frame count) of a video, or ``default`` size and None when there is no video."""
    if path is None or not Path(path).is_file():
        return default[0], default[1], None
    from handvla.video import video_info

    info = video_info(path)
    return info.width, info.height, info.num_frames


# ---------------------------------------------------------------------------------------------------------
# Rotations and rigid changes (float64)
# ---------------------------------------------------------------------------------------------------------


def quat_wxyz_to_aa(q: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4) scalar first -> axis-angle (..., 3); normalised first (files store them rounded)."""
    q = np.asarray(q, np.float64)
    n = np.linalg.norm(q, axis=-1, keepdims=True)
    if (n < 1e-8).any():
        raise InputError("quaternion", "norm", "non-zero quaternions", "a zero quaternion")
    return quaternion_to_axis_angle(q / n)


def orthonormal(R: np.ndarray, where: str | Path, field: str, tol: float = 1e-3) -> np.ndarray:
    """Check (..., 3, 3) is a rotation (within ``tol``) and return it projected onto SO(3)."""
    R = np.asarray(R, np.float64)
    err = np.abs(np.swapaxes(R, -1, -2) @ R - np.eye(3)).max() if R.size else 0.0
    det = np.linalg.det(R) if R.size else np.ones(1)
    if err > tol or (det <= 0).any():
        raise InputError(
            where, field, "rotation matrices (orthonormal, det +1)", f"max |R^T R - I| = {err:.3g}"
        )
    U, _, Vt = np.linalg.svd(R)
    return U @ Vt


def rigid_points(T: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Apply (4, 4) or (N, 4, 4) transforms to points (N, 3) / (N, J, 3): R p + t."""
    T = np.asarray(T, np.float64)
    p = np.asarray(p, np.float64)
    R, t = T[..., :3, :3], T[..., :3, 3]
    if T.ndim == 2:
        return p @ R.T + t
    if p.ndim == 2:  # (N, 3)
        return np.einsum("nij,nj->ni", R, p) + t
    return np.einsum("nij,nkj->nki", R, p) + t[:, None]


def invert_rigid(T: np.ndarray) -> np.ndarray:
    """Inverse of (..., 4, 4) rigid transforms."""
    T = np.asarray(T, np.float64)
    R, t = T[..., :3, :3], T[..., :3, 3]
    out = np.zeros(T.shape)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def check_rigid(T: np.ndarray, where: str | Path, field: str) -> np.ndarray:
    """(..., 4, 4) finite rigid transforms (rotation part re-orthonormalised), else InputError."""
    T = np.asarray(T, np.float64)
    if T.shape[-2:] != (4, 4) or not np.isfinite(T).all():
        raise InputError(where, field, "finite (4, 4) rigid transforms", str(T.shape))
    out = T.copy()
    out[..., :3, :3] = orthonormal(T[..., :3, :3], where, field)
    if np.abs(T[..., 3, :] - np.array([0.0, 0.0, 0.0, 1.0])).max() > 1e-6:
        raise InputError(where, field, "a last row [0, 0, 0, 1]", str(T[..., 3, :].reshape(-1, 4)[0]))
    return out


# ---------------------------------------------------------------------------------------------------------
# MANO parameters -> HandMotion
# ---------------------------------------------------------------------------------------------------------


def constant_betas(betas: np.ndarray, where: str | Path, field: str) -> tuple[np.ndarray, float]:
    """(10,) or (T, 10) -> one (10,) vector (the mean) and its largest per-frame deviation."""
    b = np.asarray(betas, np.float64)
    if b.shape == (NUM_BETAS,):
        return b, 0.0
    if b.ndim == 2 and b.shape[1] == NUM_BETAS and b.shape[0] >= 1:
        m = b.mean(0)
        return m, float(np.abs(b - m).max())
    raise InputError(where, field, f"shape ({NUM_BETAS},) or (T, {NUM_BETAS})", str(b.shape))


def mano_motion(
    *,
    side: str,
    global_orient: np.ndarray,
    hand_pose: np.ndarray,
    betas: np.ndarray,
    wrist: np.ndarray,
    fps: float,
    valid: np.ndarray | None = None,
    world_to_camera: np.ndarray | None = None,
) -> HandMotion:
    """Assemble a ``HandMotion`` (hand_model 'mano') from parameters already in the project's pose convention.

    global_orient (T, 3) axis-angle, hand_pose (T, 15, 3) flat axis-angle, wrist (T, 3) = the wrist JOINT in
    metres, all in the frame of the source; ``world_to_camera`` (4, 4) or (T, 4, 4) moves them to the camera
    frame: rot' = R rot, wrist' = R wrist + t (with the wrist joint as the parameter, the shape-dependent root
    offset of MANO's ``transl`` does not enter). Invalid frames are zeroed so that every value is finite.
    """
    go = np.asarray(global_orient, np.float64)
    hp = np.asarray(hand_pose, np.float64).reshape(go.shape[0], 15, 3)
    w = np.asarray(wrist, np.float64)
    T = go.shape[0]
    valid = np.ones(T, bool) if valid is None else np.asarray(valid, bool)
    valid = valid & np.isfinite(go).all(1) & np.isfinite(hp).all((1, 2)) & np.isfinite(w).all(1)
    go, hp, w = (
        np.where(valid[:, None], go, 0.0),
        np.where(valid[:, None, None], hp, 0.0),
        np.where(valid[:, None], w, 0.0),
    )
    m = HandMotion(
        global_orient=go.astype(np.float32),
        hand_pose=hp.astype(np.float32),
        wrist_pos=w.astype(np.float32),
        betas=np.asarray(betas, np.float32),
        side=side,
        fps=float(fps),
        valid=valid,
        hand_model="mano",
    )
    if world_to_camera is None:
        return m
    E = np.asarray(world_to_camera, np.float64)
    m = m.transformed(E[..., :3, :3], E[..., :3, 3])
    m.global_orient[~valid], m.wrist_pos[~valid] = 0.0, 0.0  # invalid frames stay zero
    return m


def wrist_from_mano_transl(model, betas: np.ndarray, transl: np.ndarray) -> np.ndarray:
    """MANO ``transl`` (T, 3) -> wrist joint (T, 3) = J0(betas) + transl, with the source's own model."""
    with torch.no_grad():
        J0 = (
            model.wrist_from_transl(torch.as_tensor(np.asarray(betas, np.float64)), torch.zeros(3))
            .double()
            .numpy()
        )
    return np.asarray(transl, np.float64) + J0


def mano_root(model, betas: np.ndarray) -> np.ndarray:
    """The rest root joint J0 (..., 3) of the model for betas (..., 10), metres, model frame."""
    b = torch.as_tensor(np.asarray(betas, np.float64))
    with torch.no_grad():
        return model.wrist_from_transl(b, torch.zeros(b.shape[:-1] + (3,))).double().numpy()


def mean_to_flat(model, hand_pose: np.ndarray) -> np.ndarray:
    """Pose relative to ``hands_mean`` (T, 45) -> flat (T, 15, 3)."""
    return np.asarray(hand_pose, np.float64).reshape(-1, 15, 3) + model.hands_mean.double().numpy()


def pca_to_flat(model, coeffs: np.ndarray, mean: bool) -> np.ndarray:
    """PCA coefficients (T, k) -> flat axis-angle (T, 15, 3) (``mean``: the coefficients are relative to
    ``hands_mean``, as in manopth with flat_hand_mean=False)."""
    c = np.asarray(coeffs, np.float64)
    comps = model.hands_components.double().numpy()[: c.shape[-1]]
    pose = (c @ comps).reshape(-1, 15, 3)
    return pose + model.hands_mean.double().numpy() if mean else pose


def camera_from_K(
    K: np.ndarray, width: int, height: int, where: str | Path, extrinsics: np.ndarray | None = None
) -> Camera:
    K = as_array(K, where, "intrinsics", (3, 3))
    try:
        return Camera.from_K(K, width, height, extrinsics)
    except InputError as e:
        raise InputError(where, e.field, e.expected, e.got) from None


def sides_present(mapping: dict[str, Any]) -> list[str]:
    return [s for s in SIDES if s in mapping]


@dataclass
class Provenance:
    """What every adapter writes into ``annotations['provenance']`` (JSON-friendly)."""

    source: str
    key: str
    files: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "key": self.key,
            "files": [os.fspath(f) for f in self.files],
            **self.notes,
        }
