"""HandWorld scenes: a table with 1-4 coloured objects, in the WORLD frame.

World frame (metres, right-handed): the table top is the plane z = 0, +z points up, +y points away from
the user (who sits at the y < 0 edge), +x to the user's right. Objects rest on the table; an object's pose
is a 4x4 object -> world transform whose origin is the object's centre (so a resting box of height h has
its origin at z = h / 2) and whose local z axis is the object's up axis (a cylinder's axis).

Everything is sampled from a ``numpy.random.Generator`` so a seed fixes the scene.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from handvla.errors import InputError

#: named object colours (linear-ish RGB in 0..1); none of them is close to the skin colour on purpose,
#: so that an image separates hands from objects
PALETTE: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.10, 0.10),
    "green": (0.12, 0.65, 0.20),
    "blue": (0.12, 0.25, 0.85),
    "yellow": (0.95, 0.85, 0.10),
    "purple": (0.55, 0.18, 0.70),
    "cyan": (0.10, 0.75, 0.80),
    "white": (0.94, 0.94, 0.94),
    "black": (0.08, 0.08, 0.08),
}
#: table-top colours (two tones each: the texture is a checker of 10 cm tiles)
TABLE_COLOURS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "wood": ((0.62, 0.45, 0.28), (0.57, 0.41, 0.25)),
    "grey": ((0.55, 0.55, 0.56), (0.50, 0.50, 0.51)),
    "beige": ((0.78, 0.72, 0.60), (0.73, 0.67, 0.55)),
    "slate": ((0.33, 0.38, 0.42), (0.30, 0.34, 0.38)),
}
SHAPES = ("box", "cylinder", "sphere")
#: nouns used in instructions for each shape
SHAPE_NOUNS = {"box": "cube", "cylinder": "cylinder", "sphere": "ball"}

#: where objects are placed on the table (x range, y range), metres, world frame
WORKSPACE_X = (-0.26, 0.26)
WORKSPACE_Y = (0.12, 0.42)
#: minimum free gap between two objects' footprints, metres
MIN_GAP_M = 0.04


@dataclass
class SceneObject:
    """One rigid object. ``size_m`` holds the full extents of its bounding box in its own frame, metres:
    box (dx, dy, dz); cylinder (2r, 2r, height); sphere (2r, 2r, 2r)."""

    object_id: int
    shape: str
    colour: str
    size_m: np.ndarray  # (3,) bounding-box extents in the object's own frame, metres
    pose: np.ndarray  # (4, 4) object -> world

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise InputError("SceneObject", "shape", f"one of {SHAPES}", repr(self.shape))
        if self.colour not in PALETTE:
            raise InputError("SceneObject", "colour", f"one of {tuple(PALETTE)}", repr(self.colour))
        self.size_m = np.asarray(self.size_m, np.float64).reshape(3)
        self.pose = np.asarray(self.pose, np.float64).reshape(4, 4)

    @property
    def rgb(self) -> tuple[float, float, float]:
        return PALETTE[self.colour]

    @property
    def position(self) -> np.ndarray:
        """(3,) centre in the world frame, metres."""
        return self.pose[:3, 3].copy()

    @property
    def height_m(self) -> float:
        return float(self.size_m[2])

    @property
    def footprint_radius_m(self) -> float:
        """Radius of a disc that covers the object's footprint on the table."""
        if self.shape == "box":
            return float(np.hypot(self.size_m[0], self.size_m[1]) / 2)
        return float(self.size_m[0] / 2)

    @property
    def name(self) -> str:
        """'red cube', 'blue ball', ... as used in instructions."""
        return f"{self.colour} {SHAPE_NOUNS[self.shape]}"

    def to_dict(self) -> dict:
        return {
            "object_id": self.object_id,
            "shape": self.shape,
            "colour": self.colour,
            "size_m": [float(v) for v in self.size_m],
            "pose": self.pose.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SceneObject:
        return cls(
            int(d["object_id"]), d["shape"], d["colour"], np.asarray(d["size_m"]), np.asarray(d["pose"])
        )


@dataclass
class Table:
    """The table top: a rectangle on z = 0, centred at ``centre_xy``, with a two-tone checker texture."""

    colour: str = "wood"
    size_m: tuple[float, float] = (1.2, 0.8)  # (x extent, y extent)
    centre_xy: tuple[float, float] = (0.0, 0.25)
    tile_m: float = 0.10

    def contains(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (np.abs(x - self.centre_xy[0]) <= self.size_m[0] / 2) & (
            np.abs(y - self.centre_xy[1]) <= self.size_m[1] / 2
        )

    def to_dict(self) -> dict:
        return {
            "colour": self.colour,
            "size_m": list(self.size_m),
            "centre_xy": list(self.centre_xy),
            "tile_m": self.tile_m,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Table:
        return cls(d["colour"], tuple(d["size_m"]), tuple(d["centre_xy"]), float(d["tile_m"]))


@dataclass
class Scene:
    """A table, its objects (poses at the start of an episode) and the light."""

    table: Table
    objects: list[SceneObject]
    #: direction *towards* the light, world frame (unit)
    light_dir: np.ndarray = field(default_factory=lambda: _unit(np.array([-0.3, -0.5, 1.0])))

    def object_by_id(self, object_id: int) -> SceneObject:
        for o in self.objects:
            if o.object_id == object_id:
                return o
        raise InputError(
            "Scene", "object_id", f"one of {[o.object_id for o in self.objects]}", str(object_id)
        )

    def to_dict(self) -> dict:
        return {
            "table": self.table.to_dict(),
            "objects": [o.to_dict() for o in self.objects],
            "light_dir": [float(v) for v in self.light_dir],
        }

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        return cls(
            Table.from_dict(d["table"]),
            [SceneObject.from_dict(o) for o in d["objects"]],
            np.asarray(d["light_dir"], np.float64),
        )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def yaw_pose(x: float, y: float, z: float, yaw_rad: float) -> np.ndarray:
    """(4, 4) object -> world transform: rotation by ``yaw_rad`` about world z, then translation."""
    c, s = np.cos(yaw_rad), np.sin(yaw_rad)
    T = np.eye(4)
    T[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
    T[:3, 3] = (x, y, z)
    return T


def sample_object_size(shape: str, rng: np.random.Generator) -> np.ndarray:
    """(3,) bounding-box extents in metres; sizes a hand can grasp (4-8 cm across)."""
    if shape == "box":
        side = rng.uniform(0.04, 0.065)
        return np.array([side, side * rng.uniform(0.9, 1.1), side * rng.uniform(0.9, 1.4)])
    if shape == "cylinder":
        r = rng.uniform(0.022, 0.034)
        return np.array([2 * r, 2 * r, rng.uniform(0.07, 0.12)])
    if shape == "sphere":
        r = rng.uniform(0.024, 0.036)
        return np.array([2 * r, 2 * r, 2 * r])
    raise InputError("sample_object_size", "shape", f"one of {SHAPES}", repr(shape))


def sample_scene(
    rng: np.random.Generator,
    n_objects: int | None = None,
    workspace_x: tuple[float, float] = WORKSPACE_X,
    workspace_y: tuple[float, float] = WORKSPACE_Y,
    max_tries: int = 200,
) -> Scene:
    """A random table with ``n_objects`` (1-4; random when None) non-overlapping objects.

    Colours are distinct within a scene so that "the red object" names one object; shapes may repeat.
    """
    if n_objects is None:
        n_objects = int(rng.integers(1, 5))
    if not 1 <= n_objects <= 4:
        raise InputError("sample_scene", "n_objects", "1 to 4", str(n_objects))
    table_colour = str(rng.choice(list(TABLE_COLOURS)))
    colours = rng.permutation(list(PALETTE))[:n_objects]
    objects: list[SceneObject] = []
    for k in range(n_objects):
        shape = str(rng.choice(SHAPES))
        size = sample_object_size(shape, rng)
        for _ in range(max_tries):
            x = rng.uniform(*workspace_x)
            y = rng.uniform(*workspace_y)
            yaw = rng.uniform(-np.pi / 4, np.pi / 4) if shape == "box" else 0.0
            cand = SceneObject(k, shape, str(colours[k]), size, yaw_pose(x, y, size[2] / 2, yaw))
            if all(not objects_overlap(cand, o) for o in objects):
                objects.append(cand)
                break
        else:  # the workspace is large enough that this does not happen for 4 objects; say so if it does
            raise InputError(
                "sample_scene", "n_objects", f"objects that fit in {max_tries} tries", str(n_objects)
            )
    light = _unit(np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.7, 0.1), 1.0]))
    return Scene(Table(colour=table_colour), objects, light)


def objects_overlap(a: SceneObject, b: SceneObject, gap_m: float = MIN_GAP_M) -> bool:
    """True when the footprint discs (plus ``gap_m``) of two objects intersect (conservative)."""
    d = np.linalg.norm(a.position[:2] - b.position[:2])
    return bool(d < a.footprint_radius_m + b.footprint_radius_m + gap_m)


def free_spot(
    scene: Scene,
    rng: np.random.Generator,
    obj: SceneObject,
    near_xy: np.ndarray,
    radius_m: float = 0.0,
    ignore: tuple[int, ...] = (),
    max_tries: int = 100,
) -> np.ndarray | None:
    """An (x, y) on the table near ``near_xy`` (within ``radius_m``) where ``obj`` fits without touching
    the other objects; None when there is none."""
    table = scene.table
    half = np.array(table.size_m) / 2 - obj.footprint_radius_m - 0.02
    for _ in range(max_tries):
        xy = np.asarray(near_xy, np.float64) + rng.uniform(-radius_m, radius_m, 2)
        if np.any(np.abs(xy - np.array(table.centre_xy)) > half):
            continue
        moved = SceneObject(
            obj.object_id, obj.shape, obj.colour, obj.size_m, yaw_pose(xy[0], xy[1], obj.pose[2, 3], 0.0)
        )
        if all(
            not objects_overlap(moved, o)
            for o in scene.objects
            if o.object_id != obj.object_id and o.object_id not in ignore
        ):
            return xy
    return None
