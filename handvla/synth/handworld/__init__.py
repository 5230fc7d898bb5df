"""HandWorld: the built-in procedural tabletop world with ground truth (see docs/architecture.md).

- ``scene``: tables and objects in the WORLD frame (metres, table top z = 0, +z up, user at y < 0).
- ``cameras``: rigs (ego, third, phone) -> ``handvla.camera.Camera`` (intrinsics, world -> camera extrinsics).
- ``raster``: a numpy ray-casting renderer (objects, hands as skeleton capsules, shadows).
- ``episodes``: instructed primitives -> episodes in the store's format (hand motion in the CAMERA frame).
"""

from handvla.synth.handworld.cameras import RIGS, look_at, make_camera, parse_rigs
from handvla.synth.handworld.episodes import TASKS, HandWorldConfig, generate_episodes, make_episode
from handvla.synth.handworld.raster import Renderer, RenderResult, render_frame
from handvla.synth.handworld.scene import PALETTE, SHAPES, Scene, SceneObject, Table, sample_scene

__all__ = [
    "PALETTE",
    "RIGS",
    "SHAPES",
    "TASKS",
    "HandWorldConfig",
    "generate_episodes",
    "make_episode",
    "RenderResult",
    "Renderer",
    "Scene",
    "SceneObject",
    "Table",
    "look_at",
    "make_camera",
    "parse_rigs",
    "render_frame",
    "sample_scene",
]
