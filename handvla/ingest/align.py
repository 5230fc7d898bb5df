"""Physical space alignment: one canonical camera for every episode, and view-invariant balancing.

**Weak-perspective alignment.** Every episode is re-rendered as the canonical camera would see it
(``handvla.camera``: K' = EgoDex's Vision Pro intrinsics at 1920 x 1080): each frame is warped by
H = K_out K^-1 (``handvla.camera.warp_to_canonical``, which anti-aliases when shrinking), where
K_out is the canonical camera fitted into the stored ``out_size``. Both cameras are pinhole without
distortion and share the optical centre, so H is an affine map (scale f_out / f, shift) and the 3D hand
(camera frame, metres) is unchanged: the stored joints project onto the warped pixels exactly with the
aligned episode's ``Camera`` (= K_out at ``out_size``, extrinsics kept).

When ``out_size`` has another aspect ratio than the canonical image (1920 x 1080 is 16:9) ``fit`` decides:
``'pad'`` (default) scales the canonical image uniformly to fit inside and pads the rest (black; the whole
canonical field of view is kept and pixels stay square), ``'crop'`` scales it to cover ``out_size`` and
cuts the overflow (no padding, a narrower field of view), ``'stretch'`` scales width and height separately
(what the Being-H0 release does when it resizes to 448 x 448: fx != fy, still an exact pinhole camera).
We default to 'pad' because it keeps pixels square (a rotation in the image is a rotation in the camera)
and never discards what the canonical camera sees. With 'pad' or 'crop' the principal point stays at
the image centre, so a horizontal flip is an exact mirror (see below).

**Intrinsics a user brings** (``IntrinsicsConfig``, per source in a build config): one camera for the
source, per-key entries (fnmatch patterns, inline or in a YAML/JSON file), or an estimate from an image's
EXIF (focal length in mm with the sensor width, from the config or the EXIF focal-plane resolution, or the
35 mm-equivalent focal length over the 43.27 mm full-frame diagonal). How the 3D follows the new camera:
``'metric'`` (3D measured: mocap, VR) keeps the 3D and only replaces the camera; ``'weak_perspective'``
(3D inferred from the image with an assumed camera, e.g. HaMeR's F = 5000/256 max(W, H)) moves each frame's
hand so that its wrist keeps its pixel and its apparent size: Z' = Z f'/f, (X', Y') from the same pixel
through K' (the hand's shape and rotation are unchanged).

**View-invariant motion distribution balancing** (``ViewBalanceConfig``): small sources get augmented
copies so that the store's episode counts approach ``target`` proportions (at most ``max_copies`` per
episode); the camera stays the canonical one, and each copy is recorded in
``annotations['provenance']['augment']``:

- ``mirror``: the image is flipped horizontally, hands swap sides, every axis-angle (x, y, z) -> (x, -y, -z),
  positions x -> -x, and the principal point becomes cx' = W - cx (a flip about the image centre is a
  mirror of the camera-frame x only when cx = W/2; this keeps it exact for any cx: u' = W - u). Text swaps
  left <-> right and clockwise <-> counterclockwise (dict keys 'left'/'right' swap too). The world->camera
  extrinsics of a mirrored episode would be a reflection, so they are dropped, as is ground truth;
- ``rotate``: a roll about the optical axis by a small angle: points, wrist rotations and extrinsics are
  rotated by Rz, and the image by the pixel map K Rz K^-1 (exact for any pinhole K);
- ``timescale``: the motion replayed faster or slower (slerp / linear at scaled times), the video taking
  the nearest frame (the largest image-motion offset is recorded).
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image
from pydantic import Field, field_validator, model_validator

from handvla.camera import (
    CANONICAL_IMAGE_SIZE,
    CANONICAL_K,
    Camera,
    as_intrinsics,
    canonical_homography,
    intrinsics_matrix,
    warp_image,
    warp_to_canonical,
)
from handvla.config import ConfigModel
from handvla.data.schema import Episode
from handvla.errors import ConfigError, InputError
from handvla.hand.motion import interp_points
from handvla.video import iter_video

X_MIRROR = np.array([-1.0, 1.0, 1.0])  # a point reflected through the x = 0 plane
FULL_FRAME_DIAGONAL_MM = math.hypot(36.0, 24.0)  # 43.27 mm: what "35 mm equivalent" refers to


# ---------------------------------------------------------------------------------------------------------
# Canonical camera
# ---------------------------------------------------------------------------------------------------------


class AlignConfig(ConfigModel):
    """The canonical camera and the stored image size (YAML section ``align``)."""

    enabled: bool = True
    canonical_K: tuple[float, float, float, float] = Field(
        (
            float(CANONICAL_K[0, 0]),
            float(CANONICAL_K[1, 1]),
            float(CANONICAL_K[0, 2]),
            float(CANONICAL_K[1, 2]),
        ),
        description="canonical (fx, fy, cx, cy) in pixels at canonical_size",
    )
    canonical_size: tuple[int, int] = Field(CANONICAL_IMAGE_SIZE, description="(width, height) px")
    out_size: tuple[int, int] = Field((640, 360), description="stored (width, height), even numbers")
    fit: Literal["pad", "crop", "stretch"] = "pad"

    @field_validator("out_size", "canonical_size")
    @classmethod
    def _even(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 2 or v[0] % 2 or v[1] % 2:
            raise ValueError(f"expected positive even (width, height) (H.264 needs even sizes), got {v}")
        return v

    @field_validator("canonical_K")
    @classmethod
    def _positive(cls, v: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
        if v[0] <= 0 or v[1] <= 0 or not all(math.isfinite(x) for x in v):
            raise ValueError(f"expected finite (fx, fy, cx, cy) with fx, fy > 0, got {v}")
        return v

    def output_K(self) -> np.ndarray:
        """(3, 3) intrinsics of the stored images: the canonical camera fitted into ``out_size``."""
        fx, fy, cx, cy = self.canonical_K
        (cw, ch), (ow, oh) = self.canonical_size, self.out_size
        if self.fit == "stretch":
            sx, sy, ox, oy = ow / cw, oh / ch, 0.0, 0.0
        else:
            s = min(ow / cw, oh / ch) if self.fit == "pad" else max(ow / cw, oh / ch)
            sx = sy = s
            ox, oy = (ow - s * cw) / 2.0, (oh - s * ch) / 2.0
        return intrinsics_matrix(sx * fx, sy * fy, sx * cx + ox, sy * cy + oy)

    def camera(self, extrinsics: np.ndarray | None = None) -> Camera:
        """The ``Camera`` of every aligned episode."""
        return Camera.from_K(self.output_K(), self.out_size[0], self.out_size[1], extrinsics)


def alignment_homography(K_src: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """(3, 3) map from source pixels to stored pixels: H = K_out K_src^-1."""
    return canonical_homography(K_src, cfg.output_K(), cfg.out_size, None)


def warp_frame(frame: np.ndarray, K_src: np.ndarray, cfg: AlignConfig) -> np.ndarray:
    """One (H, W, 3) uint8 frame taken with ``K_src`` -> the (out_h, out_w, 3) aligned frame."""
    return warp_to_canonical(frame, K_src, cfg.output_K(), cfg.out_size, None)


def align_episode(
    ep: Episode, frames: Iterable[np.ndarray] | None, cfg: AlignConfig
) -> tuple[Episode, np.ndarray | None]:
    """Map an episode to the canonical camera: frames warped (if given), camera replaced, 3D unchanged.

    Returns the aligned episode (``video`` not set) and the (T, out_h, out_w, 3) frames (or None).
    """
    cam = ep.camera
    K_src = cam.K
    H = alignment_homography(K_src, cfg)
    out = None
    if frames is not None:
        warped = [warp_frame(np.asarray(f), K_src, cfg) for f in frames]
        ow, oh = cfg.out_size
        out = np.stack(warped) if warped else np.zeros((0, oh, ow, 3), np.uint8)
    notes: dict[str, Any] = {
        "from": cam.intrinsics_dict(),
        "to": {"K": cfg.output_K().round(6).tolist(), "width": cfg.out_size[0], "height": cfg.out_size[1]},
        "fit": cfg.fit,
        "H": H.round(8).tolist(),
    }
    warnings = []
    if not (0 <= cam.cx <= cam.width and 0 <= cam.cy <= cam.height):
        warnings.append("principal point outside the image: intrinsics and image size disagree")
    covered = (abs(H[0, 0]) * cam.width, abs(H[1, 1]) * cam.height)  # the source image, in output pixels
    if covered[0] < cfg.out_size[0] / 8 and covered[1] < cfg.out_size[1] / 8:
        warnings.append(
            f"the source image covers only {covered[0]:.0f}x{covered[1]:.0f} output pixels: its focal length "
            "is far longer than the canonical one (an assumed camera such as HaMeR's? give real or EXIF "
            "intrinsics)"
        )
    if warnings:
        notes["warning"] = "; ".join(warnings)
    annotations = _with_provenance(ep.annotations, "align", notes)
    return replace(ep, camera=cfg.camera(cam.extrinsics), annotations=annotations, video=None), out


def _with_provenance(
    annotations: dict[str, Any], name: str, value: Any, append: bool = False
) -> dict[str, Any]:
    a = dict(annotations)
    prov = dict(a.get("provenance", {}))
    if append:
        prov[name] = list(prov.get(name, [])) + [value]
    else:
        prov[name] = value
    a["provenance"] = prov
    return a


# ---------------------------------------------------------------------------------------------------------
# Intrinsics from the user
# ---------------------------------------------------------------------------------------------------------


class Intrinsics(ConfigModel):
    """A pinhole camera in pixels: fx (fy defaults to fx), cx, cy (default: the image centre), or ``K``
    (3x3), or a horizontal field of view ``hfov_deg``; ``width``/``height``: the image size these numbers
    are for (they are scaled to the episode's image size; default: the episode's)."""

    fx: float | None = Field(None, gt=0)
    fy: float | None = Field(None, gt=0)
    cx: float | None = None
    cy: float | None = None
    K: list[list[float]] | None = None
    hfov_deg: float | None = Field(None, gt=0, lt=180)
    width: int | None = Field(None, gt=0)
    height: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> Intrinsics:
        given = [self.fx is not None, self.K is not None, self.hfov_deg is not None]
        if sum(given) != 1:
            raise ValueError("give exactly one of fx (with optional fy, cx, cy), K, or hfov_deg")
        if self.K is not None:
            as_intrinsics(self.K, "intrinsics K")
        return self

    def matrix(self, width: int, height: int) -> np.ndarray:
        """(3, 3) intrinsics for an image of ``width x height`` pixels."""
        w0, h0 = self.width or width, self.height or height
        if self.K is not None:
            K = as_intrinsics(self.K, "intrinsics K").copy()
        elif self.hfov_deg is not None:
            f = 0.5 * w0 / math.tan(math.radians(self.hfov_deg) / 2.0)
            K = intrinsics_matrix(f, f, w0 / 2.0, h0 / 2.0)
        else:
            fx = float(self.fx)
            fy = float(self.fy if self.fy is not None else fx)
            cx = w0 / 2.0 if self.cx is None else float(self.cx)
            cy = h0 / 2.0 if self.cy is None else float(self.cy)
            K = intrinsics_matrix(fx, fy, cx, cy)
        if (w0, h0) != (width, height):  # the same camera at another resolution
            K = np.diag([width / w0, height / h0, 1.0]) @ K
        return K


class ExifConfig(ConfigModel):
    """Estimate intrinsics from EXIF when no entry matches: from the episode's first image frame, or
    ``image`` (a photo from the same camera). ``sensor_width_mm`` overrides what EXIF says."""

    sensor_width_mm: float | None = Field(None, gt=0)
    image: str | None = None


class IntrinsicsConfig(ConfigModel):
    """Intrinsics overrides of one source (YAML ``sources[i].intrinsics``). First match wins: ``per_key``
    (fnmatch patterns on the source's episode key), then ``file`` (a YAML/JSON mapping pattern ->
    intrinsics), then ``default``, then ``exif``; none: the adapter's camera is kept."""

    mode: Literal["auto", "metric", "weak_perspective"] = Field(
        "auto", description="auto: weak_perspective for kind rgb sources, metric otherwise"
    )
    default: Intrinsics | None = None
    per_key: dict[str, Intrinsics] = Field(default_factory=dict)
    file: str | None = None
    exif: ExifConfig | None = None

    def entries(self) -> list[tuple[str, Intrinsics]]:
        out = list(self.per_key.items())
        if self.file is not None:
            p = Path(self.file).expanduser()
            mtime = p.stat().st_mtime_ns if p.is_file() else -1
            out += list(_cached_intrinsics_file(str(p), mtime).items())
        return out

    def resolve(
        self, key: str, width: int, height: int, images: list[str] | None = None
    ) -> tuple[np.ndarray, str] | None:
        """(3, 3) K for the episode ``key`` with images of ``width x height`` and how it was found."""
        for pattern, intr in self.entries():
            if fnmatch.fnmatchcase(key, pattern):
                return intr.matrix(width, height), f"per_key '{pattern}'"
        if self.default is not None:
            return self.default.matrix(width, height), "default"
        if self.exif is not None:
            path = self.exif.image or next((p for p in images or [] if _is_jpeg_or_tiff(p)), None)
            if path is None:
                return None
            fx, fy, cx, cy, info = intrinsics_from_exif(path, self.exif.sensor_width_mm, (width, height))
            return intrinsics_matrix(fx, fy, cx, cy), f"exif ({info['method']}, {path})"
        return None


def _is_jpeg_or_tiff(p: str) -> bool:
    return Path(p).suffix.lower() in (".jpg", ".jpeg", ".tif", ".tiff")


@functools.lru_cache(maxsize=16)
def _cached_intrinsics_file(path: str, mtime_ns: int) -> dict[str, Intrinsics]:
    return load_intrinsics_file(path)  # read once per file version, not once per episode


def load_intrinsics_file(path: str | Path) -> dict[str, Intrinsics]:
    """A YAML or JSON mapping of key patterns to intrinsics entries."""

    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(p, None, "an intrinsics file (YAML/JSON mapping of key patterns)", "no such file")
    try:
        raw = yaml.safe_load(p.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise InputError(p, None, "valid YAML/JSON", f"{type(e).__name__}: {e}") from None
    if not isinstance(raw, dict):
        raise InputError(p, None, "a mapping of key patterns to intrinsics", type(raw).__name__)
    out = {}
    for k, v in raw.items():
        try:
            out[str(k)] = Intrinsics.model_validate(v)
        except ValueError as e:
            raise InputError(p, str(k), "fx/fy/cx/cy, K or hfov_deg", str(e).splitlines()[-1]) from None
    return out


#: EXIF tags (Exif IFD 0x8769)
_EXIF_IFD = 0x8769
_FOCAL_LENGTH = 0x920A
_FOCAL_35MM = 0xA405
_FP_XRES = 0xA20E
_FP_UNIT = 0xA210
_PIXEL_X = 0xA002
_UNIT_MM = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}  # FocalPlaneResolutionUnit -> millimetres


def intrinsics_from_exif(
    path: str | Path, sensor_width_mm: float | None = None, image_size: tuple[int, int] | None = None
) -> tuple[float, float, float, float, dict[str, Any]]:
    """(fx, fy, cx, cy) in pixels estimated from an image's EXIF, for images of ``image_size`` (default:
    the image's own size); square pixels and the principal point at the centre are assumed.

    In order: focal length (mm) x width (px) / sensor width (mm), the sensor width from ``sensor_width_mm``
    or from the EXIF focal-plane resolution; else the 35 mm-equivalent focal length over the full-frame
    diagonal: f_px = f35 x diagonal_px / 43.27. Raises ``InputError`` when the EXIF has neither.
    """
    p = Path(path)
    try:
        with Image.open(p) as im:
            size = im.size
            exif = im.getexif()
            sub = exif.get_ifd(_EXIF_IFD)
    except (OSError, ValueError) as e:
        raise InputError(p, None, "a readable image with EXIF", f"{type(e).__name__}: {e}") from None
    W, H = image_size or size
    f_mm = float(sub[_FOCAL_LENGTH]) if _FOCAL_LENGTH in sub else None
    info: dict[str, Any] = {"image": str(p), "focal_mm": f_mm}
    f_px = None
    if f_mm and f_mm > 0:
        if sensor_width_mm:
            f_px = f_mm * W / sensor_width_mm
            info.update(method="focal_mm/sensor_width_mm (config)", sensor_width_mm=sensor_width_mm)
        elif _FP_XRES in sub and float(sub[_FP_XRES]) > 0:
            unit = _UNIT_MM.get(int(sub.get(_FP_UNIT, 2)), 25.4)
            px_per_mm = float(sub[_FP_XRES]) / unit  # on the sensor, for images of PixelXDimension
            ref_w = float(sub.get(_PIXEL_X, size[0])) or size[0]
            f_px = f_mm * px_per_mm * W / ref_w
            info.update(
                method="focal_mm x focal-plane resolution", sensor_width_mm=round(ref_w / px_per_mm, 3)
            )
    if f_px is None and _FOCAL_35MM in sub and float(sub[_FOCAL_35MM]) > 0:
        f35 = float(sub[_FOCAL_35MM])
        f_px = f35 * math.hypot(W, H) / FULL_FRAME_DIAGONAL_MM
        info.update(method="35 mm equivalent over the 43.27 mm diagonal", focal_35mm=f35)
    if f_px is None:
        raise InputError(
            p,
            "EXIF",
            "FocalLength with a sensor width (config sensor_width_mm or FocalPlaneXResolution), "
            "or FocalLengthIn35mmFilm",
            f"focal length {f_mm}, no sensor size or 35 mm equivalent",
        )
    return f_px, f_px, W / 2.0, H / 2.0, info


def reinterpret_weak_perspective(wrist: np.ndarray, K_old: np.ndarray, K_new: np.ndarray) -> np.ndarray:
    """Per-frame translations (T, 3) in metres that keep each wrist's pixel and apparent size when the
    camera changes from ``K_old`` to ``K_new``: Z' = Z f'/f, (X', Y') = Z' K_new^-1 (pixel)."""
    w = np.asarray(wrist, np.float64)
    z = w[:, 2]
    z_safe = np.where(np.abs(z) > 1e-9, z, 1e-9)
    u = K_old[0, 0] * w[:, 0] / z_safe + K_old[0, 2]
    v = K_old[1, 1] * w[:, 1] / z_safe + K_old[1, 2]
    scale = (K_new[0, 0] + K_new[1, 1]) / (K_old[0, 0] + K_old[1, 1])
    z2 = z * scale
    x2 = (u - K_new[0, 2]) * z2 / K_new[0, 0]
    y2 = (v - K_new[1, 2]) * z2 / K_new[1, 1]
    d = np.stack([x2, y2, z2], -1) - w
    return np.where(np.isfinite(d), d, 0.0)


def apply_intrinsics(ep: Any, K_new: np.ndarray, mode: str, origin: str = "config") -> Any:
    """The episode with camera ``K_new`` (same image size and extrinsics). ``mode='metric'``: 3D kept;
    ``'weak_perspective'``: each frame's hand (parameters and joints) translated so that the wrist keeps
    its pixel and apparent size (``reinterpret_weak_perspective``)."""
    if mode not in ("metric", "weak_perspective"):
        raise ConfigError(f"intrinsics mode must be 'metric' or 'weak_perspective', got {mode!r}")
    K_new = as_intrinsics(K_new, f"episode '{ep.key}' intrinsics")
    K_old = ep.camera.K
    cam = Camera.from_K(K_new, ep.camera.width, ep.camera.height, ep.camera.extrinsics)
    hands, joints = dict(ep.hands), dict(ep.joints)
    if mode == "weak_perspective":
        for side in set(hands) | set(joints):
            if side in hands and np.any(hands[side].valid):
                m = hands[side]
                d = reinterpret_weak_perspective(m.wrist_pos, K_old, K_new) * np.asarray(m.valid)[:, None]
                hands[side] = replace(m, wrist_pos=(m.wrist_pos + d).astype(np.float32))
            elif side in joints:
                j = np.asarray(joints[side], np.float64)
                d = reinterpret_weak_perspective(j[:, 0], K_old, K_new)
            else:
                continue
            if side in joints:
                joints[side] = (np.asarray(joints[side], np.float64) + d[:, None]).astype(np.float32)
    note = {
        "origin": origin,
        "mode": mode,
        "K_old": K_old.round(6).tolist(),
        "K_new": K_new.round(6).tolist(),
    }
    annotations = _with_provenance(ep.annotations, "intrinsics", note)
    return replace(ep, camera=cam, hands=hands, joints=joints, annotations=annotations)


# ---------------------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------------------

_WORDS = re.compile(
    r"(?P<ccw>counter-?clockwise|anti-?clockwise)|(?P<cw>\bclockwise)|\b(?P<lr>left|right)(?=(?:wards?|most|handed|hand|s)?\b)",
    re.IGNORECASE,
)


def _case_like(word: str, like: str) -> str:
    if like.isupper():
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def swap_left_right_words(text: str) -> str:
    """left <-> right, clockwise <-> counterclockwise (also counter-/anti-clockwise), keeping the case;
    words that merely contain them (bright, copyright, leftover) are left alone."""

    def sub(m: re.Match) -> str:
        w = m.group(0)
        if m.group("ccw"):
            return _case_like("clockwise", w)
        if m.group("cw"):
            return _case_like("counterclockwise", w)
        return _case_like("right" if w.lower() == "left" else "left", w)

    return _WORDS.sub(sub, text)


def _swap_text(obj: Any) -> Any:
    """Swap words in every string, and 'left'/'right' dict keys, of a JSON-like value."""
    if isinstance(obj, str):
        return swap_left_right_words(obj)
    if isinstance(obj, dict):
        swap = {"left": "right", "right": "left"}
        return {swap.get(k, k) if isinstance(k, str) else k: _swap_text(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_swap_text(v) for v in obj)
    return obj


def _augmented(ep: Episode, suffix: str, record: dict[str, Any], **changes: Any) -> Episode:
    annotations = changes.pop("annotations", ep.annotations)
    annotations = _with_provenance(annotations, "augment", record, append=True)
    prov = annotations["provenance"]
    prov.setdefault("augmented_from", ep.key)
    return replace(
        ep, key=f"{ep.key}{'+' if '@' in ep.key else '@'}{suffix}", annotations=annotations, **changes
    )


def mirror_episode(ep: Episode, frames: np.ndarray | None) -> tuple[Episode, np.ndarray | None]:
    """Mirror an episode (see the module docstring); ``frames`` (T, H, W, 3) are flipped horizontally."""
    cam = ep.camera
    hands = {("left" if s == "right" else "right"): m.mirrored() for s, m in ep.hands.items()}
    joints = {
        ("left" if s == "right" else "right"): (np.asarray(j) * X_MIRROR).astype(np.float32)
        for s, j in ep.joints.items()
    }
    new_cam = Camera(cam.fx, cam.fy, cam.width - cam.cx, cam.cy, cam.width, cam.height, None)
    prov = ep.annotations.get("provenance", {})
    text = _swap_text({k: v for k, v in ep.annotations.items() if k != "provenance"})
    text["provenance"] = prov
    record = {"op": "mirror", "cx": [cam.cx, new_cam.cx], "dropped": ["extrinsics", "ground_truth"]}
    out = _augmented(
        ep,
        "mirror",
        record,
        hands=hands,
        joints=joints,
        camera=new_cam,
        tasks=[swap_left_right_words(t) for t in ep.tasks],
        annotations=text,
        ground_truth=None,
        video=None,
    )
    return out, None if frames is None else np.ascontiguousarray(np.asarray(frames)[:, :, ::-1])


def _rz(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotate_episode(ep: Episode, frames: np.ndarray | None, deg: float) -> tuple[Episode, np.ndarray | None]:
    """Roll the camera about its optical axis: points p -> Rz p (Rz by ``deg`` about camera z, which turns
    the image clockwise on screen for deg > 0 since y points down), image warped by K Rz K^-1."""
    R = _rz(deg)
    hands = {s: m.transformed(R) for s, m in ep.hands.items()}
    joints = {s: (np.asarray(j, np.float64) @ R.T).astype(np.float32) for s, j in ep.joints.items()}
    cam = ep.camera
    ext = None
    if cam.extrinsics is not None:
        R4 = np.eye(4)
        R4[:3, :3] = R
        ext = R4 @ cam.extrinsics
    new_cam = Camera(cam.fx, cam.fy, cam.cx, cam.cy, cam.width, cam.height, ext)
    out_frames = None
    if frames is not None:
        A = cam.K @ R @ np.linalg.inv(cam.K)  # pixel map (affine: R keeps z)
        size = (cam.width, cam.height)
        out_frames = (
            np.stack([np.asarray(warp_image(Image.fromarray(np.asarray(f)), A, size)) for f in frames])
            if len(frames)
            else np.asarray(frames)
        )
    record = {"op": "rotate", "deg": round(float(deg), 4)}
    out = _augmented(
        ep,
        f"rot{deg:+.1f}",
        record,
        hands=hands,
        joints=joints,
        camera=new_cam,
        ground_truth=None,
        video=None,
    )
    return out, out_frames


def timescale_episode(
    ep: Episode, frames: np.ndarray | None, factor: float
) -> tuple[Episode, np.ndarray | None]:
    """Replay the motion ``factor`` times faster (>1) or slower (<1) at the same frame rate: parameters
    slerped / interpolated at times k factor / fps, joints interpolated, video nearest frame."""
    if not (0.25 <= factor <= 4.0):
        raise ConfigError(f"timescale factor must be in [0.25, 4], got {factor}")
    T = ep.num_frames
    fps = float(ep.fps)
    t = np.arange(T) / fps
    n = int(np.floor((T - 1) / factor + 1e-9)) + 1
    tq = np.arange(n) * factor / fps
    hands = {s: m.at_times(tq).filled() for s, m in ep.hands.items()}
    joints = {}
    for s, j in ep.joints.items():
        jj = interp_points(np.asarray(j, np.float64), t, tq)
        joints[s] = np.nan_to_num(jj).astype(np.float32)
    idx = np.clip(np.rint(tq * fps).astype(int), 0, T - 1)
    offset_ms = float(np.abs(idx / fps - tq).max() * 1000.0) if n else 0.0
    record = {
        "op": "timescale",
        "factor": round(float(factor), 4),
        "max_video_offset_ms": round(offset_ms, 3),
    }
    out = _augmented(
        ep, f"speed{factor:.2f}", record, hands=hands, joints=joints, ground_truth=None, video=None
    )
    return out, None if frames is None else np.asarray(frames)[idx]


# ---------------------------------------------------------------------------------------------------------
# Balancing
# ---------------------------------------------------------------------------------------------------------

AUGMENTATIONS = ("mirror", "rotate", "timescale")


class ViewBalanceConfig(ConfigModel):
    """View-invariant motion distribution balancing (YAML section ``balance``)."""

    enabled: bool = False
    target: Literal["uniform"] | dict[str, float] = Field(
        "uniform", description="wanted share of episodes per source (normalised), or 'uniform'"
    )
    max_copies: int = Field(3, ge=0, description="at most this many augmented copies per episode")
    augmentations: list[Literal["mirror", "rotate", "timescale"]] = Field(
        default_factory=lambda: ["mirror", "rotate"]
    )
    rotate_max_deg: float = Field(10.0, gt=0, le=45)
    timescale_range: tuple[float, float] = (0.8, 1.25)
    seed: int = 0

    @field_validator("target")
    @classmethod
    def _weights(cls, v):
        if isinstance(v, dict) and (not v or any(not (w >= 0 and math.isfinite(w)) for w in v.values())):
            raise ValueError("expected non-negative finite weights per source")
        return v


def _unit_hash(*parts: Any) -> float:
    """A stable number in [0, 1) from ``parts`` (the same on every machine and in every process)."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0**64


def balance_plan(counts: dict[str, int], cfg: ViewBalanceConfig) -> dict[str, float]:
    """Augmented copies per episode (a real number) for each source, so that episode counts approach the
    target shares: the source most above its share gets none; none gets more than ``max_copies``."""
    if not cfg.enabled:
        return {s: 0.0 for s in counts}
    weights = (
        {s: 1.0 for s in counts}
        if cfg.target == "uniform"
        else {s: float(cfg.target.get(s, 0.0)) for s in counts}
    )
    total_w = sum(weights.values())
    if total_w <= 0:
        raise ConfigError("balance.target: the enabled sources have no positive weight")
    share = {s: w / total_w for s, w in weights.items()}
    live = [s for s in counts if counts[s] > 0 and share[s] > 0]
    if not live:
        return {s: 0.0 for s in counts}
    n_total = max(counts[s] / share[s] for s in live)
    return {
        s: (min(float(cfg.max_copies), max(0.0, n_total * share[s] / counts[s] - 1.0)) if s in live else 0.0)
        for s in counts
    }


def augmentations_for(key: str, copies: float, cfg: ViewBalanceConfig) -> list[list[tuple[str, float]]]:
    """The augmented copies of the episode ``key``: a list of op chains [(op, parameter), ...].

    ``copies`` (from ``balance_plan``) is rounded up or down by a stable hash of the key, so the expected
    count matches; copy j takes the j-th chain: the single ops, then mirror combined with each other op
    (so there are at most that many copies, whatever ``copies`` asks)."""
    n = int(math.floor(copies)) + (1 if _unit_hash(cfg.seed, key, "n") < copies - math.floor(copies) else 0)
    if n <= 0 or not cfg.augmentations:
        return []
    singles = [[op] for op in dict.fromkeys(cfg.augmentations)]
    combos = [
        ["mirror", op]
        for op in dict.fromkeys(cfg.augmentations)
        if op != "mirror" and "mirror" in cfg.augmentations
    ]
    chains = singles + combos
    n = min(n, len(chains))  # one copy per chain: a parameter-free op (mirror) repeated would repeat a key
    out = []
    for j in range(n):
        chain = []
        for op in chains[j]:
            u = _unit_hash(cfg.seed, key, j, op)
            if op == "rotate":
                mag = cfg.rotate_max_deg * (0.25 + 0.75 * u)  # never a negligible roll
                p = mag if _unit_hash(cfg.seed, key, j, "sign") < 0.5 else -mag
            elif op == "timescale":
                lo, hi = cfg.timescale_range
                p = float(np.exp(np.log(lo) + u * (np.log(hi) - np.log(lo))))
            else:
                p = 0.0
            chain.append((op, round(p, 3)))
        out.append(chain)
    return out


def apply_augmentation(
    ep: Episode, frames: np.ndarray | None, chain: list[tuple[str, float]]
) -> tuple[Episode, np.ndarray | None]:
    """Apply an op chain from ``augmentations_for`` to an (aligned) episode and its frames."""
    for op, p in chain:
        if op == "mirror":
            ep, frames = mirror_episode(ep, frames)
        elif op == "rotate":
            ep, frames = rotate_episode(ep, frames, p)
        elif op == "timescale":
            ep, frames = timescale_episode(ep, frames, p)
        else:
            raise ConfigError(f"unknown augmentation {op!r}; expected one of {AUGMENTATIONS}")
    return ep, frames


def iter_frames_at(video: Any, indices: np.ndarray) -> Iterator[np.ndarray]:
    """Frames ``indices`` (sorted, repeats allowed) of a video: an mp4 path (decoded once, streaming), a
    (T, H, W, 3) array, or a list of image paths."""
    idx = np.asarray(indices, int)
    if isinstance(video, np.ndarray):
        for i in idx:
            yield video[i]
        return
    if isinstance(video, (list, tuple)):
        for i in idx:
            try:
                with Image.open(video[i]) as im:
                    yield np.asarray(im.convert("RGB"))
            except (OSError, ValueError) as e:
                raise InputError(video[i], None, "a readable image", f"{type(e).__name__}: {e}") from None
        return

    if idx.size == 0:
        return
    want = iter(idx.tolist())
    nxt = next(want)
    stop = int(idx.max()) + 1
    for i, frame in enumerate(iter_video(video, 0, stop)):
        while nxt == i:
            yield frame
            nxt = next(want, None)
            if nxt is None:
                return
    raise InputError(video, "frames", f"at least {stop} frames", "fewer")
