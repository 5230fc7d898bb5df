"""The MANO hand model (licensed files, loaded by the user) behind the ``HandModel`` interface.

Files: ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` from https://mano.is.tue.mpg.de (free registration, research
licence); pass the folder that holds them (``mano_v1_2/models`` in the official download, or its parent).
They are read by :mod:`handvla.hand.pickle_safe`: no chumpy needed, no code from the file is run.

Model (linear blend skinning, everything in metres, the MANO model frame):
    v_shaped = v_template + shapedirs . betas                       (778, 3)
    J        = J_regressor @ v_shaped                               (16, 3) rest joints
    R        = rodrigues([global_orient, hand_pose])                (16, 3, 3)
    v_posed  = v_shaped + posedirs . vec(R[1:] - I)                 pose blend shapes
    verts    = sum_j w_j (G_j (v_posed - J_j) + P_j)                G, P from forward kinematics
Tips are mesh vertices (smplx/HaMeR ids by default), appended to the 16 joints and reordered to OpenPose.

Conventions:
- ``forward`` follows the project: ``wrist_pos`` is where the wrist *joint* goes, so ``joints[:, 0] ==
  wrist_pos`` exactly and the mesh moves with it. ``forward_mano`` keeps MANO's own ``transl`` (an offset
  added to the shape-dependent model frame: wrist = J0(betas) + transl) for converting datasets.
- ``flat_hand_mean=True`` (default, the project's convention): ``hand_pose`` is the rotation itself. With
  False it is relative to ``hands_mean`` (as in the original MANO code, ARCTIC, DexYCB, HOT3D);
  :meth:`MANOHand.mean_to_flat` / :meth:`MANOHand.flat_to_mean` convert.
- ``use_pca=True``: ``hand_pose`` is ``num_pca_comps`` PCA coefficients, expanded as
  ``coeffs @ hands_components[:k]`` (then ``hands_mean`` is added unless ``flat_hand_mean``). Unlike smplx,
  ``num_pca_comps=45`` still means PCA coefficients. :meth:`MANOHand.pca_to_axis_angle` converts.
- Left hand: the published left model has the sign of ``shapedirs[:, 0, :]`` (the x component of every
  shape direction) flipped, so a positive beta does not mirror the right hand's change. It is corrected
  (``shapedirs[:, 0, :] *= -1``) by default; pass ``fix_left_shapedirs=False`` for the file as published
  (e.g. to reproduce numbers of a tool that does not correct it, such as smplx).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from handvla.errors import InputError, MissingResourceError
from handvla.hand.model import HandModel, HandOutput, forward_kinematics
from handvla.hand.pickle_safe import restricted_load, to_plain
from handvla.hand.rotations import axis_angle_to_matrix
from handvla.hand.topology import MANO_PARENTS, MANO_TO_OPENPOSE, NUM_BETAS, NUM_FINGER_JOINTS, check_side

MANO_URL = "https://mano.is.tue.mpg.de"
MANO_FILE_NAMES = {"right": "MANO_RIGHT.pkl", "left": "MANO_LEFT.pkl"}
NUM_VERTS = 778
NUM_FACES = 1538

#: fingertip vertex ids, tip order thumb, index, middle, ring, little
SMPLX_TIP_VERTEX_IDS = (744, 320, 443, 554, 671)  # smplx / HaMeR (both sides)
MANOPTH_TIP_VERTEX_IDS = {"right": (745, 317, 444, 556, 673), "left": (745, 317, 445, 556, 673)}

#: key -> expected shape of the arrays a MANO pickle must hold
MANO_ARRAY_SHAPES: dict[str, tuple[int, ...]] = {
    "v_template": (NUM_VERTS, 3),
    "shapedirs": (NUM_VERTS, 3, NUM_BETAS),
    "posedirs": (NUM_VERTS, 3, 9 * NUM_FINGER_JOINTS),
    "J_regressor": (16, NUM_VERTS),
    "weights": (NUM_VERTS, 16),
    "kintree_table": (2, 16),
    "f": (NUM_FACES, 3),
    "hands_components": (3 * NUM_FINGER_JOINTS, 3 * NUM_FINGER_JOINTS),
    "hands_mean": (3 * NUM_FINGER_JOINTS,),
}

#: 21-point OpenPose index -> MANO+tips index, inverted: position of each MANO joint in the OpenPose output
OPENPOSE_TO_MANO = np.argsort(MANO_TO_OPENPOSE)


def find_mano_file(mano_dir: str | Path | None, side: str) -> Path:
    """The pickle for ``side`` in ``mano_dir`` (or ``mano_dir/models``); ``mano_dir`` may also be the file."""
    check_side(side)
    name = MANO_FILE_NAMES[side]
    hint = (
        f"expected {MANO_FILE_NAMES['right']} and/or {MANO_FILE_NAMES['left']} there; download them "
        f"(free registration, research licence) from {MANO_URL} and pass the folder that holds them "
        "(mano_v1_2/models in the official zip) as --mano-dir"
    )
    if mano_dir is None:
        raise MissingResourceError(
            f"the MANO hand model needs its licensed files: no MANO folder given; {hint}"
        )
    root = Path(mano_dir).expanduser()
    if root.is_file():
        return root
    candidates = [root / name, root / "models" / name]
    for c in candidates:
        if c.is_file():
            return c
    if not root.exists():
        raise MissingResourceError(f"MANO folder {root} does not exist; {hint}")
    raise MissingResourceError(
        f"{name} not found in {root} (looked at {', '.join(map(str, candidates))}); {hint}"
    )


def check_mano_arrays(arrays: Mapping[str, Any], where: str | Path) -> dict[str, Any]:
    """Check keys, shapes and values; return float64 ndarrays (J_regressor as scipy csc, ``f`` int64)."""
    out: dict[str, Any] = {}
    for key, shape in MANO_ARRAY_SHAPES.items():
        if key not in arrays:
            have = ", ".join(sorted(map(str, arrays)))
            raise InputError(where, key, f"a MANO array of shape {shape} (keys present: {have})", "missing")
        value = to_plain(arrays[key], where, key)  # chumpy -> ndarray, pickled sparse -> csc
        if key == "J_regressor":
            value = (
                sp.csc_matrix(value) if sp.issparse(value) else sp.csc_matrix(np.asarray(value, np.float64))
            )
            data = value.data
        else:
            value = np.asarray(value)
            data = value
        if value.dtype == object or value.dtype.kind not in "biuf":
            raise InputError(where, key, f"a numeric array of shape {shape}", f"dtype {value.dtype}")
        if tuple(value.shape) != shape:
            raise InputError(where, key, f"shape {shape}", str(tuple(value.shape)))
        if not np.all(np.isfinite(data)):
            raise InputError(where, key, "finite values", "NaN or inf")
        out[key] = value
    # The kinematic tree must be MANO's: forward kinematics hard-codes it (root parent is 2**32-1 in the files).
    parents = out["kintree_table"][0].astype(np.int64)
    if not np.array_equal(parents[1:], MANO_PARENTS[1:]):
        raise InputError(
            where, "kintree_table", f"MANO parents {MANO_PARENTS[1:].tolist()}", str(parents[1:].tolist())
        )
    faces = out["f"]
    if faces.dtype.kind not in "iu" or faces.min() < 0 or faces.max() >= NUM_VERTS:
        raise InputError(
            where,
            "f",
            f"integer vertex ids in [0, {NUM_VERTS})",
            f"dtype {faces.dtype}, range {faces.min()}..{faces.max()}",
        )
    for key in ("v_template", "shapedirs", "posedirs", "weights", "hands_components", "hands_mean"):
        out[key] = out[key].astype(np.float64)
    out["f"] = faces.astype(np.int64)
    out["kintree_table"] = out["kintree_table"].astype(np.int64)
    return out


def load_mano_arrays(path: str | Path) -> dict[str, Any]:
    """Read and check one MANO pickle (safely, see ``pickle_safe``). Returns the arrays of ``MANO_ARRAY_SHAPES``."""
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"MANO file {path} not found; download it from {MANO_URL}")
    data = restricted_load(path)
    if not isinstance(data, dict):
        raise InputError(path, None, "a pickled dict of MANO arrays", type(data).__name__)
    return check_mano_arrays(data, path)


def _tip_ids(tip_vertex_ids: str | Sequence[int], side: str) -> tuple[int, ...]:
    if isinstance(tip_vertex_ids, str):
        if tip_vertex_ids == "smplx":
            return SMPLX_TIP_VERTEX_IDS
        if tip_vertex_ids == "manopth":
            return MANOPTH_TIP_VERTEX_IDS[side]
        raise InputError(
            "MANOHand", "tip_vertex_ids", "'smplx', 'manopth' or 5 vertex ids", repr(tip_vertex_ids)
        )
    ids = tuple(int(i) for i in tip_vertex_ids)
    if len(ids) != 5 or not all(0 <= i < NUM_VERTS for i in ids):
        raise InputError("MANOHand", "tip_vertex_ids", f"5 vertex ids in [0, {NUM_VERTS})", str(ids))
    return ids


class MANOHand(HandModel):
    """MANO with linear blend skinning in torch. Buffers are not saved in state dicts (licensed data)."""

    name = "mano"
    has_mesh = True

    def __init__(
        self,
        arrays: Mapping[str, Any],
        side: str = "right",
        *,
        use_pca: bool = False,
        num_pca_comps: int = 45,
        flat_hand_mean: bool = True,
        fix_left_shapedirs: bool = True,
        tip_vertex_ids: str | Sequence[int] = "smplx",
        dtype: torch.dtype = torch.float32,
        where: str | Path = "MANO arrays",
    ):
        """``arrays``: what :func:`load_mano_arrays` returns (or a dict with the same keys and shapes)."""
        super().__init__()
        self.side = check_side(side)
        a = check_mano_arrays(arrays, where)
        if not 1 <= int(num_pca_comps) <= 45:
            raise InputError("MANOHand", "num_pca_comps", "an integer in 1..45", str(num_pca_comps))
        self.use_pca = bool(use_pca)
        self.num_pca_comps = int(num_pca_comps)
        self.flat_hand_mean = bool(flat_hand_mean)
        self.fix_left_shapedirs = bool(fix_left_shapedirs)
        self.tip_vertex_ids = _tip_ids(tip_vertex_ids, side)

        shapedirs = a["shapedirs"].copy()
        if side == "left" and fix_left_shapedirs:
            shapedirs[:, 0, :] *= -1

        def buf(name: str, x: np.ndarray, dt: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(x), dtype=dt), persistent=False)

        buf("v_template", a["v_template"])  # (778, 3)
        buf("shapedirs", shapedirs)  # (778, 3, 10)
        # (135, 778*3): row k = the offset per unit of the k-th entry of vec(R[1:] - I), joint-major, row-major
        buf("posedirs", a["posedirs"].reshape(NUM_VERTS * 3, -1).T)
        buf("J_regressor", a["J_regressor"].toarray())  # (16, 778), dense: 16x778 is small
        buf("lbs_weights", a["weights"])  # (778, 16)
        buf("hands_components", a["hands_components"])  # (45, 45) rows = PCA directions
        buf("hands_mean", a["hands_mean"].reshape(NUM_FINGER_JOINTS, 3))  # (15, 3)
        buf("faces", a["f"], torch.long)  # (1538, 3) for rendering
        buf("tip_ids", np.asarray(self.tip_vertex_ids), torch.long)  # (5,)
        buf("_openpose_index", MANO_TO_OPENPOSE, torch.long)  # (21,)

    @classmethod
    def from_dir(cls, mano_dir: str | Path | None, side: str = "right", **options: Any) -> MANOHand:
        """Load ``MANO_{RIGHT,LEFT}.pkl`` from ``mano_dir``; ``options`` go to the constructor."""
        path = find_mano_file(mano_dir, side)
        return cls(load_mano_arrays(path), side, where=path, **options)

    @property
    def dtype(self) -> torch.dtype:
        return self.v_template.dtype

    def extra_repr(self) -> str:
        return (
            f"side={self.side}, use_pca={self.use_pca}, num_pca_comps={self.num_pca_comps}, "
            f"flat_hand_mean={self.flat_hand_mean}, fix_left_shapedirs={self.fix_left_shapedirs}, "
            f"tip_vertex_ids={self.tip_vertex_ids}"
        )

    # ----------------------------------------------------------------------------------------------------
    # Pose conventions
    # ----------------------------------------------------------------------------------------------------

    def pca_to_axis_angle(self, coeffs: torch.Tensor) -> torch.Tensor:
        """PCA coefficients (..., k) -> axis-angle (..., 15, 3) as ``coeffs @ hands_components[:k]``.

        The result is in the same mean convention as the coefficients (datasets that store PCA poses
        usually also use ``hands_mean``: follow with :meth:`mean_to_flat`).
        """
        coeffs = torch.as_tensor(coeffs, dtype=self.dtype, device=self.v_template.device)
        k = coeffs.shape[-1]
        if not 1 <= k <= 45:
            raise InputError(
                "MANOHand.pca_to_axis_angle", "coeffs", "1..45 coefficients in the last axis", str(k)
            )
        return (coeffs @ self.hands_components[:k]).reshape(coeffs.shape[:-1] + (NUM_FINGER_JOINTS, 3))

    def axis_angle_to_pca(self, hand_pose: torch.Tensor, num_comps: int | None = None) -> torch.Tensor:
        """Axis-angle (..., 15, 3) or (..., 45) -> the least-squares ``num_comps`` PCA coefficients.

        Exact (up to round-off) for 45 components; a projection for fewer.
        """
        k = self.num_pca_comps if num_comps is None else int(num_comps)
        if not 1 <= k <= 45:
            raise InputError("MANOHand.axis_angle_to_pca", "num_comps", "an integer in 1..45", str(k))
        pose = self._as_pose(hand_pose, "axis_angle_to_pca")
        lead = pose.shape[:-2]
        flat = pose.reshape(-1, 45)
        comps = self.hands_components[:k].double()  # (k, 45)
        # coeffs @ comps = pose  <=>  comps^T coeffs^T = pose^T, solved in float64 for accuracy
        sol = torch.linalg.lstsq(comps.T.expand(flat.shape[0], 45, k), flat.double()[..., None]).solution
        return sol[..., 0].to(self.dtype).reshape(lead + (k,))

    def _as_pose(self, hand_pose: torch.Tensor, what: str) -> torch.Tensor:
        pose = torch.as_tensor(hand_pose, dtype=self.dtype, device=self.v_template.device)
        if pose.shape[-1:] == (45,):
            pose = pose.reshape(pose.shape[:-1] + (NUM_FINGER_JOINTS, 3))
        if pose.shape[-2:] != (NUM_FINGER_JOINTS, 3):
            raise InputError(
                f"MANOHand.{what}",
                "hand_pose",
                "axis-angle (..., 15, 3) or (..., 45)",
                str(tuple(pose.shape)),
            )
        return pose

    def mean_to_flat(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """Pose relative to ``hands_mean`` (..., 15, 3) or (..., 45) -> flat convention (..., 15, 3)."""
        return self._as_pose(hand_pose, "mean_to_flat") + self.hands_mean

    def flat_to_mean(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """Flat-convention pose (..., 15, 3) or (..., 45) -> relative to ``hands_mean`` (..., 15, 3)."""
        return self._as_pose(hand_pose, "flat_to_mean") - self.hands_mean

    def to_flat_hand_pose(self, hand_pose: torch.Tensor) -> torch.Tensor:
        """This model's ``hand_pose`` input (per ``use_pca`` / ``flat_hand_mean``) -> flat axis-angle (B, 15, 3)."""
        hand_pose = torch.as_tensor(hand_pose, dtype=self.dtype, device=self.v_template.device)
        B = hand_pose.shape[0]
        if self.use_pca:
            if hand_pose.shape != (B, self.num_pca_comps):
                raise InputError(
                    "MANOHand",
                    "hand_pose",
                    f"PCA coefficients ({B}, {self.num_pca_comps})",
                    str(tuple(hand_pose.shape)),
                )
            pose = self.pca_to_axis_angle(hand_pose)
        else:
            if hand_pose.shape not in ((B, 15, 3), (B, 45)):
                raise InputError(
                    "MANOHand",
                    "hand_pose",
                    f"axis-angle ({B}, 15, 3) or ({B}, 45)",
                    str(tuple(hand_pose.shape)),
                )
            pose = hand_pose.reshape(B, NUM_FINGER_JOINTS, 3)
        return pose if self.flat_hand_mean else pose + self.hands_mean

    # ----------------------------------------------------------------------------------------------------
    # Skinning
    # ----------------------------------------------------------------------------------------------------

    def _betas(self, betas: torch.Tensor | None, B: int) -> torch.Tensor:
        if betas is None:
            return self.v_template.new_zeros(B, NUM_BETAS)
        betas = torch.as_tensor(betas, dtype=self.dtype, device=self.v_template.device)
        if betas.shape == (NUM_BETAS,):
            betas = betas.expand(B, NUM_BETAS)
        if betas.shape != (B, NUM_BETAS):
            raise InputError(
                "MANOHand", "betas", f"shape ({NUM_BETAS},) or ({B}, {NUM_BETAS})", str(tuple(betas.shape))
            )
        return betas

    def shaped_vertices(self, betas: torch.Tensor) -> torch.Tensor:
        """(B, 10) -> rest-pose vertices (B, 778, 3) of that shape, model frame, metres."""
        return self.v_template + torch.einsum("bl,vcl->bvc", betas.to(self.dtype), self.shapedirs)

    def rest_joints_and_tips(self, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 10) -> rest joints (B, 16, 3) from the regressor and tip vertices (B, 5, 3), model frame."""
        v_shaped = self.shaped_vertices(betas)
        J = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)
        return J, v_shaped[:, self.tip_ids]

    def skin(self, rot: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MANO in its own frame (no translation): local rotations (B, 16, 3, 3) (the wrist, then the 15
        finger joints, flat convention), betas (B, 10) -> vertices (B, 778, 3) and the 16 posed joints
        (B, 16, 3), metres. The root rotates about J0."""
        B = rot.shape[0]
        v_shaped = self.shaped_vertices(betas)  # (B, 778, 3)
        J = torch.einsum("jv,bvc->bjc", self.J_regressor, v_shaped)  # (B, 16, 3)
        eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
        pose_feature = (rot[:, 1:] - eye).reshape(B, 9 * NUM_FINGER_JOINTS)  # (B, 135)
        v_posed = v_shaped + (pose_feature @ self.posedirs).reshape(B, NUM_VERTS, 3)
        G, P, _ = forward_kinematics(rot, J)  # (B, 16, 3, 3), (B, 16, 3)
        # joint j moves a rest point x to G_j (x - J_j) + P_j: a rotation and a translation t_j
        t = P - (G @ J[..., None])[..., 0]  # (B, 16, 3)
        Wg = torch.einsum("vj,bjxy->bvxy", self.lbs_weights, G)  # (B, 778, 3, 3)
        verts = (Wg @ v_posed[..., None])[..., 0] + torch.einsum("vj,bjc->bvc", self.lbs_weights, t)
        return verts, P

    def _run(
        self, global_orient: torch.Tensor, hand_pose: torch.Tensor, betas: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        global_orient = torch.as_tensor(global_orient, dtype=self.dtype, device=self.v_template.device)
        if global_orient.dim() != 2 or global_orient.shape[1] != 3:
            raise InputError(
                "MANOHand", "global_orient", "axis-angle of shape (B, 3)", str(tuple(global_orient.shape))
            )
        B = global_orient.shape[0]
        pose = self.to_flat_hand_pose(hand_pose)
        if pose.shape[0] != B:
            raise InputError(
                "MANOHand", "hand_pose", f"batch size {B} (as global_orient)", str(pose.shape[0])
            )
        rot = axis_angle_to_matrix(torch.cat([global_orient[:, None], pose], 1))  # (B, 16, 3, 3)
        return self._skinned(rot, self._betas(betas, B))

    def _skinned(self, rot: torch.Tensor, betas: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Joints (B, 21, 3) OpenPose order and vertices (B, 778, 3), model frame (``skin``)."""
        verts, P = self.skin(rot, betas)
        joints = torch.cat([P, verts[:, self.tip_ids]], 1)[:, self._openpose_index]  # (B, 21, 3) OpenPose
        return joints, verts

    def joints_from_rotations(
        self, rot_mats: torch.Tensor, betas: torch.Tensor, wrist_pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Differentiable: local rotation matrices (B, 16, 3, 3) in the flat convention (whatever
        ``use_pca`` / ``flat_hand_mean`` say about ``forward``'s input), betas (B, 10), wrist_pos (B, 3) ->
        joints (B, 21, 3) with ``joints[:, 0] == wrist_pos`` (the origin when None)."""
        rot_mats = torch.as_tensor(rot_mats, dtype=self.dtype, device=self.v_template.device)
        joints, _ = self._skinned(rot_mats, self._betas(betas, rot_mats.shape[0]))
        joints = joints - joints[:, :1]
        return joints if wrist_pos is None else joints + wrist_pos[:, None]

    def forward(
        self,
        global_orient: torch.Tensor,
        hand_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        wrist_pos: torch.Tensor | None = None,
    ) -> HandOutput:
        """Project convention: joints (B, 21, 3) OpenPose order with ``joints[:, 0] == wrist_pos`` exactly
        (the origin when None), vertices (B, 778, 3) moved with them. Metres, the frame of ``global_orient``.

        global_orient (B, 3) axis-angle; hand_pose (B, 15, 3) / (B, 45) axis-angle, or (B, k) PCA
        coefficients with ``use_pca``; betas (B, 10) or (10,) (zeros when None); wrist_pos (B, 3) or (3,).
        """
        joints, verts = self._run(global_orient, hand_pose, betas)
        root = joints[:, :1]
        joints, verts = joints - root, verts - root
        if wrist_pos is not None:
            w = torch.as_tensor(wrist_pos, dtype=self.dtype, device=joints.device)
            w = w.expand(joints.shape[0], 3) if w.shape == (3,) else w
            if w.shape != (joints.shape[0], 3):
                raise InputError(
                    "MANOHand", "wrist_pos", f"shape ({joints.shape[0]}, 3) or (3,)", str(tuple(w.shape))
                )
            joints, verts = joints + w[:, None], verts + w[:, None]
        return HandOutput(joints=joints, verts=verts)

    def forward_mano(
        self,
        global_orient: torch.Tensor,
        hand_pose: torch.Tensor,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
    ) -> HandOutput:
        """MANO's own convention: outputs in the model frame plus ``transl`` (so the wrist lands at
        J0(betas) + transl). Same inputs as ``forward``; joints (B, 21, 3) OpenPose order, verts (B, 778, 3)."""
        joints, verts = self._run(global_orient, hand_pose, betas)
        if transl is not None:
            t = torch.as_tensor(transl, dtype=self.dtype, device=joints.device)
            t = t.expand(joints.shape[0], 3) if t.shape == (3,) else t
            if t.shape != (joints.shape[0], 3):
                raise InputError(
                    "MANOHand", "transl", f"shape ({joints.shape[0]}, 3) or (3,)", str(tuple(t.shape))
                )
            joints, verts = joints + t[:, None], verts + t[:, None]
        return HandOutput(joints=joints, verts=verts)

    def wrist_from_transl(self, betas: torch.Tensor, transl: torch.Tensor) -> torch.Tensor:
        """MANO ``transl`` (..., 3) -> the project's ``wrist_pos`` (..., 3) = J0(betas) + transl (inverse of
        ``mano_transl``); the root joint does not move under global rotation, so no pose is needed."""
        betas = torch.as_tensor(betas, dtype=self.dtype)
        J, _ = self.rest_joints_and_tips(betas.reshape(-1, NUM_BETAS))
        transl = torch.as_tensor(transl, dtype=self.dtype)
        return transl + J[:, 0].reshape(betas.shape[:-1] + (3,))
