"""Per-frame HaMeR pseudo-labels for RGB-only video (the Taste-Rob-like case), in HaMeR's output convention.

HaMeR (geopavlakos/hamer) predicts, per detected hand box, a right-hand MANO: ``global_orient`` (1, 3, 3)
and ``hand_pose`` (15, 3, 3) rotation matrices (absolute: smplx ``MANOLayer`` adds no ``hands_mean``),
``betas`` (10) and a weak-perspective camera ``pred_cam = [s, tx, ty]`` for the 256 px crop with focal
length 5000 (``hamer/models/hamer.py``). Left hands are flipped before prediction (``vitdet_dataset.py``:
``flip = right == 0``) and come back as right hands. The demo (``demo.py``) brings them to the full image:
``pred_cam[:, 1] *= 2 * is_right - 1``, then ``cam_crop_to_full`` (``hamer/utils/renderer.py``):

    bs = box_size * s,  tz = 2 F / bs,  tx_full = tx + 2 (cx - W/2) / bs,  ty_full = ty + 2 (cy - H/2) / bs,
    F = 5000 / 256 * max(W, H)

and un-mirrors the mesh with ``verts[:, 0] *= 2 * is_right - 1`` before adding ``[tx_full, ty_full, tz]``.
With real intrinsics, fx replaces F and (cx_K, cy_K) replace (W/2, H/2).

File layout (written by the labelling job; HaMeR itself saves no parameters):

    <root>/**/<clip>.hamer.npz   N detections: frame_index (N,), global_orient (N, 1, 3, 3), hand_pose (N, 15, 3, 3),
                                 betas (N, 10), pred_cam (N, 3) as predicted (tx not yet sign-flipped),
                                 box_center (N, 2) px, box_size (N,) px, is_right (N,), img_size (2,) [W, H];
                                 optional: score (N,), intrinsics (3, 3), fps (), num_frames (),
                                 focal_length () = 5000, crop_size () = 256
    <root>/**/<clip>.mp4         the video (any of .mp4 .mov .mkv), frame i = frame_index i

Conversion to the project convention (camera frame, OpenCV axes as HaMeR's projection): right hands:
rotations -> axis-angle, wrist = J0(betas) + cam_t (HaMeR adds cam_t to the model-frame mesh, whose root
joint sits at J0). Left hands: the mirror image, (x, y, z) -> (x, -y, -z) for every axis-angle and
wrist = diag(-1, 1, 1) J0(betas) + cam_t; its mesh is the mirror of HaMeR's right mesh under the left MANO
model with the shapedirs fix (``MANOHand`` default). Per frame and side the highest-``score`` detection
(else the largest box) is kept; frames without one are invalid. The output has no temporal consistency:
hand swaps and jitter are the standardisation step's to clean.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.errors import InputError
from handvla.hand.rotations import matrix_to_axis_angle, mirror_axis_angle
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    centred_camera,
    mano_motion,
    mano_root,
    orthonormal,
    relative_keys,
    require_keys,
    video_size,
)
from handvla.video import video_info

SUFFIX = ".hamer.npz"
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv")
HAMER_FOCAL = 5000.0
HAMER_CROP = 256.0
MIRROR = np.array([-1.0, 1.0, 1.0])  # x -> -x: a point of the flipped image
REQUIRED = (
    "frame_index",
    "global_orient",
    "hand_pose",
    "betas",
    "pred_cam",
    "box_center",
    "box_size",
    "is_right",
    "img_size",
)


def cam_crop_to_full(
    pred_cam: np.ndarray,
    box_center: np.ndarray,
    box_size: np.ndarray,
    focal: float,
    principal: tuple[float, float],
) -> np.ndarray:
    """HaMeR's weak-perspective crop camera -> camera-frame translation (N, 3) (``renderer.cam_crop_to_full``)."""
    s, tx, ty = pred_cam[:, 0], pred_cam[:, 1], pred_cam[:, 2]
    bs = box_size * s + 1e-9
    tz = 2.0 * focal / bs
    return np.stack(
        [
            tx + 2.0 * (box_center[:, 0] - principal[0]) / bs,
            ty + 2.0 * (box_center[:, 1] - principal[1]) / bs,
            tz,
        ],
        -1,
    )


class HaMeRSource(Source):
    name = "hamer"
    licence = "inherits the licence of the labelled video (MANO parameters: MANO licence)"
    kind = "rgb"
    params = "mano"
    fps = 30.0  # nominal: the video's own rate is used
    url = "https://github.com/geopavlakos/hamer"
    needs_mano = True
    layout = "**/<clip>.hamer.npz (+ <clip>.mp4)"

    def __init__(self, mano_dir=None, licence: str | None = None):
        super().__init__(mano_dir)
        self.video_licence = licence

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        return relative_keys(r.rglob("*" + SUFFIX), r, SUFFIX)

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        base = r.joinpath(*self._key_parts(key, expected="a relative path without .hamer.npz"))
        path = base.with_name(base.name + SUFFIX)
        if not path.is_file():
            raise InputError(path, None, "an existing HaMeR label file", "no such file")
        try:
            with np.load(path, allow_pickle=False) as d:
                arrays = {k: np.asarray(d[k]) for k in d.files}
        except (OSError, ValueError) as e:
            raise InputError(
                path, None, "a readable .npz (no pickled objects)", f"{type(e).__name__}: {e}"
            ) from None
        require_keys(arrays, path, REQUIRED, "present (HaMeR label file)")
        fi = arrays["frame_index"]
        if fi.ndim != 1 or fi.dtype.kind not in "iu" or (fi.size and fi.min() < 0):
            raise InputError(path, "frame_index", "(N,) non-negative integers", f"{fi.dtype} {fi.shape}")
        N = fi.shape[0]
        go = orthonormal(
            as_array(arrays["global_orient"], path, "global_orient", (N, 3, 3)), path, "global_orient"
        )
        hp = orthonormal(as_array(arrays["hand_pose"], path, "hand_pose", (N, 15, 3, 3)), path, "hand_pose")
        betas = as_array(arrays["betas"], path, "betas", (N, 10))
        pred_cam = as_array(arrays["pred_cam"], path, "pred_cam", (N, 3))
        center = as_array(arrays["box_center"], path, "box_center", (N, 2))
        size = as_array(arrays["box_size"], path, "box_size", (N,))
        is_right = as_array(arrays["is_right"], path, "is_right", (N,)) > 0.5
        score = as_array(arrays["score"], path, "score", (N,)) if "score" in arrays else size
        img = as_array(arrays["img_size"], path, "img_size")
        if img.shape == (N, 2) and N:
            if np.abs(img - img[0]).max() > 0:
                raise InputError(path, "img_size", "one image size for the whole clip", "varying sizes")
            img = img[0]
        if img.shape != (2,) or (img <= 0).any():
            raise InputError(path, "img_size", "[width, height] in pixels", str(img.tolist()))
        W, H = int(img[0]), int(img[1])
        if N and ((size <= 0).any() or (pred_cam[:, 0] <= 0).any()):
            raise InputError(
                path, "box_size/pred_cam", "positive box sizes and crop scales s", "a value <= 0"
            )

        video = next((v for ext in VIDEO_SUFFIXES if (v := base.with_name(base.name + ext)).is_file()), None)
        vw, vh, n_video = video_size(video, (W, H))
        if n_video is not None and (vw, vh) != (W, H):
            raise InputError(path, "img_size", f"the video's size {vw} x {vh}", f"{W} x {H}")
        notes: dict = {}
        if n_video is not None:
            T, fps = n_video, video_info(video).fps
        else:
            T = int(arrays["num_frames"]) if "num_frames" in arrays else (int(fi.max()) + 1 if N else 0)
            fps = float(arrays["fps"]) if "fps" in arrays else self.fps
            notes["video"] = "none found: frame count and rate from the label file"
        if N and fi.max() >= T:
            raise InputError(path, "frame_index", f"indices below the frame count {T}", str(int(fi.max())))

        if "intrinsics" in arrays:
            K = as_array(arrays["intrinsics"], path, "intrinsics", (3, 3))
            focal, principal = float(K[0, 0]), (float(K[0, 2]), float(K[1, 2]))
            camera = camera_from_K(K, W, H, path)
        else:
            f = (
                float(arrays.get("focal_length", HAMER_FOCAL))
                / float(arrays.get("crop_size", HAMER_CROP))
                * max(W, H)
            )
            camera = centred_camera(f, W, H)
            focal, principal = f, (camera.cx, camera.cy)
            notes["camera"] = (
                "HaMeR's assumed camera: F = 5000 / 256 * max(W, H), principal point at the centre"
            )

        cam_t = cam_crop_to_full(
            pred_cam * np.stack([np.ones(N), np.where(is_right, 1.0, -1.0), np.ones(N)], -1),
            center,
            size,
            focal,
            principal,
        )
        model = self.mano_model("right")  # HaMeR predicts every hand with the right MANO
        hands = {}
        dropped = 0
        for side, sel in (("right", is_right), ("left", ~is_right)):
            idx = np.flatnonzero(sel)
            if idx.size == 0:
                continue
            # keep the best detection per frame: sort by score, the last write of a frame wins
            idx = idx[np.argsort(score[idx], kind="stable")]
            best = {}
            for i in idx:
                best[int(fi[i])] = i
            dropped += idx.size - len(best)
            frames = np.array(sorted(best))
            det = np.array([best[f] for f in frames])
            go_aa, hp_aa = np.zeros((T, 3)), np.zeros((T, 15, 3))
            wrist, valid = np.zeros((T, 3)), np.zeros(T, bool)
            b = betas[det]
            J0s = mano_root(model, b)  # (n, 3) each detection's own root joint
            a_go, a_hp = matrix_to_axis_angle(go[det]), matrix_to_axis_angle(hp[det])
            if side == "left":
                a_go, a_hp, J0s = mirror_axis_angle(a_go), mirror_axis_angle(a_hp), J0s * MIRROR
            go_aa[frames], hp_aa[frames] = a_go, a_hp
            wrist[frames] = J0s + cam_t[det]
            valid[frames] = True
            # one betas vector per hand (HandMotion): the median over frames; the wrist above used each frame's own
            hands[side] = mano_motion(
                side=side,
                global_orient=go_aa,
                hand_pose=hp_aa,
                betas=np.median(b, 0),
                wrist=wrist,
                fps=fps,
                valid=valid,
            )
            notes[f"{side}_betas_spread"] = float(np.abs(b - np.median(b, 0)).max())
        if not hands:
            raise InputError(path, "is_right", "at least one detection", "none")
        notes["dropped_duplicate_detections"] = int(dropped)
        return self.episode(
            key,
            [path],
            notes,
            hands=hands,
            camera=camera,
            fps=fps,
            video=str(video) if video is not None else None,
            licence=self.video_licence or self.licence,
            rig="hamer-pseudo-label",
            frame_ids=np.arange(T),
        )
