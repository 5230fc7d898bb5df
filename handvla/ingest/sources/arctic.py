"""ARCTIC (MPI; non-commercial research licence): two-hand articulated-object manipulation, marker mocap
fitted with MANO, 8 static allocentric cameras + 1 head-mounted egocentric camera.

Layout (zc-alexfan/arctic ``docs/data/data_doc.md``, ``src/arctic/preprocess_dataset.py``,
``src/arctic/processing.py``, ``scripts_data/crop_images.py``, ``src/arctic/split.py``), under
``arctic_data/data``:

    raw_seqs/<sid>/<seq>.mano.npy          np.save'd dict: right|left -> rot (F, 3), pose (F, 45), trans (F, 3),
                                           shape (10,) (the loader repeats it per frame), fitting_err (F,)
    raw_seqs/<sid>/<seq>.egocam.dist.npy   dict: R_k_cam_np (F, 3, 3), T_k_cam_np (F, 3, 1) world->ego camera,
                                           intrinsics (3, 3), dist8 (8,) lens distortion of the ego images
    meta/misc.json                         <sid> -> world2cam (8, 4, 4), intris_mat (8, 3, 3),
                                           image_size (9, [w, h]) for views 0..8, ioi_offset
    images/<sid>/<seq>/<view>/%05d.jpg     view 0 = egocentric (distorted), 1..8 = allocentric

MANO parameters are in the world (mocap) frame, evaluated with smplx ``MANO(use_pca=False,
flat_hand_mean=False)`` and ``transl=trans`` (``common/body_models.py`` ``build_mano_aa``,
``forward_gt_world``): pose relative to ``hands_mean``, wrist = J0(betas) + trans, published left model
(no shapedirs fix). Allocentric view v uses ``world2cam[v - 1]`` / ``intris_mat[v - 1]``; the ego view the
per-frame ``[R_k_cam_np | T_k_cam_np]``. Image ``%05d`` of MANO frame k is k + ioi_offset
(``crop_images.py``: vidx = image index - ioi_offset).

One episode per (sequence, view): key ``<sid>/<seq>/<view>``. The ego view (0) is only listed when asked
for (``views=(0, ...)``): its images are distorted (``dist8`` goes to ``annotations['lens_distortion']``)
and the project's cameras are pinhole, so the build step must undistort them first.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from handvla.atomic import read_json
from handvla.errors import ConfigError, InputError
from handvla.ingest.sources.base import (
    Source,
    SourceEpisode,
    as_array,
    camera_from_K,
    check_rigid,
    constant_betas,
    existing_frames,
    load_npy,
    mano_motion,
    mean_to_flat,
    require_keys,
    wrist_from_mano_transl,
)

ALLOCENTRIC_VIEWS = tuple(range(1, 9))
EGO_VIEW = 0


class ArcticSource(Source):
    name = "arctic"
    licence = "ARCTIC licence (non-commercial scientific research only)"
    kind = "mocap"
    params = "mano"
    fps = 30.0
    url = "https://arctic.is.tue.mpg.de"
    needs_mano = True
    layout = "raw_seqs/<sid>/<seq>.{mano,egocam.dist}.npy, meta/misc.json, images/<sid>/<seq>/<view>/%05d.jpg"

    def __init__(self, mano_dir=None, views: tuple[int, ...] = ALLOCENTRIC_VIEWS):
        super().__init__(mano_dir)
        bad = [v for v in views if v not in range(9)]
        if bad or not views:
            raise ConfigError(f"arctic: views must be camera indices 0 (ego) .. 8, got {views!r}")
        self.views = tuple(sorted(set(int(v) for v in views)))

    def list_episodes(self, root: str | Path) -> list[str]:
        r = self._root(root)
        keys = []
        for p in sorted(r.glob("raw_seqs/*/*.mano.npy")):
            seq = p.name[: -len(".mano.npy")]
            keys += [f"{p.parent.name}/{seq}/{v}" for v in self.views]
        return keys

    def read_episode(self, root: str | Path, key: str) -> SourceEpisode:
        r = self._root(root)
        sid, seq, view_s = self._key_parts(key, 3)
        if not view_s.isdigit() or int(view_s) not in range(9):
            raise InputError(f"arctic key {key!r}", "view", "a camera index 0..8", view_s)
        view = int(view_s)
        mano_path = r / "raw_seqs" / sid / f"{seq}.mano.npy"
        data = load_npy(mano_path)
        if not isinstance(data, dict) or not all(s in data for s in ("right", "left")):
            raise InputError(
                mano_path, "right/left", "a dict with 'right' and 'left' MANO parameters", type(data).__name__
            )

        misc_path = r / "meta" / "misc.json"
        misc = require_keys(read_json(misc_path), misc_path, [sid], "camera parameters of this subject")
        m = misc[sid]
        need = ("image_size", "ioi_offset") + (("world2cam", "intris_mat") if view else ())
        require_keys(m, misc_path, need, prefix=f"{sid}.")
        sizes = as_array(m["image_size"], misc_path, f"{sid}.image_size", (9, 2))
        width, height = int(sizes[view, 0]), int(sizes[view, 1])

        notes: dict = {
            "mano_convention": "smplx flat_hand_mean=False, transl = wrist - J0, world frame, left shapedirs as published"
        }
        hands_raw = {}
        F = None
        for side in ("right", "left"):
            where = f"{mano_path}[{side}]"
            h = require_keys(data[side], where, ("rot", "pose", "trans", "shape"), "a MANO parameter array")
            rot = as_array(h["rot"], where, "rot", (-1, 3))
            F = rot.shape[0] if F is None else F
            hands_raw[side] = {
                "rot": rot,
                "pose": as_array(h["pose"], where, "pose", (F, 45)),
                "trans": as_array(h["trans"], where, "trans", (F, 3)),
                "shape": constant_betas(as_array(h["shape"], where, "shape"), where, "shape", notes, side),
            }
            if rot.shape[0] != F:
                raise InputError(where, "rot", f"{F} frames (as the right hand)", str(rot.shape[0]))

        annotations = {}
        files = [mano_path, misc_path]
        if view == EGO_VIEW:
            ego_path = r / "raw_seqs" / sid / f"{seq}.egocam.dist.npy"
            ego = require_keys(
                load_npy(ego_path),
                ego_path,
                ("R_k_cam_np", "T_k_cam_np", "intrinsics"),
                mapping="a dict of egocentric camera parameters",
            )
            E = np.zeros((F, 4, 4))
            E[:, :3, :3] = as_array(ego["R_k_cam_np"], ego_path, "R_k_cam_np", (F, 3, 3))
            E[:, :3, 3] = as_array(ego["T_k_cam_np"], ego_path, "T_k_cam_np", (F, 3, 1))[..., 0]
            E[:, 3, 3] = 1.0
            E = check_rigid(E, ego_path, "R_k_cam_np")
            K = ego["intrinsics"]
            camera = camera_from_K(K, width, height, ego_path)
            world_to_camera = E
            if "dist8" in ego:
                annotations["lens_distortion"] = as_array(ego["dist8"], ego_path, "dist8").tolist()
            files.append(ego_path)
        else:
            w2c = as_array(m["world2cam"], misc_path, f"{sid}.world2cam", (8, 4, 4))
            E = check_rigid(w2c[view - 1], misc_path, f"{sid}.world2cam[{view - 1}]")
            K = as_array(m["intris_mat"], misc_path, f"{sid}.intris_mat", (8, 3, 3))[view - 1]
            camera = camera_from_K(K, width, height, misc_path, extrinsics=E)
            world_to_camera = None

        hands = {}
        for side, h in hands_raw.items():
            betas = h["shape"]
            model = self.mano_model(side, fix_left_shapedirs=False)  # smplx: published left model as is
            hands[side] = mano_motion(
                side=side,
                global_orient=h["rot"],
                hand_pose=mean_to_flat(model, h["pose"]),
                betas=betas,
                wrist=wrist_from_mano_transl(model, betas, h["trans"]),
                fps=self.fps,
                world_to_camera=E,
            )

        offset = int(m["ioi_offset"])
        img_dir = r / "images" / sid / seq / str(view)
        frames = [str(img_dir / f"{k + offset:05d}.jpg") for k in range(F)]
        obj, _, rest = seq.partition("_")
        verb = rest.rsplit("_", 1)[0] if rest else ""
        tasks = [f"{verb} the {obj}".strip()] if verb else []
        return self.episode(
            key,
            files,
            notes,
            annotations=annotations,
            hands=hands,
            camera=camera,
            tasks=tasks,
            rig="arctic-ego" if view == EGO_VIEW else f"arctic-allocentric-{view}",
            frame_paths=existing_frames(frames),
            frame_ids=np.arange(F) + offset,
            world_to_camera=world_to_camera,
        )
