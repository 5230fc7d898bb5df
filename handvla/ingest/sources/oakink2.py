"""OakInk2 (SJTU; CC BY-NC-SA 4.0): bimanual object manipulation, optical mocap at 120 fps fitted with MANO,
4 RGB cameras (3 allocentric + 1 egocentric) at 30 fps.

Layout (oakink/OakInk2 ``README.md``, ``src/oakink2_toolkit/{dataset,meta}.py``,
``src/oakink2_preview/dataset/stream_preview.py``, ``src/oakink2_preview/launch/viz/seg_3d.py``):

    anno_preview/<seq_token>.pkl     cam_def {serial: name}, cam_selection [names], frame_id_list [image frame ids],
                                     cam_intr[name][fid] (3, 3), cam_extr[name][fid] (4, 4) world -> camera,
                                     mocap_frame_id_list, raw_mano[fid] {rh__pose_coeffs (1, 16, 4) quaternions
                                     w x y z, rh__tsl (1, 3), rh__betas (1, 10), lh__...} (torch tensors)
    data/<seq_token>/<serial>/<fid:06d>.png (preview tool) or <fid>.jpg (README)     848 x 480

``<seq_token>`` is ``scene_..++<date>`` (the toolkit's seq_key with '/' -> '++'); the key is
``<seq_token>/<camera name>``, camera names allocentric_top|left|right and egocentric.

MANO convention (``seg_3d.py``: manotorch ``ManoLayer(rot_mode='quat', use_pca=False, flat_hand_mean=True,
center_idx=0)``, joints ``+ tsl``, then ``cam_extr`` applied): pose coefficients are absolute (flat) local
rotations as quaternions, joint 0 is the global rotation; with ``center_idx=0`` the output is centred on the
wrist, so ``tsl`` IS the wrist position in the world frame. No MANO model is needed to convert. Image
frame ids and mocap frame ids share one clock (the preview tool indexes ``raw_smplx`` with image frame
ids): the episode has one frame per ``frame_id_list`` entry, invalid where ``raw_mano`` has no entry.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    check_rigid,
    constant_betas,
    existing_frames,
    frame_table,
    load_pickle,
    mano_motion,
    quat_wxyz_to_aa,
    require_keys,
    split_extrinsics,
)

CAMERAS = ("allocentric_top", "allocentric_left", "allocentric_right", "egocentric")
WIDTH, HEIGHT = 848, 480  # oakink2_toolkit.meta.VIDEO_SHAPE
HAND_PREFIX = {"right": "rh", "left": "lh"}
#: what raw_mano gives per hand and frame, after the hand prefix: quaternions w x y z, wrist, shape
MANO_FIELDS = {"pose_coeffs": (16, 4), "tsl": (3,), "betas": (10,)}


class OakInk2Source(Source):
    name = "oakink2"
    licence = "CC BY-NC-SA 4.0"
    kind = "mocap"
    params = "mano"
    fps = 30.0  # oakink2_toolkit.meta.FPS_VIDEO (mocap: 120)
    url = "https://oakink.net/v2"
    needs_mano = False  # tsl is the wrist (center_idx=0): nothing shape-dependent to compute
    layout = "anno_preview/<seq_token>.pkl, data/<seq_token>/<serial>/<frame id>.{png,jpg}"

    def __init__(self, mano_dir=None, cameras: tuple[str, ...] = CAMERAS):
        super().__init__(mano_dir)
        self._anno_cache: tuple[tuple[str, float], dict] | None = (
            None  # one sequence: 4 cameras read it in turn
        )
        bad = [c for c in cameras if c not in CAMERAS]
        if bad or not cameras:
            raise ConfigError(f"oakink2: cameras must be among {CAMERAS}, got {cameras!r}")
        self.cameras = tuple(c for c in CAMERAS if c in cameras)

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        return [f"{p.stem}/{c}" for p in sorted(r.glob("anno_preview/*.pkl")) for c in self.cameras]

    def _load(self, path: Path) -> dict:
        """The annotation pickle (large: SMPL-X and objects too), kept for the next camera of the sequence."""
        stamp = (str(path), path.stat().st_mtime if path.is_file() else -1.0)
        if self._anno_cache is not None and self._anno_cache[0] == stamp:
            return self._anno_cache[1]
        anno = load_pickle(path)
        self._anno_cache = (stamp, anno)
        return anno

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        token, cam = self._key_parts(key, 2)
        path = r / "anno_preview" / f"{token}.pkl"
        anno = require_keys(
            self._load(path),
            path,
            ("frame_id_list", "cam_intr", "cam_extr", "raw_mano"),
            "present (OakInk2 anno_preview)",
            mapping="a dict (OakInk2 preview annotation)",
        )
        if cam not in anno["cam_intr"] or cam not in anno["cam_extr"]:
            raise InputError(
                path, f"cam_intr/cam_extr[{cam!r}]", f"a camera among {sorted(anno['cam_intr'])}", "missing"
            )
        fids = [int(f) for f in anno["frame_id_list"]]
        if not fids:
            raise InputError(path, "frame_id_list", "at least one frame", "empty")
        T = len(fids)
        intr, extr = anno["cam_intr"][cam], anno["cam_extr"][cam]
        missing = [f for f in fids if f not in intr or f not in extr]
        if missing:
            raise InputError(
                path,
                f"cam_intr/cam_extr[{cam!r}]",
                "an entry for every frame of frame_id_list",
                f"frame {missing[0]} missing",
            )
        Ks = np.stack([as_array(intr[f], path, f"cam_intr[{cam!r}][{f}]", (3, 3)) for f in fids])
        E = check_rigid(
            np.stack([as_array(extr[f], path, f"cam_extr[{cam!r}][{f}]", (4, 4)) for f in fids]),
            path,
            f"cam_extr[{cam!r}]",
        )
        notes: dict = {
            "mano_convention": "manotorch quat, flat_hand_mean=True, center_idx=0: tsl = wrist, world frame"
        }
        k_dev = float(np.abs(Ks - Ks[0]).max())
        if k_dev > 1e-6:
            notes["intrinsics_max_deviation_px"] = k_dev

        serial = {v: k for k, v in anno.get("cam_def", {}).items()}.get(cam)
        frame_paths = None
        width, height = WIDTH, HEIGHT
        if serial is not None:
            img_dir = r / "data" / token / str(serial)
            for pattern in ("{:06d}.png", "{}.jpg", "{:06d}.jpg", "{}.png"):
                frame_paths = existing_frames([img_dir / pattern.format(f) for f in fids])
                if frame_paths:
                    with Image.open(frame_paths[0]) as im:
                        width, height = im.size
                    break
        static, moving = split_extrinsics(E)
        camera = camera_from_K(Ks[0], width, height, path, extrinsics=static)

        raw = anno["raw_mano"]
        hands = {}
        for side, pre in HAND_PREFIX.items():
            rows = {}
            for i, f in enumerate(fids):
                item = raw.get(f)
                if not isinstance(item, dict) or f"{pre}__pose_coeffs" not in item:
                    continue
                where = f"{path}:raw_mano[{f}]"
                rows[i] = {
                    k: as_array(item[f"{pre}__{k}"], where, f"{pre}__{k}", shape)
                    for k, shape in MANO_FIELDS.items()
                }
            if not rows:
                continue
            m, valid = frame_table(T, rows, MANO_FIELDS)
            m["pose_coeffs"][~valid, :, 0] = (
                1.0  # the identity where there is no hand (mano_motion zeroes it)
            )
            aa = quat_wxyz_to_aa(m["pose_coeffs"])  # (T, 16, 3)
            hands[side] = mano_motion(
                side=side,
                global_orient=aa[:, 0],
                hand_pose=aa[:, 1:],
                betas=constant_betas(m["betas"][valid], path, f"raw_mano {pre}__betas", notes, side),
                wrist=m["tsl"],
                fps=self.fps,
                valid=valid,
                world_to_camera=E,
            )
        if not hands:
            raise InputError(
                path, "raw_mano", "MANO parameters for at least one hand on the listed frames", "none"
            )
        return self.episode(
            key,
            [path],
            notes,
            hands=hands,
            camera=camera,
            rig=f"oakink2-{cam}",
            frame_paths=frame_paths,
            frame_ids=np.asarray(fids),
            world_to_camera=moving,
        )
