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

from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.base import (
    Provenance,
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    check_rigid,
    load_pickle,
    mano_motion,
    quat_wxyz_to_aa,
)

CAMERAS = ("allocentric_top", "allocentric_left", "allocentric_right", "egocentric")
WIDTH, HEIGHT = 848, 480  # oakink2_toolkit.meta.VIDEO_SHAPE
HAND_PREFIX = {"right": "rh", "left": "lh"}


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
        token, cam = self._key_path(r, key, 2)
        path = r / "anno_preview" / f"{token}.pkl"
        anno = self._load(path)
        if not isinstance(anno, dict):
            raise InputError(path, None, "a dict (OakInk2 preview annotation)", type(anno).__name__)
        for f in ("frame_id_list", "cam_intr", "cam_extr", "raw_mano"):
            if f not in anno:
                raise InputError(path, f, "present (OakInk2 anno_preview)", "missing")
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
                paths = [img_dir / pattern.format(f) for f in fids]
                if paths[0].is_file():
                    frame_paths = [str(p) for p in paths]
                    from PIL import Image

                    with Image.open(paths[0]) as im:
                        width, height = im.size
                    break
        camera = camera_from_K(Ks[0], width, height, path)
        static = float(np.abs(E - E[0]).max()) < 1e-9
        if static:
            camera.extrinsics = E[0]

        raw = anno["raw_mano"]
        hands = {}
        for side, pre in HAND_PREFIX.items():
            q = np.zeros((T, 16, 4))
            q[:, :, 0] = 1.0
            tsl = np.zeros((T, 3))
            betas = []
            valid = np.zeros(T, bool)
            for i, f in enumerate(fids):
                item = raw.get(f)
                if not isinstance(item, dict) or f"{pre}__pose_coeffs" not in item:
                    continue
                where = f"{path}:raw_mano[{f}]"
                q[i] = as_array(item[f"{pre}__pose_coeffs"], where, f"{pre}__pose_coeffs", (16, 4))
                tsl[i] = as_array(item[f"{pre}__tsl"], where, f"{pre}__tsl", (3,))
                betas.append(as_array(item[f"{pre}__betas"], where, f"{pre}__betas", (10,)))
                valid[i] = True
            if not valid.any():
                continue
            aa = quat_wxyz_to_aa(q)  # (T, 16, 3)
            b = np.mean(betas, 0)
            dev = float(np.abs(np.stack(betas) - b).max())
            if dev > 1e-6:
                notes[f"{side}_betas_max_deviation"] = dev
            hands[side] = mano_motion(
                side=side,
                global_orient=aa[:, 0],
                hand_pose=aa[:, 1:],
                betas=b,
                wrist=tsl,
                fps=self.fps,
                valid=valid,
                world_to_camera=E,
            )
        if not hands:
            raise InputError(
                path, "raw_mano", "MANO parameters for at least one hand on the listed frames", "none"
            )
        return SourceEpisode(
            hands=hands,
            camera=camera,
            fps=self.fps,
            key=f"{self.name}/{key}",
            source=self.name,
            licence=self.licence,
            rig=f"oakink2-{cam}",
            annotations={"provenance": Provenance(self.name, key, [str(path)], notes).as_dict()},
            frame_paths=frame_paths,
            frame_ids=np.asarray(fids),
            world_to_camera=None if static else E,
        ).validate()
