"""Cameras: the one pinhole ``Camera``, the canonical camera, and the warp of an image onto it.

Conventions (every camera of the project):
- Camera frame = OpenCV axes: x right, y down, z forward (points in front of the camera have z > 0),
  metres. A camera-frame point projects to ``u = fx X / Z + cx, v = fy Y / Z + cy``.
- Pixel coordinates: u right, v down, origin at the top-left pixel's top-left corner, so pixel (col j,
  row i) spans [j, j+1) x [i, i+1) and its centre is (j + 0.5, i + 0.5).
- ``extrinsics``: the 4x4 WORLD -> CAMERA transform, ``p_cam = R p_world + t`` (None when unknown).
- Lens distortion is not modelled: sources with distorted images undistort first.

The canonical camera: every training sample is mapped to ONE pinhole camera so that image-space hand
motion means the same thing whatever camera recorded it (Being-H0's physical space alignment). Its
intrinsics are EgoDex's Apple Vision Pro camera: focal 736.6339 px, principal point at the image centre
of a 1920 x 1080 (width x height) image. ``warp_to_canonical`` re-renders an image taken with intrinsics
K as that camera would see it (weak-perspective alignment: output pixel = H @ input pixel with
H = K_canon K^-1; the 3D is unchanged because both cameras share the optical centre).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from handvla.errors import InputError

CANONICAL_FOCAL_PX = 736.6339
CANONICAL_IMAGE_SIZE = (1920, 1080)  # (width, height) in pixels
# 3x3 intrinsics of the canonical camera, in pixels.
CANONICAL_K = np.array(
    [
        [CANONICAL_FOCAL_PX, 0.0, CANONICAL_IMAGE_SIZE[0] / 2],
        [0.0, CANONICAL_FOCAL_PX, CANONICAL_IMAGE_SIZE[1] / 2],
        [0.0, 0.0, 1.0],
    ]
)


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    """3x3 pinhole intrinsics (pixels) from focal lengths and principal point."""
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def as_intrinsics(K: np.ndarray | Sequence, where: str = "camera") -> np.ndarray:
    """Accept a 3x3 or 2x3 intrinsics matrix or a (fx, fy, cx, cy) tuple; return a validated 3x3 float64.

    The last row must be [0, 0, 1] and the focal lengths positive (an upper-triangular pinhole K).
    """
    arr = np.asarray(K, dtype=np.float64)
    if arr.shape == (4,):
        arr = intrinsics_matrix(*arr)
    elif arr.shape == (2, 3):
        arr = np.vstack([arr, [0.0, 0.0, 1.0]])
    if arr.shape != (3, 3):
        raise InputError(
            where, "K", "a 3x3 or 2x3 intrinsics matrix or (fx, fy, cx, cy)", f"shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError(where, "K", "finite values", str(arr.tolist()))
    if not np.allclose(arr[2], [0.0, 0.0, 1.0]) or arr[1, 0] != 0.0:
        raise InputError(
            where, "K", "an upper-triangular pinhole matrix with last row [0, 0, 1]", str(arr.tolist())
        )
    if arr[0, 0] <= 0 or arr[1, 1] <= 0:
        raise InputError(where, "K", "positive focal lengths fx, fy", f"fx={arr[0, 0]}, fy={arr[1, 1]}")
    return arr


# ---------------------------------------------------------------------------------------------------------
# The camera
# ---------------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class Camera:
    """Pinhole camera: intrinsics in pixels, image size, optional world->camera extrinsics (4, 4).

    Validated on construction (finite intrinsics, positive focal lengths, a positive whole image size,
    finite (4, 4) or (16,) extrinsics). Two cameras are equal when every field is.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    extrinsics: np.ndarray | None = None  # (4, 4) float64, world -> camera; None = unknown

    def __post_init__(self) -> None:
        for name in ("fx", "fy", "cx", "cy"):
            v = getattr(self, name)
            try:
                f = float(v)
            except (TypeError, ValueError):
                f = math.nan
            if not math.isfinite(f):
                raise InputError("Camera", name, "a finite number (pixels)", repr(v))
            setattr(self, name, f)
        for name in ("fx", "fy"):
            if getattr(self, name) <= 0:
                raise InputError(
                    "Camera", name, "a positive focal length (pixels)", repr(getattr(self, name))
                )
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or int(v) <= 0:
                raise InputError("Camera", name, "a positive whole number of pixels", repr(v))
            setattr(self, name, int(v))
        if self.extrinsics is not None:
            e = np.asarray(self.extrinsics, np.float64)
            if e.shape == (16,):
                e = e.reshape(4, 4)
            if e.shape != (4, 4) or not np.isfinite(e).all():
                raise InputError("Camera", "extrinsics", "a finite (4, 4) world->camera matrix", str(e.shape))
            self.extrinsics = e

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Camera):
            return NotImplemented
        same = (self.fx, self.fy, self.cx, self.cy, self.width, self.height) == (
            other.fx,
            other.fy,
            other.cx,
            other.cy,
            other.width,
            other.height,
        )
        if self.extrinsics is None or other.extrinsics is None:
            return same and self.extrinsics is other.extrinsics
        return same and bool(np.array_equal(self.extrinsics, other.extrinsics))

    __hash__ = None  # mutable

    @classmethod
    def from_K(
        cls, K: np.ndarray | Sequence, width: int, height: int, extrinsics: np.ndarray | None = None
    ) -> Camera:
        """From a 3x3 (or 2x3) intrinsic matrix or (fx, fy, cx, cy), validated by ``as_intrinsics``."""
        K = as_intrinsics(K, "Camera")
        return cls(K[0, 0], K[1, 1], K[0, 2], K[1, 2], width, height, extrinsics)

    def intrinsics_dict(self) -> dict[str, float | int]:
        """fx, fy, cx, cy (pixels) and width, height: the intrinsics as plain numbers for JSON reports."""
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy, "width": self.width, "height": self.height}

    @property
    def K(self) -> np.ndarray:
        """(3, 3) intrinsic matrix."""
        return intrinsics_matrix(self.fx, self.fy, self.cx, self.cy)

    # ---- camera frame -----------------------------------------------------------------------------------

    def project(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) in metres -> pixels (..., 2): u = fx X/Z + cx, v = fy Y/Z + cy.

        Points with Z <= 0 (behind or on the camera plane) have no image and come back as NaN.
        """
        p = np.asarray(points_cam, np.float64)
        if p.shape[-1:] != (3,):
            raise InputError("Camera.project", "points_cam", "shape (..., 3)", str(p.shape))
        z = p[..., 2]
        ok = z > 0
        zs = np.where(ok, z, 1.0)
        uv = np.stack([self.fx * p[..., 0] / zs + self.cx, self.fy * p[..., 1] / zs + self.cy], axis=-1)
        uv[~ok] = np.nan
        return uv

    # ---- world frame (needs the extrinsics) -------------------------------------------------------------

    def _extrinsics(self) -> np.ndarray:
        if self.extrinsics is None:
            raise InputError("Camera", "extrinsics", "a world->camera matrix to map world points", "None")
        return self.extrinsics

    def world_to_camera(self, points_world: np.ndarray) -> np.ndarray:
        """World-frame points (..., 3) -> camera frame (..., 3) with the extrinsics."""
        E = self._extrinsics()
        return np.asarray(points_world, np.float64) @ E[:3, :3].T + E[:3, 3]

    def camera_to_world(self, points_cam: np.ndarray) -> np.ndarray:
        """Camera-frame points (..., 3) -> world frame (..., 3)."""
        E = self._extrinsics()
        return (np.asarray(points_cam, np.float64) - E[:3, 3]) @ E[:3, :3]

    @property
    def centre_world(self) -> np.ndarray:
        """(3,) optical centre in the world frame, metres."""
        E = self._extrinsics()
        return -E[:3, :3].T @ E[:3, 3]

    def project_world(self, points_world: np.ndarray) -> np.ndarray:
        """World points (..., 3) -> pixels (..., 2) (NaN behind the camera)."""
        return self.project(self.world_to_camera(points_world))

    def in_view(self, points_world: np.ndarray, margin_px: float = 0.0) -> np.ndarray:
        """(...,) True where a world point is in front of the camera and inside the image (minus a margin)."""
        uv = self.project_world(points_world)
        ok = np.isfinite(uv).all(-1)
        uv = np.nan_to_num(uv, nan=-1e9)
        return (
            ok
            & (uv[..., 0] >= margin_px)
            & (uv[..., 0] < self.width - margin_px)
            & (uv[..., 1] >= margin_px)
            & (uv[..., 1] < self.height - margin_px)
        )


# ---------------------------------------------------------------------------------------------------------
# Images: the canonical-camera warp
# ---------------------------------------------------------------------------------------------------------


def as_pil_image(image: Any, where: str) -> Image.Image:
    """A PIL image as it is, or a uint8 array (H, W) / (H, W, 1|3|4) as a PIL image."""
    if isinstance(image, Image.Image):
        return image
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise InputError(
            where, None, "a PIL image or a uint8 array (H, W) / (H, W, 3|4)", f"{arr.dtype} {arr.shape}"
        )
    return Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[2] == 1 else arr)


def warp_image(
    image: Image.Image, H: np.ndarray, size: tuple[int, int], resample: int = Image.BILINEAR
) -> Image.Image:
    """Re-sample ``image`` so that input pixel p (continuous coordinates) lands at output pixel H p.

    ``H``: a 3x3 affine pixel map (last row [0, 0, 1]); ``size``: output (width, height); pixels that come
    from outside the input are black. No anti-aliasing: shrink first (see ``warp_to_canonical``).
    """
    Hinv = np.linalg.inv(H)  # PIL asks, for each output pixel, where to sample the input
    coeffs = tuple(float(c) for c in Hinv[:2].reshape(-1))
    return image.transform(tuple(int(v) for v in size), Image.AFFINE, coeffs, resample=resample)


def canonical_homography(
    K: np.ndarray | Sequence,
    K_canon: np.ndarray | Sequence = CANONICAL_K,
    canon_size: tuple[int, int] = CANONICAL_IMAGE_SIZE,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """3x3 map from input pixels to output pixels: H = S K_canon K^-1, S = diag(out_w/canon_w,
    out_h/canon_h, 1) (identity when ``out_size`` is None). Sizes are (width, height) in pixels."""
    K = as_intrinsics(K, "warp_to_canonical")
    Kc = as_intrinsics(K_canon, "warp_to_canonical (canonical)")
    H = Kc @ np.linalg.inv(K)
    if out_size is not None:
        H = np.diag([out_size[0] / canon_size[0], out_size[1] / canon_size[1], 1.0]) @ H
    return H


def warp_to_canonical(
    image: Image.Image | np.ndarray,
    K: np.ndarray | Sequence,
    K_canon: np.ndarray | Sequence = CANONICAL_K,
    canon_size: tuple[int, int] = CANONICAL_IMAGE_SIZE,
    out_size: tuple[int, int] | None = None,
    resample: int = Image.BILINEAR,
) -> Image.Image | np.ndarray:
    """Re-render ``image`` (taken with intrinsics ``K``) as the canonical camera would see it.

    The output is the canonical image (``canon_size`` = (width, height), default 1920 x 1080) resized to
    ``out_size`` if given; pixels outside the input are black. Input pixel p (continuous coordinates,
    pixel centres at +0.5) lands at H p, H = `canonical_homography`. Returns the input's type (PIL or uint8
    array). Since both cameras are pinhole without distortion, H is affine (scale f'/f and shift).
    """
    pil = as_pil_image(image, "warp_to_canonical image")
    H = canonical_homography(K, K_canon, canon_size, out_size)
    size = tuple(int(v) for v in (out_size or canon_size))
    if min(size) <= 0:
        raise InputError("warp_to_canonical", "out_size", "positive (width, height)", str(size))
    sx, sy = H[0, 0], H[1, 1]
    if sx < 1.0 and sy < 1.0:
        # Shrinking: an affine warp samples without averaging (aliasing), so first resize with PIL's
        # antialiasing filter by (about) the same factor, then warp the small image with H D^-1.
        w, h = pil.size
        small = (max(1, round(w * sx)), max(1, round(h * sy)))
        D = np.diag([small[0] / w, small[1] / h, 1.0])
        pil = pil.resize(small, resample=Image.BILINEAR)
        H = H @ np.linalg.inv(D)
    out = warp_image(pil, H, size, resample)
    return out if isinstance(image, Image.Image) else np.asarray(out)
