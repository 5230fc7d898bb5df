"""Read the licensed MANO pickles without chumpy and without running code from the file.

The official ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl`` are Python-2 pickles (read with ``encoding='latin1'``)
holding numpy arrays, a scipy sparse ``J_regressor`` and a few chumpy objects (``shapedirs`` is a
``chumpy.reordering.Select`` over a ``chumpy.ch.Ch``). chumpy does not import on current Python, and a
plain ``pickle.load`` would run whatever callable a tampered file names. So the file is read by an
unpickler whose ``find_class`` knows an explicit whitelist:

- numpy array / scalar / dtype reconstruction (``_reconstruct``, ``scalar``, ``ndarray``, ``dtype``);
- ``set``, ``frozenset``, ``bytes``, ``bytearray``, and ``_codecs.encode`` restricted to latin-1 (how
  Python 3 writes bytes in protocol 2);
- scipy sparse csc/csr matrices and every ``chumpy.*`` class are mapped to inert placeholders that only
  keep their pickled state; the arrays are pulled out of that state afterwards (``Ch`` -> its ``x``,
  ``Select`` -> ``a.ravel()[idxs].reshape(preferred_shape)``, as chumpy's own ``compute_r`` does);
- ``copyreg._reconstructor`` (protocol 0/1 objects) only for those placeholders.

Any other global raises :class:`UnsafePickleError` naming the file and the global; nothing is called.
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from handvla.errors import HandvlaError, InputError

try:  # numpy >= 2 moved the reconstruction helpers; the old path still pickles under numpy.core
    from numpy._core.multiarray import _reconstruct as _np_reconstruct
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct as _np_reconstruct
    from numpy.core.multiarray import scalar as _np_scalar


class UnsafePickleError(InputError):
    """A pickle names a global outside the whitelist (it could run code); nothing from it was executed."""


class _Placeholder:
    """An inert stand-in for a class we refuse to import: it only remembers its pickled state."""

    source_class: str = ""

    def __new__(cls, *args: Any, **kwargs: Any) -> _Placeholder:
        obj = object.__new__(cls)
        obj.args = args  # constructor arguments, if the pickle passed any (chumpy objects pass none)
        obj.state = {}
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"__state__": state}

    def __repr__(self) -> str:
        return f"<placeholder for {self.source_class}>"


class ChumpyPlaceholder(_Placeholder):
    """Stands in for any ``chumpy.*`` class."""


class SparsePlaceholder(_Placeholder):
    """Stands in for a scipy sparse matrix class; turned back into a real matrix by ``to_plain``."""


_PLACEHOLDER_CACHE: dict[tuple[type, str], type] = {}


def _placeholder_class(base: type, full_name: str) -> type:
    key = (base, full_name)
    if key not in _PLACEHOLDER_CACHE:
        short = full_name.rsplit(".", 1)[-1]
        _PLACEHOLDER_CACHE[key] = type(short, (base,), {"source_class": full_name})
    return _PLACEHOLDER_CACHE[key]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 pickles ``bytes`` in protocol < 3 as ``_codecs.encode(str, 'latin1')``; allow only that."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591") or not isinstance(
        text, str
    ):
        raise UnsafePickleError(None, None, "_codecs.encode(str, 'latin1') only", f"encoding {encoding!r}")
    return text.encode("latin1")


def _safe_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    """``copyreg._reconstructor`` for placeholders only (protocol 0/1 pickles of plain objects)."""
    if base is not object or not (isinstance(cls, type) and issubclass(cls, _Placeholder)):
        raise UnsafePickleError(
            None,
            None,
            "copyreg._reconstructor(<chumpy or sparse class>, object, None)",
            f"({cls!r}, {base!r})",
        )
    return cls.__new__(cls)


_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}

_ALLOWED: dict[tuple[str, str], Callable[..., Any] | type] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytes"): bytes,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "object"): object,  # only ever useful as the ``base`` argument of _reconstructor
    ("_codecs", "encode"): _latin1_encode,
    ("copyreg", "_reconstructor"): _safe_reconstructor,
}
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _ALLOWED[(_mod, "_reconstruct")] = _np_reconstruct
    _ALLOWED[(_mod, "scalar")] = _np_scalar

_SPARSE_MODULES = (
    "scipy.sparse",
    "scipy.sparse.csc",
    "scipy.sparse.csr",
    "scipy.sparse._csc",
    "scipy.sparse._csr",
)
_SPARSE_NAMES = ("csc_matrix", "csr_matrix", "csc_array", "csr_array")


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only whitelisted globals (see the module docstring)."""

    def __init__(self, file: Any, where: str | Path):
        super().__init__(file, encoding="latin1")
        self.where = where

    def find_class(self, module: str, name: str) -> Any:
        module = _MODULE_ALIASES.get(module, module)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "chumpy" or module.startswith("chumpy."):
            if name.isidentifier():
                return _placeholder_class(ChumpyPlaceholder, f"{module}.{name}")
        if module in _SPARSE_MODULES and name in _SPARSE_NAMES:
            return _placeholder_class(SparsePlaceholder, f"{module}.{name}")
        raise UnsafePickleError(
            self.where,
            None,
            "only numpy arrays, scipy sparse matrices and chumpy arrays (the global refused; nothing was run)",
            f"the global {module}.{name}",
        )

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(self.where, None, "no persistent ids in a data pickle", repr(pid)[:80])


def restricted_load(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`. Placeholders stay in the result.

    Raises :class:`UnsafePickleError` for a refused global and :class:`InputError` for anything unreadable
    (truncated, not a pickle). The caller checks that the file exists.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), path).load()
    except UnsafePickleError as e:
        if e.where is None:  # raised inside a whitelisted helper, which does not know the file
            raise UnsafePickleError(path, e.field, e.expected, e.got) from None
        raise
    except HandvlaError:
        raise
    except Exception as e:  # any failure of a corrupted stream: EOFError, UnpicklingError, ValueError, ...
        raise InputError(
            path, None, "a readable pickle (Python-2 MANO format, protocol 0-2)", f"{type(e).__name__}: {e}"
        ) from e


_MAX_DEPTH = 32


def chumpy_to_array(node: Any, where: str | Path, field: str, depth: int = 0) -> np.ndarray:
    """Evaluate the chumpy expression kinds found in SMPL-family pickles on their pickled state."""
    if not isinstance(node, ChumpyPlaceholder):
        return np.asarray(node)
    if depth > _MAX_DEPTH:
        raise InputError(where, field, f"a chumpy expression at most {_MAX_DEPTH} levels deep")
    kind, st = node.source_class, node.state

    def sub(key: str) -> np.ndarray:
        if key not in st:
            raise InputError(where, field, f"a {kind} with '{key}' in its state", f"keys {sorted(st)}")
        return chumpy_to_array(st[key], where, field, depth + 1)

    short = kind.rsplit(".", 1)[-1]
    if short == "Ch":
        return sub("x")
    if short == "Select":  # chumpy: a.r.ravel()[idxs], reshaped to preferred_shape when present
        out = sub("a").ravel()[np.asarray(st.get("idxs"), dtype=np.int64)]
        if st.get("preferred_shape") is not None:
            out = out.reshape(tuple(st["preferred_shape"]))
        return out
    if short == "Reshape":
        return sub("a").reshape(tuple(np.atleast_1d(st["newshape"])))
    if short == "transpose":
        axes = st.get("axes")
        return np.transpose(sub("a"), None if axes is None else tuple(axes))
    raise InputError(where, field, "a chumpy Ch, Select, Reshape or transpose (the kinds MANO uses)", kind)


def sparse_to_matrix(node: SparsePlaceholder, where: str | Path, field: str) -> sp.csc_matrix:
    """Rebuild a csc/csr matrix from its pickled attribute dict (``data``, ``indices``, ``indptr``, shape)."""
    st = node.state
    shape = st.get("_shape", st.get("shape"))
    missing = [k for k in ("data", "indices", "indptr") if k not in st]
    if missing or shape is None:
        raise InputError(
            where, field, "a sparse matrix with data, indices, indptr and _shape", f"keys {sorted(st)}"
        )
    parts = (np.asarray(st["data"]), np.asarray(st["indices"]), np.asarray(st["indptr"]))
    try:
        if "csr" in node.source_class:
            return sp.csr_matrix(parts, shape=tuple(shape)).tocsc()
        return sp.csc_matrix(parts, shape=tuple(shape))
    except ValueError as e:
        raise InputError(where, field, "a consistent sparse matrix", str(e)) from e


def to_plain(value: Any, where: str | Path, field: str) -> Any:
    """A chumpy placeholder -> ndarray, a sparse placeholder -> scipy csc matrix, anything else unchanged."""
    if isinstance(value, ChumpyPlaceholder):
        return chumpy_to_array(value, where, field)
    if isinstance(value, SparsePlaceholder):
        return sparse_to_matrix(value, where, field)
    return value
