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

What adapters share lives here, once: ``Source.episode`` (the record with name, licence, key and provenance
filled in), ``Source._key_parts`` (keys that cannot climb out of the dataset folder), ``relative_keys`` /
``numeric_key`` (listing), ``require_keys`` / ``as_array`` (present fields, shapes, with errors naming file
and field), ``frame_table`` (sparse per-frame records -> (T, ...) arrays and a valid mask),
``constant_betas`` (one shape vector per hand), ``mano_motion`` and the MANO pose conversions,
``camera_from_K`` / ``centred_camera`` (intrinsics), ``existing_frames`` / ``video_size`` (images, video).

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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
from PIL import Image

from handvla.camera import Camera
from handvla.data.schema import Episode
from handvla.errors import HandvlaError, InputError, MissingResourceError
from handvla.hand.io import DEFAULT_JOINT_ORDER, JointsRecording
from handvla.hand.mano import MANOHand
from handvla.hand.motion import HandMotion
from handvla.hand.pickle_safe import RestrictedUnpickler, UnsafePickleError
from handvla.hand.rotations import quaternion_to_axis_angle
from handvla.hand.topology import NUM_BETAS, NUM_JOINTS, SIDES
from handvla.video import video_info

SOURCE_KINDS = ("mocap", "vr", "rgb")
PARAM_KINDS = ("mano", "joints")
#: the class facts of a ``Source`` that ``describe`` reports, in this order
DESCRIBED = ("name", "licence", "kind", "params", "fps", "needs_mano", "url", "layout")

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
        """The class facts named in ``DESCRIBED``."""
        return {k: getattr(self, k) for k in DESCRIBED}

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

    def _key_parts(self, key: str, depth: int | None = None, expected: str = "") -> tuple[str, ...]:
        """The '/'-separated names of ``key`` (exactly ``depth`` of them when given); refuse keys that climb out
        of the dataset folder. ``expected``: what a key is, for the error (default: the number of names)."""
        parts = tuple(key.strip("/").split("/"))
        if (depth is not None and len(parts) != depth) or any(p in ("", ".", "..") for p in parts):
            expected = expected or f"{depth} '/'-separated names (see list_episodes)"
            raise InputError(f"{self.name} key {key!r}", "key", expected, key)
        return parts

    def episode(
        self,
        key: str,
        files: Iterable[str | Path],
        notes: Mapping[str, Any],
        *,
        annotations: Mapping[str, Any] | None = None,
        **fields: Any,
    ) -> SourceEpisode:
        """The validated ``SourceEpisode`` of ``key`` with what every adapter fills in the same way.

        ``key`` = '<source>/<key>', ``source`` = this adapter's name, ``fps`` and ``licence`` its class values
        unless ``fields`` gives them; ``annotations['provenance']`` = {source, key, files (the files read),
        **notes} (JSON-friendly), then the other ``annotations``. ``fields``: the other ``SourceEpisode``
        fields (hands, joints, camera, tasks, rig, frame_paths, ...).
        """
        provenance = {"source": self.name, "key": key, "files": [os.fspath(f) for f in files], **notes}
        return SourceEpisode(
            key=f"{self.name}/{key.strip('/')}",
            source=self.name,
            annotations={"provenance": provenance, **(annotations or {})},
            **({"fps": self.fps, "licence": self.licence} | fields),
        ).validate()


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


def require_keys(
    obj: Any,
    where: str | Path,
    keys: Iterable[str],
    expected: str = "present",
    *,
    mapping: str = "",
    prefix: str = "",
) -> Any:
    """``obj`` when it holds every one of ``keys``, else ``InputError(where, prefix + key, expected, 'missing')``.

    ``mapping``: also require ``obj`` to be a dict, described so in the error (e.g. "a YAML mapping")."""
    if mapping and not isinstance(obj, dict):
        raise InputError(where, None, mapping, type(obj).__name__)
    for k in keys:
        if k not in obj:
            raise InputError(where, f"{prefix}{k}", expected, "missing")
    return obj


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


# ---------------------------------------------------------------------------------------------------------
# Listing episodes, finding frames
# ---------------------------------------------------------------------------------------------------------


def numeric_key(s: str) -> tuple:
    """Sort key: numbers in names compare as numbers ('9' < '10')."""
    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def relative_keys(paths: Iterable[Path], base: Path, suffix: str = "") -> list[str]:
    """Episode keys of ``paths``: each path relative to ``base`` ('/'-separated, ``suffix`` cut off), sorted
    with numbers compared as numbers."""

    def key(p: Path) -> str:
        rel = p.relative_to(base).as_posix()
        return rel[: len(rel) - len(suffix)]

    return sorted(map(key, paths), key=numeric_key)


def existing_frames(paths: list[str | Path]) -> list[str] | None:
    """The image files of an episode's frames as strings when the source ships them (the first one exists),
    else None (no images: the episode has no frames to read)."""
    return [str(p) for p in paths] if paths and Path(paths[0]).is_file() else None


def video_size(path: str | Path | None, default: tuple[int, int]) -> tuple[int, int, int | None]:
    """(width, height, frame count) of a video, or ``default`` size and None when there is no video."""
    if path is None or not Path(path).is_file():
        return default[0], default[1], None
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


def frame_table(
    T: int,
    rows: Mapping[int, Mapping[str, np.ndarray]],
    shapes: Mapping[str, tuple[int, ...]],
    fill: float = 0.0,
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-frame records {frame index: {name: values}} (frames without a record left out) -> one (T, *shape)
    float64 array per name in ``shapes`` (``fill`` where there is no record) and the (T,) valid mask."""
    out = {k: np.full((T, *shape), fill) for k, shape in shapes.items()}
    valid = np.zeros(T, bool)
    for f, row in rows.items():
        for k in shapes:
            out[k][f] = row[k]
        valid[f] = True
    return out, valid


def constant_betas(
    betas: np.ndarray, where: str | Path, field: str, notes: dict[str, Any], side: str
) -> np.ndarray:
    """(10,) or (T, 10) -> one (10,) vector (the mean: a ``HandMotion`` has one shape per hand). A per-frame
    spread over 1e-6 goes into the provenance ``notes`` as '<side>_betas_max_deviation'."""
    b = np.asarray(betas, np.float64)
    if b.shape == (NUM_BETAS,):
        return b
    if not (b.ndim == 2 and b.shape[1] == NUM_BETAS and b.shape[0] >= 1):
        raise InputError(where, field, f"shape ({NUM_BETAS},) or (T, {NUM_BETAS})", str(b.shape))
    m = b.mean(0)
    dev = float(np.abs(b - m).max())
    if dev > 1e-6:
        notes[f"{side}_betas_max_deviation"] = dev
    return m


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


# ---------------------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------------------


def camera_from_K(
    K: np.ndarray, width: int, height: int, where: str | Path, extrinsics: np.ndarray | None = None
) -> Camera:
    """A ``Camera`` from a file's (3, 3) intrinsics; a bad matrix is an ``InputError`` naming ``where``."""
    K = as_array(K, where, "intrinsics", (3, 3))
    try:
        return Camera.from_K(K, width, height, extrinsics)
    except InputError as e:
        raise InputError(where, e.field, e.expected, e.got) from None


def split_extrinsics(E: np.ndarray | None) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Per-frame world->camera matrices (T, 4, 4) -> (the camera's one matrix, None) when they do not change
    (by less than 1e-9: a static camera), else (None, E) (a moving camera); None -> (None, None)."""
    if E is None:
        return None, None
    return (E[0], None) if np.abs(E - E[0]).max() < 1e-9 else (None, E)


def centred_camera(focal: float, width: int, height: int) -> Camera:
    """A nominal camera for a source without intrinsics: fx = fy = ``focal``, the principal point at the
    image centre."""
    return Camera(focal, focal, width / 2.0, height / 2.0, width, height)


# ---------------------------------------------------------------------------------------------------------
# Action labels
# ---------------------------------------------------------------------------------------------------------

#: action labels whose words do not read as "<verb> the <object>" (label -> imperative phrase)
LABEL_PHRASES = {
    "drink_mug": "drink from the mug",
    "give_card": "give a card",
    "give_coin": "give a coin",
    "receive_coin": "receive a coin",
    "handshake": "shake hands",
    "high_five": "give a high five",
    "put_salt": "put salt in",
    "put_sugar": "put sugar in",
    "put_tea_bag": "put the tea bag in",
    "scoop_spoon": "scoop with the spoon",
    "toast_wine": "make a toast with the wine glass",
    "take_letter_from_enveloppe": "take the letter out of the envelope",
    "basic_pick_place": "pick up and place an object",
}
#: a second verb after the first ('add_remove_lid' -> 'add and remove the lid')
_SECOND_VERBS = {
    "remove", "unstack", "disassemble", "unscrew", "place", "unfold", "close", "open", "uncap", "unplug",
    "unzip", "unlock", "lower", "release", "deal", "undo", "untie", "retrieve", "insert", "lift", "drop",
}  # fmt: skip
#: words after which no article is added ('use_calculator' -> 'use the calculator', but 'stir_up' -> ...)
_NO_ARTICLE = {"a", "an", "the", "up", "down", "out", "off", "in", "on", "with", "from", "to", "and"}
ACTION_ANNOTATION = "action"  # the ``annotations`` entry: {'label': dataset label, 'text': phrase}


def action_phrase(label: str) -> str:
    """A dataset's action label as an imperative phrase: 'flip_pages' -> 'flip the pages',
    'open_juice_bottle' -> 'open the juice bottle', 'add_remove_lid' -> 'add and remove the lid', 'stir' ->
    'stir'; labels in ``LABEL_PHRASES`` use their entry."""
    key = re.sub(r"[\s\-]+", "_", str(label).strip().lower()).strip("_")
    if key in LABEL_PHRASES:
        return LABEL_PHRASES[key]
    words = [w for w in key.split("_") if w]
    if not words:
        raise InputError("action label", None, "a non-empty label", repr(label))
    verbs = [words.pop(0)]
    while words and words[0] in _SECOND_VERBS:
        verbs.append(words.pop(0))
    head = " and ".join(verbs)
    if not words:
        return head
    article = "" if words[0] in _NO_ARTICLE else "the "
    return f"{head} {article}{' '.join(words)}"


def action_annotation(label: str, text: str | None = None) -> dict[str, dict[str, str]]:
    """The ``annotations`` entry naming a source's own action label and its text (default
    `action_phrase`): the annotators use it as the clip's high-level instruction."""
    return {ACTION_ANNOTATION: {"label": str(label), "text": text or action_phrase(label)}}
