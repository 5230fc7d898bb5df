"""Write fake MANO-format pickles for tests (the real files are licensed and never in the repo).

The arrays have MANO's real shapes and a plausible geometry: joints of the built-in hand, vertices
scattered along the bones, a sparse regressor averaging nearby vertices, skin weights that fall off
with the distance to each joint, small shape and pose blend shapes.

The chumpy variant mimics the published files as the restricted loader sees them: protocol 2,
Python-2 global names (``numpy.core.multiarray``, ``scipy.sparse.csc``, ``__builtin__``, ``copy_reg``),
array bytes stored as latin-1 strings (what a Python-2 ``str`` becomes when read with
``encoding='latin1'``), and chumpy objects recorded as ``chumpy.ch.Ch`` / ``chumpy.reordering.Select``
(``shapedirs`` is a Select of 10 columns out of a 20-column Ch, as in the published right model).
The stand-in chumpy classes live in ``sys.modules`` only while writing.
"""

from __future__ import annotations

import os
import pickle
import sys
import tempfile
import types
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from handvla.hand.model import TIP_PARENTS, BuiltinHand
from handvla.hand.topology import MANO_PARENTS

try:
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct

SMPLX_TIPS = (744, 320, 443, 554, 671)
MANOPTH_TIPS = (745, 317, 444, 556, 673, 445)


def make_fake_mano_arrays(side: str = "right", seed: int = 0) -> dict[str, Any]:
    """Random MANO arrays with real shapes (float64, J_regressor as csc, f uint32, kintree int64)."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        J, tips = BuiltinHand(side).rest_joints_and_tips(torch.zeros(1, 10))
    J, tips = J[0].double().numpy(), tips[0].double().numpy()  # (16, 3), (5, 3) metres
    # bones: wrist -> each finger base, and every finger joint -> its child (or tip)
    seg = [(J[0], J[c]) for c in (1, 4, 7, 10, 13)]
    children = {int(p): i for i, p in enumerate(MANO_PARENTS) if p > 0}
    for j in range(1, 16):
        end = J[children[j]] if j in children else tips[list(TIP_PARENTS).index(j)]
        seg.append((J[j], end))
    pick = rng.integers(0, len(seg), 778)
    u = rng.random(778)[:, None]
    starts = np.stack([seg[k][0] for k in pick])
    ends = np.stack([seg[k][1] for k in pick])
    v_template = starts + u * (ends - starts) + rng.normal(0, 0.006, (778, 3))
    tip_targets = list(tips) + [tips[2]]
    for vid_set in (SMPLX_TIPS, MANOPTH_TIPS):
        for vid, p in zip(vid_set, tip_targets):
            v_template[vid] = p + rng.normal(0, 0.001, 3)

    # regressor: each joint = a convex combination of its 12 nearest vertices
    d = np.linalg.norm(v_template[None] - J[:, None], axis=-1)  # (16, 778)
    rows, cols, vals = [], [], []
    for j in range(16):
        near = np.argsort(d[j])[:12]
        w = rng.random(12) + 0.5
        rows += [j] * 12
        cols += near.tolist()
        vals += (w / w.sum()).tolist()
    J_regressor = sp.csc_matrix((vals, (rows, cols)), shape=(16, 778))
    J_reg = J_regressor @ v_template
    # skin weights: softmax of -distance / 1 cm to the regressed joints
    logits = -np.linalg.norm(v_template[:, None] - J_reg[None], axis=-1) / 0.01
    weights = np.exp(logits - logits.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)

    q, _ = np.linalg.qr(rng.normal(size=(45, 45)))
    hands_components = q * np.linspace(1.0, 0.1, 45)[:, None]  # rows = directions, decreasing spread
    kintree = np.stack([MANO_PARENTS, np.arange(16)]).astype(np.int64)
    kintree[0, 0] = 4294967295  # as in the published files (uint32 -1)
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(0, 0.002, (778, 3, 10)),
        "posedirs": rng.normal(0, 0.002, (778, 3, 135)),
        "J_regressor": J_regressor,
        "weights": weights,
        "kintree_table": kintree,
        "f": rng.integers(0, 778, (1538, 3)).astype(np.uint32),
        "hands_components": hands_components,
        "hands_mean": rng.normal(0, 0.15, 45),
        "hands_coeffs": rng.normal(0, 0.5, (4, 45)),  # extra keys of the real files, unused
        "bs_style": "lbs",
        "bs_type": "lrotmin",
    }


class _Py2Array:
    """Pickles like a numpy array written by Python 2: the raw bytes as a latin-1 string."""

    def __init__(self, a: np.ndarray):
        self.a = np.ascontiguousarray(a)

    def __reduce__(self):
        state = (1, self.a.shape, self.a.dtype, False, self.a.tobytes().decode("latin1"))
        return _np_reconstruct, (np.ndarray, (0,), "b"), state


def _py2_csc(m: sp.spmatrix) -> sp.csc_matrix:
    """A csc_matrix whose pickled attribute dict holds Python-2 style arrays."""
    m = m.tocsc()
    out = sp.csc_matrix(m, copy=True)
    out.__dict__.update(data=_Py2Array(m.data), indices=_Py2Array(m.indices), indptr=_Py2Array(m.indptr))
    return out


def _py2(x: Any) -> Any:
    return _Py2Array(x) if isinstance(x, np.ndarray) else x


@contextmanager
def _fake_chumpy():
    """Temporarily install modules ``chumpy``, ``chumpy.ch``, ``chumpy.reordering`` with stand-ins."""
    saved = {k: sys.modules[k] for k in ("chumpy", "chumpy.ch", "chumpy.reordering") if k in sys.modules}
    root, ch, reordering = (types.ModuleType(n) for n in ("chumpy", "chumpy.ch", "chumpy.reordering"))

    class Ch:  # the state chumpy writes: its __dict__ minus the weak-reference caches
        def __init__(self, **state: Any):
            self._state = state

        def __getstate__(self) -> dict[str, Any]:
            return self._state

    class Select(Ch):
        pass

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch.Ch, reordering.Select, root.ch, root.reordering, root.Ch = Ch, Select, ch, reordering, Ch
    sys.modules.update({"chumpy": root, "chumpy.ch": ch, "chumpy.reordering": reordering})
    try:
        yield Ch, Select
    finally:
        for k in ("chumpy", "chumpy.ch", "chumpy.reordering"):
            sys.modules.pop(k, None)
        sys.modules.update(saved)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


# Python-3 global names -> the names in a pickle written by Python 2 (plain GLOBAL opcodes, no lengths)
_PY2_NAMES = {
    b"cnumpy._core.multiarray\n_reconstruct\n": b"cnumpy.core.multiarray\n_reconstruct\n",
    b"cscipy.sparse._csc\ncsc_matrix\n": b"cscipy.sparse.csc\ncsc_matrix\n",
}


def write_fake_mano_pickle(
    path: str | Path, side: str = "right", seed: int = 0, *, chumpy: bool = True, protocol: int = 2
) -> dict[str, Any]:
    """Write a MANO-format pickle; return the plain arrays it holds (shapedirs as evaluated).

    ``chumpy=True``: the published-file layout (chumpy objects, Python-2 names, see module docstring).
    ``chumpy=False``: plain numpy / scipy objects, loadable by ``pickle.load`` (what smplx needs).
    """
    arrays = make_fake_mano_arrays(side, seed)
    write_mano_pickle(path, arrays, chumpy=chumpy, protocol=protocol, seed=seed)
    return arrays


def write_mano_pickle(
    path: str | Path, arrays: dict[str, Any], *, chumpy: bool = True, protocol: int = 2, seed: int = 0
) -> None:
    """Write given arrays in the MANO pickle layout (see ``write_fake_mano_pickle``)."""
    path = Path(path)
    if not chumpy:
        _atomic_write(path, pickle.dumps(dict(arrays), protocol=protocol))
        return
    rng = np.random.default_rng(seed + 1000)
    with _fake_chumpy() as (Ch, Select):
        d = {k: _py2(v) for k, v in arrays.items() if k != "J_regressor"}
        d["J_regressor"] = _py2_csc(arrays["J_regressor"])
        # shapedirs: Select of the first 10 of 20 shape columns, chumpy's flat index form
        full = np.concatenate(
            [arrays["shapedirs"], rng.normal(0, 0.002, (778, 3, 10))], axis=2
        )  # (778, 3, 20)
        idxs = np.arange(full.size).reshape(full.shape)[:, :, :10].ravel()
        base = Ch(x=_py2(full), _dirty_vars={"x"}, _itr=None, _depends_on_deps={})
        d["shapedirs"] = Select(
            a=base,
            idxs=_py2(idxs),
            preferred_shape=(778, 3, 10),
            _dirty_vars={"a", "idxs", "preferred_shape"},
            _itr=None,
            _depends_on_deps={},
        )
        for key in ("posedirs", "J"):  # more arrays as plain Ch objects
            if key in arrays:
                d[key] = Ch(x=_py2(arrays[key]), _dirty_vars=set(), _itr=None, _depends_on_deps={})
        data = pickle.dumps(d, protocol=protocol)
    for new, old in _PY2_NAMES.items():
        data = data.replace(new, old)
    _atomic_write(path, data)
