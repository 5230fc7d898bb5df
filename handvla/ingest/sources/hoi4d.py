"""HOI4D (CC BY-NC 4.0): egocentric RGB-D videos of category-level hand-object interaction, 15 fps, with
MANO hand annotations per frame.

Layout (leolyliu/HOI4D-Instructions ``README.md`` and ``utils/decode.py``; the hand-pose folder names as in
this project's datasets.md, the alternative names as used by third-party loaders):

    <root>/[HOI4D_release/]<seq>/align_rgb/image.mp4             colour video (1920 x 1080)
    <root>/[HOI4D_release/]<seq>/align_rgb/%05d.jpg              frames decoded by utils/decode.py (ffmpeg fps=15)
    <root>/handpose/refinehandpose_{right,left}/<seq>/<f>.pickle   (or Hand_pose/handpose_{right,left}_hand/...)
    <root>/camera_params/<camera id>/intrin.npy                  (3, 3)

``<seq>`` = ``ZY2021080000*/H*/C*/N*/S*/s*/T*`` (camera id, human, object class, instance, room, layout,
task); the key is that path. Each pickle holds ``poseCoeff`` (48: 3 global + 45 finger, axis-angle),
``beta`` (10), ``trans`` (3, camera frame, metres), ``kps2D``.

MANO convention (README): manopth ``ManoLayer(use_pca=False, flat_hand_mean=True)`` without translation,
then ``joints / 1000 + trans``: flat pose, wrist = J0(beta) + trans (manopth leaves the root at J0 when no
``center_idx`` is set), published left model. Frame ``<f>`` of the pickles = frame ``<f>`` of the 15 fps
decoded video. Frames without a pickle are invalid.
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
    constant_betas,
    existing_frames,
    frame_table,
    load_npy,
    load_pickle,
    mano_motion,
    require_keys,
    video_size,
    wrist_from_mano_transl,
)
from handvla.video import video_info

HAND_DIRS = {
    "right": ("handpose/refinehandpose_right", "Hand_pose/handpose_right_hand"),
    "left": ("handpose/refinehandpose_left", "Hand_pose/handpose_left_hand"),
}
#: object class of C<i> (README "mapping")
OBJECT_CLASSES = ("", "ToyCar", "Mug", "Laptop", "StorageFurniture", "Bottle", "Safe", "Bowl", "Bucket", "Scissors",
                  "", "Pliers", "Kettle", "Knife", "TrashCan", "", "", "Lamp", "Stapler", "", "Chair")  # fmt: skip
SEQ_DEPTH = 7
#: what each hand pose pickle gives: poseCoeff (48: global + 45 finger axis-angle), beta, trans
POSE_FIELDS = {"poseCoeff": (48,), "beta": (10,), "trans": (3,)}
WIDTH, HEIGHT = 1920, 1080


class HOI4DSource(Source):
    name = "hoi4d"
    licence = "CC BY-NC 4.0"
    kind = "mocap"
    params = "mano"
    fps = 15.0
    url = "https://hoi4d.github.io"
    needs_mano = True
    layout = "handpose/refinehandpose_{right,left}/<seq>/<f>.pickle, camera_params/<cam>/intrin.npy, <seq>/align_rgb/image.mp4"

    def _hand_dir(self, r: Path, side: str, seq: str) -> Path | None:
        for d in HAND_DIRS[side]:
            p = r / d / seq
            if p.is_dir():
                return p
        return None

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        keys = set()
        for side in ("right", "left"):
            for d in HAND_DIRS[side]:
                base = r / d
                if base.is_dir():
                    pattern = "/".join(["*"] * SEQ_DEPTH)
                    keys |= {p.relative_to(base).as_posix() for p in base.glob(pattern) if p.is_dir()}
        return sorted(keys)

    def _video_dir(self, r: Path, seq: str) -> Path:
        for base in (r / "HOI4D_release", r):
            if (base / seq / "align_rgb").is_dir():
                return base / seq / "align_rgb"
        return r / "HOI4D_release" / seq / "align_rgb"

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        parts = self._key_parts(key, SEQ_DEPTH)
        seq = "/".join(parts)
        per_side: dict[str, dict[int, dict]] = {}
        files = []
        for side in ("right", "left"):
            d = self._hand_dir(r, side, seq)
            if d is None:
                continue
            frames = {}
            for p in d.glob("*.pickle"):
                if not p.stem.isdigit():
                    continue
                obj = require_keys(
                    load_pickle(p),
                    p,
                    POSE_FIELDS,
                    "present (HOI4D hand pose pickle)",
                    mapping="a dict with poseCoeff, beta, trans",
                )
                frames[int(p.stem)] = {k: as_array(obj[k], p, k, shape) for k, shape in POSE_FIELDS.items()}
            if frames:
                per_side[side] = frames
                files.append(str(d))
        if not per_side:
            raise InputError(
                f"hoi4d {seq}",
                "handpose",
                "hand pose pickles under "
                + " or ".join(f"{d}/{seq}" for s in HAND_DIRS for d in HAND_DIRS[s]),
                "none",
            )

        T = max(max(fr) for fr in per_side.values()) + 1
        vdir = self._video_dir(r, seq)
        mp4 = vdir / "image.mp4"
        width, height, n_video = video_size(mp4, (WIDTH, HEIGHT))
        video = None
        notes: dict = {
            "mano_convention": "manopth flat_hand_mean=True, transl = wrist - J0, camera frame, left shapedirs as published"
        }
        if n_video is not None:
            vfps = video_info(mp4).fps
            if abs(vfps - self.fps) < 1e-3 and n_video >= T:
                T, video = n_video, str(mp4)
            else:
                notes["video"] = (
                    f"{mp4.name}: {n_video} frames at {vfps:g} fps (annotations: {T} at {self.fps:g}); use the decoded frames"
                )
        jpgs = [vdir / f"{f:05d}.jpg" for f in range(T)]
        frame_paths = existing_frames(jpgs) if video is None else None

        cam_id = parts[0]
        intr_path = r / "camera_params" / cam_id / "intrin.npy"
        K = load_npy(intr_path)
        camera = camera_from_K(K, width, height, intr_path)

        hands = {}
        for side, frames in per_side.items():
            q, valid = frame_table(T, frames, POSE_FIELDS)
            pose, trans = q["poseCoeff"], q["trans"]
            betas = constant_betas(q["beta"][valid], files[0], "beta", notes, side)
            model = self.mano_model(side, fix_left_shapedirs=False)  # manopth: published left model as is
            hands[side] = mano_motion(
                side=side,
                global_orient=pose[:, :3],
                hand_pose=pose[:, 3:],
                betas=betas,
                wrist=wrist_from_mano_transl(model, betas, trans),
                fps=self.fps,
                valid=valid,
            )

        c = parts[2]
        obj = OBJECT_CLASSES[int(c[1:])] if c[1:].isdigit() and int(c[1:]) < len(OBJECT_CLASSES) else ""
        annotations = {
            "hoi4d": {
                "camera": parts[0],
                "human": parts[1],
                "object_class": c,
                "object": obj,
                "instance": parts[3],
                "room": parts[4],
                "layout": parts[5],
                "task_id": parts[6],
            },
        }
        return self.episode(
            key,
            files + [intr_path],
            notes,
            annotations=annotations,
            hands=hands,
            camera=camera,
            video=video,
            rig=f"hoi4d-{cam_id}",
            frame_paths=frame_paths,
            frame_ids=np.arange(T),
        )
