"""The canonical camera: the single source of truth for the weak-perspective alignment target.

Every training sample is mapped to ONE pinhole camera so that image-space hand motion means the same
thing whatever camera recorded it (Being-H0's physical space alignment). The canonical intrinsics are
EgoDex's Apple Vision Pro camera: focal 736.6339 px, principal point at the image centre of a
1920 x 1080 (width x height) image. Pixel coordinates: x right, y down, origin at the top-left pixel's
top-left corner ((0.5, 0.5) is the first pixel's centre).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

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
