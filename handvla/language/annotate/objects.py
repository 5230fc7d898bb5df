"""Known objects of an episode (for contact and target text), read from its ``ground_truth``.

Two layouts are understood:
- HandWorld (``handvla.synth.handworld.episodes``): ``scene.objects`` (shape, colour, size_m, pose in the
  WORLD frame at the start) and ``object_tracks`` ({object id: {'position_world': (T, 3)}} for objects that
  move); the episode's camera extrinsics (world -> camera) bring them into the camera frame.
- generic: ``objects`` = [{'name': str, 'radius_m': float, 'position_camera': (3,) or (T, 3),
  'properties': {...}}], positions already in the camera frame (metres).
Episodes without either have no known objects (the annotator then says nothing about contact).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation

from handvla.camera import Camera
from handvla.errors import InputError
from handvla.language.annotate.base import KnownObject

#: nouns for HandWorld shapes (kept here so annotation does not import the renderer)
_SHAPE_NOUNS = {"box": "cube", "cylinder": "cylinder", "sphere": "ball"}


def _size_word(extent_m: float) -> str:
    if extent_m < 0.045:
        return "small"
    if extent_m > 0.09:
        return "large"
    return "medium-sized"


def known_objects(
    ground_truth: dict[str, Any] | None,
    camera: Camera,
    start_frame: int,
    end_frame: int,
    where: str = "episode",
) -> list[KnownObject]:
    """Objects with camera-frame positions for frames [start_frame, end_frame) of the stored episode."""
    if not ground_truth:
        return []
    n = max(0, int(end_frame) - int(start_frame))
    if "scene" in ground_truth and isinstance(ground_truth["scene"], dict):
        return _handworld_objects(ground_truth, camera, start_frame, n, where)
    if "objects" in ground_truth:
        return _generic_objects(ground_truth["objects"], start_frame, n, where)
    return []


def _handworld_objects(gt: dict[str, Any], camera: Camera, a: int, n: int, where: str) -> list[KnownObject]:
    if camera.extrinsics is None:
        raise InputError(
            where, "camera/extrinsics", "world -> camera extrinsics to place the scene objects", "None"
        )
    tracks = gt.get("object_tracks") or {}
    out = []
    for o in gt["scene"].get("objects", []):
        try:
            oid = int(o["object_id"])
            size = np.asarray(o["size_m"], np.float64).reshape(3)
            pose = np.asarray(o["pose"], np.float64).reshape(4, 4)
            shape, colour = str(o["shape"]), str(o["colour"])
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                where,
                "ground_truth.scene.objects",
                "objects with object_id, shape, colour, size_m, pose",
                repr(e),
            ) from None
        tr = tracks.get(str(oid))
        R_co = camera.extrinsics[:3, :3]
        if tr is not None:
            idx = np.clip(np.arange(a, a + max(n, 1)), 0, len(tr["position_world"]) - 1)
            pw = np.asarray(tr["position_world"], np.float64).reshape(-1, 3)[idx]
            q = np.asarray(tr["quat_xyzw_world"], np.float64).reshape(-1, 4)[idx]
            rot = R_co @ Rotation.from_quat(q).as_matrix()  # (n, 3, 3) object -> camera
        else:
            pw = pose[None, :3, 3]
            rot = (R_co @ pose[:3, :3])[None]
        noun = _SHAPE_NOUNS.get(shape, shape)
        geometry = {"box": "box", "cylinder": "cylinder", "sphere": "sphere"}.get(shape)
        out.append(
            KnownObject(
                name=f"{colour} {noun}",
                positions_m=camera.world_to_camera(pw),
                radius_m=float(np.linalg.norm(size) / 2),
                properties={"colour": colour, "shape": noun, "size": _size_word(float(size.max()))},
                object_id=oid,
                geometry=geometry,
                half_extents_m=size / 2 if geometry else None,
                rotations=rot if geometry else None,
            )
        )
    return _unique_names(out)


def _generic_objects(objs: Any, a: int, n: int, where: str) -> list[KnownObject]:
    if not isinstance(objs, list):
        raise InputError(where, "ground_truth.objects", "a list of objects", type(objs).__name__)
    out = []
    for i, o in enumerate(objs):
        try:
            p = np.asarray(o["position_camera"], np.float64)
            if p.ndim == 2:
                p = p[np.clip(np.arange(a, a + max(n, 1)), 0, len(p) - 1)]
            out.append(KnownObject(str(o["name"]), p, float(o["radius_m"]), dict(o.get("properties") or {})))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(
                where, f"ground_truth.objects[{i}]", "name, radius_m and position_camera", repr(e)
            ) from None
    return _unique_names(out)


def _unique_names(objs: list[KnownObject]) -> list[KnownObject]:
    """Two objects with the same name get told apart by their order ('red cube', 'second red cube')."""
    seen: dict[str, int] = {}
    ordinals = ("second", "third", "fourth", "fifth")
    for o in objs:
        k = seen.get(o.name, 0)
        seen[o.name] = k + 1
        if k:
            o.name = f"{ordinals[min(k - 1, len(ordinals) - 1)]} {o.name}"
    return objs
