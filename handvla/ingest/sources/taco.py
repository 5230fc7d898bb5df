"""TACO (Tsinghua; CVPR 2024, research use): bimanual tool-action-object manipulation, marker mocap fitted
with MANO, an egocentric RGB-D camera (moving) and 12 allocentric cameras.

Layout (leolyliu/TACO-Instructions ``README.md``, ``dataset_utils/hand_pose_loader.py``,
``dataset_utils/project_pose_to_egocentric_view.py``):

    Hand_Poses/<triplet>/<seq>/{left,right}_hand.pkl            frame -> {hand_pose (48,), hand_trans (3,)}
                                                                 (torch tensors), or a folder of per-frame pkls
    Hand_Poses/<triplet>/<seq>/{left,right}_hand_shape.pkl      {hand_shape: (1, 10)}; zeros when absent (as the
                                                                 official loader)
    Egocentric_Camera_Parameters/<triplet>/<seq>/egocentric_intrinsic.txt        3 x 3
    Egocentric_Camera_Parameters/<triplet>/<seq>/egocentric_frame_extrinsic.npy  (N, 4, 4) world -> camera
    Egocentric_RGB_Videos/<triplet>/<seq>/color.mp4             1920 x 1080, 30 fps

``<triplet>`` reads ``(action, tool, object)``, e.g. ``(stir, spoon, bowl)``; the key is ``<triplet>/<seq>``.

MANO convention (``hand_pose_loader.py``): manopth ``ManoLayer(use_pca=False, flat_hand_mean=True,
center_idx=0)`` called without translation, so the output is centred on joint 0, then ``+ hand_trans``:
``hand_trans`` IS the wrist position (world frame, metres) and the pose is flat. No MANO model is needed to
convert: rot' = R rot, wrist' = R wrist + t with the per-frame world->camera extrinsics. Like the official
projection script, an episode whose video does not have one frame per pose is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.errors import InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    check_rigid,
    load_npy,
    load_pickle,
    mano_motion,
    numeric_key,
    read_numbers,
    video_size,
)

WIDTH, HEIGHT = 1920, 1080


def task_text(triplet: str) -> str:
    """'(stir, spoon, bowl)' -> 'stir the bowl with the spoon'."""
    parts = [p.strip() for p in triplet.strip("()").split(",")]
    if len(parts) != 3 or not all(parts):
        return ""
    action, tool, obj = parts
    return f"{action} the {obj} with the {tool}"


class TACOSource(Source):
    name = "taco"
    licence = "TACO dataset terms (non-commercial research use)"
    kind = "mocap"
    params = "mano"
    fps = 30.0
    url = "https://taco2024.github.io"
    needs_mano = False  # hand_trans is the wrist itself: nothing shape-dependent to compute
    layout = "Hand_Poses/<triplet>/<seq>/*_hand.pkl, Egocentric_Camera_Parameters/<triplet>/<seq>/*, Egocentric_RGB_Videos/<triplet>/<seq>/color.mp4"

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        seqs = {p.parent for side in ("left", "right") for p in r.glob(f"Hand_Poses/*/*/{side}_hand.pkl")}
        seqs |= {
            p.parent
            for side in ("left", "right")
            for p in r.glob(f"Hand_Poses/*/*/{side}_hand")
            if p.is_dir()
        }
        return sorted(f"{s.parent.name}/{s.name}" for s in seqs)

    def _poses(self, d: Path, side: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
        """(N, 48) poses and (N, 3) wrist positions of one hand, frames in key order."""
        f = d / f"{side}_hand.pkl"
        if f.is_file():
            data = load_pickle(f)
            if not isinstance(data, dict) or not data:
                raise InputError(
                    f, None, "a non-empty dict frame -> {hand_pose, hand_trans}", type(data).__name__
                )
            items = [(str(k), data[k], f) for k in sorted(data, key=lambda k: numeric_key(str(k)))]
        elif (d / f"{side}_hand").is_dir():
            files = sorted((d / f"{side}_hand").glob("*.pkl"), key=lambda p: numeric_key(p.name))
            items = [(p.stem, load_pickle(p), p) for p in files]
        else:
            return None
        pose, trans, keys = [], [], []
        for k, v, where in items:
            if not isinstance(v, dict) or "hand_pose" not in v or "hand_trans" not in v:
                raise InputError(
                    where, f"[{k}]", "a dict with hand_pose (48,) and hand_trans (3,)", type(v).__name__
                )
            pose.append(as_array(v["hand_pose"], where, f"[{k}].hand_pose", (48,)))
            trans.append(as_array(v["hand_trans"], where, f"[{k}].hand_trans", (3,)))
            keys.append(k)
        return np.stack(pose), np.stack(trans), keys

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        triplet, seq = self._key_parts(key, 2)
        hand_dir = r / "Hand_Poses" / triplet / seq
        cam_dir = r / "Egocentric_Camera_Parameters" / triplet / seq
        raw = {s: p for s in ("left", "right") if (p := self._poses(hand_dir, s)) is not None}
        if not raw:
            raise InputError(hand_dir, "left_hand.pkl/right_hand.pkl", "hand pose files", "none")
        lengths = {s: v[0].shape[0] for s, v in raw.items()}
        N = max(lengths.values())
        if len(set(lengths.values())) > 1:
            raise InputError(hand_dir, "frames", "the same number of frames for both hands", str(lengths))

        intr_path = cam_dir / "egocentric_intrinsic.txt"
        K = read_numbers(intr_path, 9, "a 3 x 3 intrinsic matrix").reshape(3, 3)
        extr_path = cam_dir / "egocentric_frame_extrinsic.npy"
        E = check_rigid(
            as_array(load_npy(extr_path), extr_path, "extrinsics", (-1, 4, 4)), extr_path, "extrinsics"
        )
        if E.shape[0] != N:
            raise InputError(
                extr_path, "extrinsics", f"one (4, 4) matrix per hand-pose frame ({N})", str(E.shape[0])
            )
        mp4 = r / "Egocentric_RGB_Videos" / triplet / seq / "color.mp4"
        width, height, n_video = video_size(mp4, (WIDTH, HEIGHT))
        if n_video is not None and n_video != N:
            raise InputError(
                mp4,
                "frames",
                f"{N} frames (one per hand pose; the official loader skips such sequences)",
                str(n_video),
            )
        camera = camera_from_K(K, width, height, intr_path)

        notes: dict = {
            "mano_convention": "manopth flat_hand_mean=True, center_idx=0: hand_trans = wrist, world frame"
        }
        hands = {}
        for side, (pose, trans, _) in raw.items():
            shape_path = hand_dir / f"{side}_hand_shape.pkl"
            if shape_path.is_file():
                sd = load_pickle(shape_path)
                if not isinstance(sd, dict) or "hand_shape" not in sd:
                    raise InputError(
                        shape_path, "hand_shape", "a dict with hand_shape (1, 10)", type(sd).__name__
                    )
                betas = as_array(sd["hand_shape"], shape_path, "hand_shape", (10,))
            else:
                betas = np.zeros(10)
                notes[f"{side}_betas"] = "no shape file: zeros (as the official loader)"
            hands[side] = mano_motion(
                side=side,
                global_orient=pose[:, :3],
                hand_pose=pose[:, 3:],
                betas=betas,
                wrist=trans,
                fps=self.fps,
                world_to_camera=E,
            )
        text = task_text(triplet)
        return self.episode(
            key,
            [hand_dir, cam_dir],
            notes,
            annotations={"triplet": triplet},
            hands=hands,
            camera=camera,
            video=str(mp4) if n_video is not None else None,
            tasks=[text] if text else [],
            rig="taco-egocentric",
            frame_ids=np.arange(N),
            world_to_camera=E,
        )
