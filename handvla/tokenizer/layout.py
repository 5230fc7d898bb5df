"""How motion codes become motion ids: the one definition of the id layout (`TokenLayout`).

The motion tokenizer encodes one block per hand per ``seconds_per_block`` seconds; the VLA's motion vocabulary,
its constrained decoder, its per-layer loss weights and the released checkpoints' token arithmetic all read
the same `TokenLayout`. The VLA stores it in its config (``HandVLAConfig.motion_token_layout``) so a model can
be used without its tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from handvla.errors import ConfigError, InputError

if TYPE_CHECKING:  # the config module reads this one's ID_LAYOUTS / TOKEN_ORDERS to validate itself
    from handvla.tokenizer.configuration import TokenizerConfig

#: orders of the ids inside one part's block: the axes from slowest- to fastest-varying
TOKEN_ORDERS: dict[str, tuple[str, str, str]] = {
    # the reference release: group, then latent time step, then residual layer
    "group_time_layer": ("group", "time", "layer"),
    # coarse first: every code of residual layer 0 (all groups and time steps), then layer 1, ...
    "layer_group_time": ("layer", "group", "time"),
}
#: motion-id layouts: 'per_part' = one id range per part (codes of every layer share it); 'per_layer' =
#: one id range per (part, residual layer), the reference release's arithmetic
ID_LAYOUTS = ("per_part", "per_layer")
#: axes of a block's end-point ids (``end_point_bins`` > 0): one id per axis, before the parts' ids
END_POINT_AXES = 3


@dataclass(frozen=True)
class TokenLayout:
    """Motion ids of one block (one hand, ``seconds_per_block`` seconds).

    A block holds each part's ``groups x latent_steps x layers`` codes in ``order`` (`TOKEN_ORDERS`; the
    reference's 'group_time_layer' puts position ``g * latent_steps * layers + t * layers + l`` at code
    (group g, latent step t, residual layer l)). Ids: with ``id_layout = 'per_part'`` a code of part p is
    ``code + p * codebook_size``; with 'per_layer' (the reference release) it is
    ``code + codebook_size * layer + part_base`` with ``part_base = p * codebook_size * layers``, so the id
    itself says its part and residual layer.

    ``end_point_bins`` > 0 (not the reference: 0): each block starts with `END_POINT_AXES` ids that say where
    the block's wrist ends, one per axis and bin (axis a, bin k -> ``parts_vocab + a * end_point_bins + k``,
    after every part's ids); the tokenizer decodes the motion so that each block ends there
    (``TokenizerConfig.end_point_space``). They count as residual layer 0 (the coarsest).
    """

    parts: tuple[str, ...]
    groups: int
    latent_steps: int
    layers: int
    codebook_size: int
    id_layout: str = "per_part"
    order: str = "group_time_layer"
    end_point_bins: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.end_point_bins, bool) or not isinstance(self.end_point_bins, int) or self.end_point_bins < 0:
            raise ConfigError(f"token layout: end_point_bins must be a whole number >= 0, got {self.end_point_bins!r}")
        if self.id_layout not in ID_LAYOUTS:
            raise ConfigError(f"token layout: id_layout must be one of {ID_LAYOUTS}, got {self.id_layout!r}")
        if self.order not in TOKEN_ORDERS:
            raise ConfigError(f"token layout: order must be one of {tuple(TOKEN_ORDERS)}, got {self.order!r}")

    @property
    def tokens_per_part(self) -> int:
        return self.groups * self.latent_steps * self.layers

    @property
    def end_point_tokens(self) -> int:
        """End-point ids at the start of each block (`END_POINT_AXES`, or 0 without end points)."""
        return END_POINT_AXES if self.end_point_bins else 0

    @property
    def tokens_per_block(self) -> int:
        return self.end_point_tokens + len(self.parts) * self.tokens_per_part

    @property
    def ids_per_part(self) -> int:
        """Distinct ids of one part (codebook_size, or codebook_size x layers with per-layer ids)."""
        return self.codebook_size * (self.layers if self.id_layout == "per_layer" else 1)

    @property
    def parts_vocab_size(self) -> int:
        """Distinct ids of the parts' codes (the end-point ids come after them)."""
        return len(self.parts) * self.ids_per_part

    @property
    def vocab_size(self) -> int:
        """Number of distinct motion ids (8192 for the default part-level tokenizer)."""
        return self.parts_vocab_size + END_POINT_AXES * self.end_point_bins

    @property
    def end_point_id_range(self) -> tuple[int, int]:
        """[lo, hi) of the end-point ids (empty without end points)."""
        return self.parts_vocab_size, self.vocab_size

    @property
    def end_point_positions(self) -> slice:
        """Positions of the end-point ids inside a block (the first `end_point_tokens`)."""
        return slice(0, self.end_point_tokens)

    def part_offset(self, part: str) -> int:
        return self.parts.index(part) * self.ids_per_part

    def part_positions(self, part: str) -> slice:
        """Positions of ``part``'s ids inside a block."""
        i = self.parts.index(part)
        first = self.end_point_tokens + i * self.tokens_per_part
        return slice(first, first + self.tokens_per_part)

    def id_range(self, part: str) -> tuple[int, int]:
        """[lo, hi) of ``part``'s ids."""
        lo = self.part_offset(part)
        return lo, lo + self.ids_per_part

    def _axes(self) -> tuple[int, ...]:
        """Permutation of (time, group, layer) code axes 1..3 into this layout's order."""
        where = {"time": 1, "group": 2, "layer": 3}
        return tuple(where[a] for a in TOKEN_ORDERS[self.order])

    def _layer_offsets(self) -> torch.Tensor:
        """(layers,) id offset of each residual layer inside a part (zeros with per-part ids)."""
        step = self.codebook_size if self.id_layout == "per_layer" else 0
        return torch.arange(self.layers, dtype=torch.long) * step

    def position_layers(self) -> np.ndarray:
        """(tokens_per_block,) residual layer of the code at each position of a block."""
        grid = torch.arange(self.layers).view(1, 1, 1, -1).expand(1, self.latent_steps, self.groups, -1)
        one = grid.permute(0, *self._axes()).reshape(-1).numpy()
        return np.concatenate([np.zeros(self.end_point_tokens), np.tile(one, len(self.parts))]).astype(np.int64)

    def position_id_ranges(self) -> np.ndarray:
        """(tokens_per_block, 2) legal [lo, hi) id range at each position of a block."""
        out = np.zeros((self.tokens_per_block, 2), np.int64)
        layers = self.position_layers()
        for part in self.parts:
            sl = self.part_positions(part)
            lo, hi = self.id_range(part)
            if self.id_layout == "per_layer":
                lo_l = lo + layers[sl] * self.codebook_size
                out[sl, 0], out[sl, 1] = lo_l, lo_l + self.codebook_size
            else:
                out[sl, 0], out[sl, 1] = lo, hi
        for a in range(self.end_point_tokens):
            out[a] = self.parts_vocab_size + a * self.end_point_bins, self.parts_vocab_size + (a + 1) * self.end_point_bins
        return out

    # ----- the flat view the VLA uses ------------------------------------------------------------------

    @property
    def first_part_id_range(self) -> tuple[int, int]:
        """[lo, hi) of the first part's ids (the wrist's in a part-level layout, every id in a single-part one)."""
        return self.id_range(self.parts[0])

    @property
    def finger_id_range(self) -> tuple[int, int]:
        """[lo, hi) of the finger ids; empty (``(vocab_size, vocab_size)``) without a finger part."""
        return self.id_range("finger") if "finger" in self.parts else (self.vocab_size, self.vocab_size)

    def same_ids(self, other: TokenLayout) -> bool:
        """Same parts, and the same legal ids at every position of a block (two layouts may differ only in
        how a per-part block factors into groups, time steps and layers, which its ids do not show)."""
        return (
            self.parts == other.parts
            and self.end_point_bins == other.end_point_bins
            and self.vocab_size == other.vocab_size
            and np.array_equal(self.position_id_ranges(), other.position_id_ranges())
        )

    @property
    def ids_say_layer(self) -> bool:
        """True when an id tells its residual layer (``id_layout = 'per_layer'``)."""
        return self.id_layout == "per_layer"

    def id_kinds(self, ids: Any) -> tuple[np.ndarray, np.ndarray]:
        """(part index, residual layer) of motion ids; layer -1 where ids do not say it (per-part ids). End-point
        ids are part ``len(parts)`` ('end_point' in the VLA's metrics), layer 0."""
        ids = np.asarray(ids, np.int64)
        end = ids >= self.parts_vocab_size
        part = np.minimum(ids // self.ids_per_part, len(self.parts) - 1)
        if not self.ids_say_layer:
            return np.where(end, len(self.parts), part), np.where(end, 0, np.full_like(ids, -1))
        layer = (ids - part * self.ids_per_part) // self.codebook_size
        return np.where(end, len(self.parts), part), np.where(end, 0, layer)

    def check_layer_weights(self, weights: Any, where: str) -> list[float]:
        """``weights`` as one float >= 0 per residual layer, or a one-line ConfigError naming ``where``: the
        ids must say their layer (a tokenizer with ``id_layout: per_layer``)."""
        if not self.ids_say_layer:
            raise ConfigError(
                f"{where}: the motion tokenizer's ids do not say their residual layer (train it with "
                "id_layout: per_layer)"
            )
        w = [float(x) for x in weights]
        if len(w) != self.layers or any((not math.isfinite(x)) or x < 0 for x in w):
            raise ConfigError(
                f"{where}: expected {self.layers} weights >= 0 (one per residual layer), got {list(weights)}"
            )
        return w

    # ----- serialisation -------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["parts"] = list(self.parts)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "motion token layout") -> TokenLayout:
        fields = ("parts", "groups", "latent_steps", "layers", "codebook_size", "id_layout", "order", "end_point_bins")
        missing = [k for k in fields[:5] if k not in d]
        unknown = sorted(set(d) - set(fields))
        if missing or unknown:
            raise ConfigError(f"{where}: expected keys {list(fields)}, missing {missing}, unknown {unknown}")
        for k in fields[1:5]:
            if not isinstance(d[k], int) or isinstance(d[k], bool) or d[k] <= 0:
                raise ConfigError(f"{where}.{k}: expected a positive integer, got {d[k]!r}")
        parts = tuple(str(p) for p in d["parts"])
        if not parts or len(set(parts)) != len(parts):
            raise ConfigError(f"{where}.parts: expected distinct part names, got {list(d['parts'])}")
        return cls(parts, *(int(d[k]) for k in fields[1:5]), **{k: d[k] for k in fields[5:] if k in d})

    @classmethod
    def from_flat_fields(
        cls,
        num_motion_ids: int,
        ids_per_block: int,
        wrist_ids_per_block: int,
        finger_ids_per_block: int,
        num_wrist_motion_ids: int,
        codes_per_layer: int = 0,
        position_layers: list[int] | None = None,
        where: str = "motion layout",
    ) -> TokenLayout:
        """The layout of a config written before VLA configs stored the token layout (flat fields: id counts
        per block and part, optional per-layer ids and each position's residual layer). The group / latent
        step factorisation is recovered from ``position_layers`` when given; otherwise the block is taken as
        one group of single-layer codes (the ids are the same either way)."""
        if wrist_ids_per_block + finger_ids_per_block != ids_per_block or wrist_ids_per_block <= 0:
            raise ConfigError(
                f"{where}: expected wrist_ids_per_block + finger_ids_per_block == ids_per_block, got "
                f"{wrist_ids_per_block} + {finger_ids_per_block} != {ids_per_block}"
            )
        parts: tuple[str, ...] = ("wrist", "finger") if finger_ids_per_block else ("hand",)
        uneven = finger_ids_per_block != wrist_ids_per_block or 2 * num_wrist_motion_ids != num_motion_ids
        if finger_ids_per_block and uneven:
            raise ConfigError(
                f"{where}: a part-level layout needs equal wrist and finger blocks and id ranges, got "
                f"{wrist_ids_per_block}/{finger_ids_per_block} ids per block, {num_wrist_motion_ids} of {num_motion_ids} ids"
            )
        per_part_ids = num_motion_ids // len(parts)
        if position_layers:
            layers = max(position_layers) + 1
            if wrist_ids_per_block % layers == 0:
                rest = wrist_ids_per_block // layers
                for order in TOKEN_ORDERS:
                    for groups in (g for g in range(1, rest + 1) if rest % g == 0):
                        codebook = codes_per_layer or per_part_ids
                        cand = cls(parts, groups, rest // groups, layers, codebook,
                                   "per_layer" if codes_per_layer else "per_part", order)
                        same = np.array_equal(cand.position_layers(), np.asarray(position_layers))
                        if same and cand.vocab_size == num_motion_ids:
                            return cand
            raise ConfigError(f"{where}: position_layers {list(position_layers)} match no group/time/layer order")
        if codes_per_layer:
            raise ConfigError(f"{where}: per-layer ids (codes_per_layer={codes_per_layer}) need position_layers")
        return cls(parts, 1, wrist_ids_per_block, 1, per_part_ids)


    def pack(self, codes: dict[str, torch.Tensor], end_point_bins: torch.Tensor | None = None) -> torch.Tensor:
        """{part: (B, latent_steps, groups, layers) codes in [0, codebook_size)} -> (B, tokens_per_block).
        With end points, ``end_point_bins`` (B, `END_POINT_AXES`) bins in [0, end_point_bins) come first."""
        out = []
        if self.end_point_bins:
            if end_point_bins is None or tuple(end_point_bins.shape[1:]) != (END_POINT_AXES,):
                raise InputError("TokenLayout.pack", "end_point_bins", f"(B, {END_POINT_AXES}) bins", repr(end_point_bins)[:60])
            axis = torch.arange(END_POINT_AXES, device=end_point_bins.device) * self.end_point_bins
            out.append(end_point_bins.long() + axis + self.parts_vocab_size)
        for part in self.parts:
            c = codes[part]
            B = c.shape[0]
            assert c.shape[1:] == (self.latent_steps, self.groups, self.layers), c.shape
            c = c.long() + self._layer_offsets().to(c.device)
            out.append(c.permute(0, *self._axes()).reshape(B, self.tokens_per_part) + self.part_offset(part))
        return torch.cat(out, 1)

    def position_part(self, pos: int) -> str:
        """The part a block position belongs to ('end point' for the end-point ids)."""
        if pos < self.end_point_tokens:
            return "end point"
        return next(p for p in self.parts if self.part_positions(p).start <= pos < self.part_positions(p).stop)

    def end_point_bins_of(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, tokens_per_block) validated ids -> (B, `END_POINT_AXES`) end-point bins (needs end points)."""
        axis = torch.arange(END_POINT_AXES, device=ids.device) * self.end_point_bins
        return ids[:, self.end_point_positions] - self.parts_vocab_size - axis

    def unpack(self, ids: torch.Tensor) -> dict[str, torch.Tensor]:
        """(B, tokens_per_block) ids -> {part: (B, latent_steps, groups, layers) codes}. Validate first."""
        B = ids.shape[0]
        sizes = {"time": self.latent_steps, "group": self.groups, "layer": self.layers}
        shape = tuple(sizes[a] for a in TOKEN_ORDERS[self.order])
        inverse = tuple(int(i) for i in np.argsort(self._axes()))  # ordered axes -> (time, group, layer)
        out = {}
        for part in self.parts:
            c = ids[:, self.part_positions(part)] - self.part_offset(part)
            c = c.reshape(B, *shape).permute(0, *(1 + i for i in inverse))
            out[part] = c - self._layer_offsets().to(c.device)
        return out

    def validate(self, ids: Any, where: str = "motion ids") -> torch.Tensor:
        """Check dtype, block length and per-part id ranges; return a (B, tokens_per_block) int64 tensor."""
        if isinstance(ids, torch.Tensor):
            t = ids.detach().cpu()
        else:
            try:
                t = torch.as_tensor(np.asarray(ids))
            except (TypeError, ValueError) as e:
                raise InputError(where, "ids", "an integer array", f"{type(ids).__name__} ({e})") from None
        if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
            raise InputError(where, "ids", "integer motion ids", f"dtype {t.dtype}")
        n = self.tokens_per_block
        if t.dim() == 1 and t.numel() % n == 0 and t.numel() > 0:
            t = t.reshape(-1, n)
        if t.dim() != 2 or t.shape[-1] != n or t.shape[0] == 0:
            raise InputError(where, "ids", f"blocks of {n} ids, shape (blocks, {n})", str(tuple(t.shape)))
        t = t.long()
        rng = torch.as_tensor(self.position_id_ranges())
        bad = (t < rng[:, 0]) | (t >= rng[:, 1])
        if bad.any():
            b, pos = (int(v) for v in bad.nonzero()[0])
            part = self.position_part(pos)
            lo, hi = (int(v) for v in rng[pos])
            raise InputError(where, f"ids[{b}, {pos}]", f"a {part} id in [{lo}, {hi})", str(int(t[b, pos])))
        return t


def token_layout(config: TokenizerConfig) -> TokenLayout:
    """The id layout of a tokenizer config (the VLA builds its motion vocabulary from this)."""
    return TokenLayout(
        parts=config.parts,
        groups=config.groups,
        latent_steps=config.latent_steps,
        layers=config.residual_layers,
        codebook_size=config.codebook_size,
        id_layout=config.id_layout,
        order=config.token_order,
        end_point_bins=config.end_point_bins if config.end_point_space != "none" else 0,
    )
