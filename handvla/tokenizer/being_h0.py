"""Being-H0's released GRVQ-8K motion tokenizer, reproduced exactly: its networks under the release's
parameter names (its state dicts load with ``strict=True``), feature split, normalisation, windows and id
arithmetic. Preset ``being-h0-grvq-8k`` (``handvla.tokenizer.configuration.PRESETS``) holds its numbers.

The release (GitHub BeingBeyond/Being-H, branch being-h0; weights "Being-H0-GRVQ-8K") keeps one network
per part in a folder of its own, ``wrist/`` and ``finger/``, each with:
- a torch pickle (``overfit.pth``, ``net_best_mpjpe.pth`` or ``net_best_mpjpe_labeling.pth``, looked for
  in that order) whose key ``net`` is the state dict, read here with ``torch.load(weights_only=True)``,
  as the release itself does under torch 2.6+ (no pickled code runs);
- ``motion_meta.json``: per-dimension ``mean`` and ``std``; ``meta_mask.json`` (optional here):
  ``meta_mask``, a boolean mask selecting the part's entries of those vectors (null: all);
- ``motion_args.json`` (optional here): the part's architecture as the release's argument names
  (``nb_code``, ``num_quantizers``, ``num_quant_groups``, ``width``, ``depth``, ``down_t``, ...); without it
  the preset's values are taken and the state dict's shapes checked against them.

What is reproduced:
- parts: wrist = wrist rotation + position (9 dims of D162), finger = finger pose + the 20 non-wrist joints
  (150), each in D162's order (the split of ``handvla.hand.features``);
- windows: ``frames_per_block`` (15) frames normalised as ``(x - mean) / (std + 1e-6)``, then
  ``alpha - frames % alpha`` all-zero frames appended (one, the mean in normalised space: 16 frames, 4
  latent steps); decoding multiplies by ``std`` (no epsilon), adds ``mean`` and drops the padding;
- networks per part: 1D conv encoder (two stride-2 stages, pre-activation residual blocks with dilations
  9/3/1), grouped residual VQ (2 groups x 8 layers x 512 codes; at each layer the code nearest to the
  residual in Euclidean distance, computed as the release does), mirrored decoder (nearest upsampling);
- ids: ``code + nb_code * layer + part_base`` (wrist base 0, finger 4096), each part's ids in (group, latent
  step, layer) order: ``handvla.tokenizer.layout.TokenLayout`` with ``id_layout='per_layer'``;
- hands: each side is tokenized in its own MANO frame (left hands are not mirrored, unlike
  ``MotionTokenizer``); the joint block is wrist-centred in camera orientation.

``BeingH0Tokenizer`` has ``MotionTokenizer``'s interface (blocks, sequences and ``HandMotion`` in and out,
``layout``, ``save_pretrained`` / ``from_pretrained``); it is for inference (no training step).
``convert_release`` reads the release's two folders.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from handvla.atomic import read_json
from handvla.errors import CheckpointError, ConfigError, InputError, MissingResourceError
from handvla.hand.features import motion_to_features
from handvla.hand.motion import HandMotion
from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
from handvla.tokenizer.layout import token_layout
from handvla.tokenizer.modeling import MotionTokenizer, MotionTokens, fill_invalid

BEING_H0_PRESET = "being-h0-grvq-8k"
BEING_H0_MODEL_TYPE = "being-h0-grvq-motion-tokenizer"
#: added to the std when normalising (not when denormalising), as the release does
NORM_EPS = 1e-6
#: the release's part folders, in id order (wrist ids first)
PART_FOLDERS = ("wrist", "finger")
#: checkpoint names the release's loader looks for in a part folder, in its order
CHECKPOINT_NAMES = ("overfit.pth", "net_best_mpjpe.pth", "net_best_mpjpe_labeling.pth")
META_NAME = "motion_meta.json"
MASK_NAME = "meta_mask.json"
ARGS_NAME = "motion_args.json"
#: the release's argument defaults (its MotionArguments) for the fields that shape a part's network;
#: a motion_args.json overrides them, as the release's loader does
RELEASE_ARG_DEFAULTS: dict[str, Any] = {
    "motion_feat": "smpl263",
    "use_part": None,
    "quantizer_name": None,
    "nb_code": 512,
    "code_dim": 512,
    "output_emb_width": 512,
    "width": 512,
    "depth": 3,
    "down_t": 2,
    "stride_t": 2,
    "dilation_growth_rate": 3,
    "activate": "relu",
    "norm": None,
    "num_conv_layers": 1,
    "num_quantizers": 8,
    "num_quant_groups": 2,
    "shared_codebook": False,
    "window_size": 64,
}
#: the release's quantizer this layout describes: grouped residual VQ, the one its motion adapter encodes
#: and decodes with per-layer id ranges (its 'part_group_residualvq' model has no encode path)
GROUPED_QUANTIZER = "group_residualvq"
#: the config fields a part's motion_args.json determines (besides its window length)
ARCHITECTURE_FIELDS = (
    "features",
    "codebook_size",
    "code_dim",
    "width",
    "res_depth",
    "alpha",
    "dilation_growth",
    "activation",
    "conv_layers",
    "residual_layers",
    "groups",
)


class BeingH0TokenizerConfig(TokenizerConfig):
    """The release's tokenizer: ``TokenizerConfig`` fields (unset ones from the ``being-h0-grvq-8k``
    preset) plus the two architecture choices the release makes configurable and handvla's own tokenizer
    does not. Saved as ``config.json`` beside the converted weights."""

    model_type: Literal[BEING_H0_MODEL_TYPE] = BEING_H0_MODEL_TYPE  # type: ignore[assignment]
    activation: Literal["relu", "silu", "gelu"] = Field(
        "relu", description="activation inside the residual blocks (the release's 'activate')"
    )
    conv_layers: int = Field(
        1,
        ge=1,
        description="3-tap convs at the encoder's input and decoder's first stage (the release's "
        "'num_conv_layers')",
    )

    @model_validator(mode="before")
    @classmethod
    def _release_defaults(cls, d: Any) -> Any:
        return {**PRESETS[BEING_H0_PRESET], **d} if isinstance(d, dict) else d

    @model_validator(mode="after")
    def _release_layout(self) -> BeingH0TokenizerConfig:
        fixed = {
            "part_level": True,
            "id_layout": "per_layer",
            "token_order": "group_time_layer",
            "linear_skip": False,
            "encode_beam": 1,  # the release encodes greedily; its VLA was trained on those ids
        }
        for name, value in fixed.items():
            if getattr(self, name) != value:
                raise ConfigError(
                    f"Being-H0 tokenizer config: field '{name}': expected {value!r} (the release's), "
                    f"got {getattr(self, name)!r}"
                )
        return self

    @property
    def window_frames(self) -> int:
        """Frames the networks see per block: the release always pads, with ``alpha - frames % alpha``
        frames (16 for 15; a whole extra latent step when the frames are a multiple of alpha)."""
        F_ = self.frames_per_block
        return F_ + self.alpha - F_ % self.alpha


# ---------------------------------------------------------------------------------------------------------
# The release's networks, under its module names
# ---------------------------------------------------------------------------------------------------------


class _Swish(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU, "silu": _Swish, "gelu": nn.GELU}[name]()


class _ResBlock(nn.Module):
    """x + conv1x1(act(dilated conv3(act(x)))) (the release's block without normalisation layers)."""

    def __init__(self, width: int, dilation: int, activation: str):
        super().__init__()
        self.act1, self.act2 = _activation(activation), _activation(activation)
        self.conv1 = nn.Conv1d(width, width, 3, 1, dilation, dilation)
        self.conv2 = nn.Conv1d(width, width, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.act2(self.conv1(self.act1(x))))


class _ResStack(nn.Module):
    def __init__(self, width: int, dilations: tuple[int, ...], activation: str):
        super().__init__()
        self.model = nn.Sequential(*(_ResBlock(width, d, activation) for d in dilations))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _stem(c_in: int, width: int, conv_layers: int) -> list[nn.Module]:
    out: list[nn.Module] = [nn.Conv1d(c_in, width, 3, 1, 1), nn.ReLU()]
    for _ in range(conv_layers - 1):
        out += [nn.Conv1d(width, width, 3, 1, 1), nn.ReLU()]
    return out


class _Encoder(nn.Module):
    """(B, in_dim, W) -> (B, code_dim, W / alpha)."""

    def __init__(self, in_dim: int, config: BeingH0TokenizerConfig):
        super().__init__()
        w, stages = config.width, int(round(math.log2(config.alpha)))
        blocks = _stem(in_dim, w, config.conv_layers)
        for _ in range(stages):
            blocks.append(
                nn.Sequential(nn.Conv1d(w, w, 4, 2, 1), _ResStack(w, config.dilations, config.activation))
            )
        blocks.append(nn.Conv1d(w, config.code_dim, 3, 1, 1))
        self.model = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class _Decoder(nn.Module):
    """(B, code_dim, W / alpha) -> (B, out_dim, W)."""

    def __init__(self, out_dim: int, config: BeingH0TokenizerConfig):
        super().__init__()
        w, stages = config.width, int(round(math.log2(config.alpha)))
        blocks = _stem(config.code_dim, w, config.conv_layers)
        for _ in range(stages):
            blocks.append(
                nn.Sequential(
                    _ResStack(w, config.dilations, config.activation),
                    nn.Upsample(scale_factor=2, mode="nearest"),
                    nn.Conv1d(w, w, 3, 1, 1),
                )
            )
        blocks += [nn.Conv1d(w, w, 3, 1, 1), nn.ReLU(), nn.Conv1d(w, out_dim, 3, 1, 1)]
        self.model = nn.Sequential(*blocks)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.model(z)


class _Codebook(nn.Module):
    """One EMA codebook's buffers, as the release stores them (a leading codebook axis of 1)."""

    def __init__(self, size: int, dim: int):
        super().__init__()
        embed = torch.empty(1, size, dim)
        nn.init.kaiming_uniform_(embed)  # the release's random init (no k-means)
        self.register_buffer("initted", torch.ones(1))
        self.register_buffer("cluster_size", torch.ones(1, size))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("embed", embed)


class _Layer(nn.Module):
    def __init__(self, size: int, dim: int):
        super().__init__()
        self._codebook = _Codebook(size, dim)


class _Residual(nn.Module):
    def __init__(self, layers: int, size: int, dim: int):
        super().__init__()
        self.layers = nn.ModuleList(_Layer(size, dim) for _ in range(layers))

    def codebooks(self) -> torch.Tensor:
        """(layers, size, dim)."""
        return torch.stack([layer._codebook.embed[0] for layer in self.layers])


def release_distances(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """(M, d), (K, d) -> (M, K) Euclidean distances as the release computes them (squared norms plus
    -2 x.c, clamped at 0, square root), so nearest codes tie-break as its own do."""
    x, codes = x[None], codes[None]
    xy = torch.einsum("bid,bjd->bij", x, codes) * -2
    d2 = x.pow(2).sum(-1)[..., None] + codes.pow(2).sum(-1)[:, None] + xy
    return d2.clamp(min=0).sqrt()[0]


class _GroupedResidual(nn.Module):
    """Grouped residual VQ: channels split into groups, each quantised by a residual stack of codebooks."""

    def __init__(self, config: BeingH0TokenizerConfig):
        super().__init__()
        d = config.code_dim // config.groups
        self.rvqs = nn.ModuleList(
            _Residual(config.residual_layers, config.codebook_size, d) for _ in range(config.groups)
        )

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, N, code_dim) -> (B, N, groups, layers) codes."""
        B, N, _ = z.shape
        out = []
        for rvq, zg in zip(self.rvqs, z.float().chunk(len(self.rvqs), dim=-1)):
            residual = zg.reshape(B * N, -1)
            per_layer = []
            for books in rvq.codebooks():
                idx = (-release_distances(residual, books)).argmax(-1)
                residual = residual - books[idx]
                per_layer.append(idx)
            out.append(torch.stack(per_layer, -1).reshape(B, N, -1))
        return torch.stack(out, 2)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, N, groups, layers) codes -> (B, N, code_dim): per group the sum of its layers' codes."""
        groups = []
        for g, rvq in enumerate(self.rvqs):
            books = rvq.codebooks()  # (L, K, d)
            c = codes[:, :, g]  # (B, N, L)
            picked = torch.stack([books[layer][c[..., layer]] for layer in range(books.shape[0])])
            groups.append(picked.sum(0))
        return torch.cat(groups, -1)


class _PartModel(nn.Module):
    def __init__(self, dim: int, config: BeingH0TokenizerConfig):
        super().__init__()
        self.encoder = _Encoder(dim, config)
        self.decoder = _Decoder(dim, config)
        self.quantizer = _GroupedResidual(config)


class PartNetwork(nn.Module):
    """One part's network; its ``state_dict`` is the release's ``net`` of that part (keys ``model.*``)."""

    def __init__(self, dim: int, config: BeingH0TokenizerConfig):
        super().__init__()
        self.model = _PartModel(dim, config)

    def encode_codes(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised, padded windows (B, W, dim) -> (B, latent_steps, groups, layers) codes."""
        z = self.model.encoder(x.transpose(1, 2)).transpose(1, 2)
        return self.model.quantizer.codes(z)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, latent_steps, groups, layers) codes -> normalised windows (B, W, dim)."""
        z = self.model.quantizer.decode_codes(codes)
        return self.model.decoder(z.transpose(1, 2)).transpose(1, 2)


# ---------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------


class BeingH0Tokenizer(MotionTokenizer):
    """The release's tokenizer behind ``MotionTokenizer``'s interface (see the module doc). The networks
    are ``parts[part]`` (``PartNetwork``); ``feature_mean`` / ``feature_std`` hold both parts' statistics
    at their feature positions (the wrist joint of the joint block, in no part, keeps 0 / 1)."""

    config_class = BeingH0TokenizerConfig

    def __init__(self, config: BeingH0TokenizerConfig | None = None):
        nn.Module.__init__(self)  # MotionTokenizer's own networks are not built: these replace them
        config = BeingH0TokenizerConfig() if config is None else config
        if not isinstance(config, BeingH0TokenizerConfig):
            raise ConfigError(
                f"BeingH0Tokenizer: expected a BeingH0TokenizerConfig, got {type(config).__name__}"
            )
        self.config = config
        self.spec = config.spec
        self.layout = token_layout(config)
        D = self.spec.dim
        self.register_buffer("feature_mean", torch.zeros(D))
        self.register_buffer("feature_std", torch.ones(D))
        self.parts = nn.ModuleDict({p: PartNetwork(config.part_dim(p), config) for p in config.parts})
        self._hand_models = {}
        self.eval()

    def set_part_stats(self, part: str, mean: torch.Tensor, std: torch.Tensor) -> None:
        """One part's normalisation statistics (the release's motion_meta.json, masked to the part)."""
        idx = torch.as_tensor(self.spec.part_indices(part))
        with torch.no_grad():
            self.feature_mean[idx] = torch.as_tensor(mean, dtype=torch.float32)
            self.feature_std[idx] = torch.as_tensor(std, dtype=torch.float32)

    def normalize(self, feats: torch.Tensor) -> torch.Tensor:
        return (feats - self.feature_mean) / (self.feature_std + NORM_EPS)

    def _check_window(self, feats: torch.Tensor, where: str) -> torch.Tensor:
        """Blocks (B, frames_per_block, D), or (B, window_frames, D) whose padding frames are ignored."""
        F_, W, D = self.config.frames_per_block, self.config.window_frames, self.spec.dim
        if not isinstance(feats, torch.Tensor):
            feats = torch.as_tensor(np.asarray(feats), dtype=torch.float32)
        if feats.dim() != 3 or feats.shape[1] not in (F_, W) or feats.shape[2] != D:
            raise InputError(
                where,
                "features",
                f"shape (batch, {F_} or {W}, {D}) ({self.spec.name}, one block)",
                str(tuple(feats.shape)),
            )
        if not torch.isfinite(feats[:, :F_]).all():
            raise InputError(where, "features", "finite values", "NaN or inf")
        return feats[:, :F_].float()

    def forward(self, feats: torch.Tensor, quantize: bool = True):
        raise ConfigError(
            "BeingH0Tokenizer: the release's tokenizer is loaded for inference; it has no training step"
        )

    @torch.no_grad()
    def encode_codes(self, feats: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw blocks -> {part: (B, latent_steps, groups, layers) codes}: normalised, zero frames appended."""
        x = self.normalize(self._check_window(feats, "BeingH0Tokenizer.encode"))
        pad = self.config.window_frames - x.shape[1]
        x = torch.cat([x, x.new_zeros(x.shape[0], pad, x.shape[2])], 1)
        return {part: self.parts[part].encode_codes(xp) for part, xp in self._split(x).items()}

    @torch.no_grad()
    def decode(self, ids: Any) -> torch.Tensor:
        """Motion ids (B, tokens_per_block) -> raw features (B, window_frames, D); the last
        window_frames - frames_per_block frames decode the padding."""
        codes = self.layout.unpack(self.layout.validate(ids, "BeingH0Tokenizer.decode"))
        parts = {part: self.parts[part].decode_codes(c) for part, c in codes.items()}
        return self.denormalize(self._merge(parts))

    def motion_features(self, motion: HandMotion) -> torch.Tensor:
        """A motion -> raw features (T, D) in its own side's frame (joints from that side's hand model)."""
        motion = fill_invalid(motion)
        return motion_to_features(self.spec, motion, self.hand_model(motion.side))

    @torch.no_grad()
    def decode_motion(
        self,
        ids: Any,
        side: str | None = None,
        betas: np.ndarray | None = None,
        fps: float | None = None,
        num_frames: int | None = None,
    ) -> HandMotion:
        """Motion ids or ``MotionTokens`` -> ``HandMotion`` of ``side``, read in that side's own frame."""
        if isinstance(ids, MotionTokens):
            side = side or ids.side
        side = side or "right"
        if side not in ("left", "right"):
            raise InputError("decode_motion", "side", "'left' or 'right'", repr(side))
        motion = super().decode_motion(ids, side="right", betas=betas, fps=fps, num_frames=num_frames)
        return replace(motion, side=side)

    def _load_checkpoint_state(self, state: dict[str, torch.Tensor], w_path: Path) -> None:
        _check_tensors(self.state_dict(), state, w_path, "")
        self.load_state_dict(state, strict=True)


def _check_tensors(
    expected: Mapping[str, torch.Tensor], got: Mapping[str, Any], path: Path, field: str
) -> None:
    """Same names, shapes, floating dtypes and finite values, or a one-line CheckpointError naming ``path``,
    ``field`` (where in the file the tensors are) and the first differences."""
    at = f"field '{field}': " if field else ""
    bad = sorted(k for k, v in got.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: {at}expected tensors only, got {[str(k) for k in bad[:3]]}")
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: {at}tensor names differ from the network's: missing {missing[:3]}"
            f"{' ...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}{' ...' if len(unexpected) > 3 else ''}"
        )
    for k, v in expected.items():
        t = got[k]
        name = f"{field}.{k}" if field else k
        if tuple(t.shape) != tuple(v.shape):
            raise CheckpointError(
                f"{path}: field '{name}': expected shape {tuple(v.shape)}, got {tuple(t.shape)}"
            )
        if not t.dtype.is_floating_point:
            raise CheckpointError(f"{path}: field '{name}': expected floating-point values, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: field '{name}': holds NaN or inf")


# ---------------------------------------------------------------------------------------------------------
# Reading the release's folders
# ---------------------------------------------------------------------------------------------------------


def release_folders(src: str | Path) -> dict[str, Path]:
    """``WRIST_DIR+FINGER_DIR`` (the release's own ``+`` form) or a folder holding ``wrist/`` and
    ``finger/`` -> {part: folder}, each checked to exist."""
    text = str(src)
    if "+" in text:
        pieces = [p for p in text.split("+")]
        if len(pieces) != len(PART_FOLDERS) or not all(pieces):
            raise InputError("--src", None, "WRIST_DIR+FINGER_DIR (two folders joined by '+')", repr(text))
        folders = {part: Path(p).expanduser() for part, p in zip(PART_FOLDERS, pieces)}
    else:
        folders = {part: Path(text).expanduser() / part for part in PART_FOLDERS}
    for part, folder in folders.items():
        if not folder.is_dir():
            raise MissingResourceError(
                f"{folder}: the release's '{part}' folder not found (--src WRIST_DIR+FINGER_DIR, or a folder "
                f"holding {' and '.join(p + '/' for p in PART_FOLDERS)})"
            )
    return folders


def _find_checkpoint(folder: Path) -> Path:
    for name in CHECKPOINT_NAMES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.pth"))
    if len(found) == 1:
        return found[0]
    raise MissingResourceError(
        f"{folder}: no checkpoint: expected one of {', '.join(CHECKPOINT_NAMES)} (or a single *.pth), "
        f"found {[p.name for p in found]}"
    )


def read_release_net(path: Path) -> dict[str, torch.Tensor]:
    """The state dict under ``net`` in a release checkpoint, read with ``torch.load(weights_only=True)``:
    a pickle that refers to code is refused (nothing in it runs), in a one-line CheckpointError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on the pickle protocol
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        msg = str(e)
        code = re.search(r"GLOBAL (\S+)", msg)
        if code:
            raise CheckpointError(
                f"{path}: field 'net': expected plain tensors, but the pickle refers to code ({code.group(1)}); "
                "it was not run (read with torch.load(weights_only=True))"
            ) from None
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", msg)
        raise CheckpointError(
            f"{path}: not a weights-only torch checkpoint ({detail.group(1).strip() if detail else 'unpickling failed'})"
        ) from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        ) from None
    if not isinstance(obj, Mapping) or "net" not in obj:
        keys = sorted(map(str, obj)) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path}: field 'net': expected the state dict under key 'net', got {keys}")
    net = obj["net"]
    if not isinstance(net, Mapping):
        raise CheckpointError(f"{path}: field 'net': expected a state dict, got {type(net).__name__}")
    return dict(net)


def _read_args(folder: Path, part: str) -> dict[str, Any] | None:
    """The config fields a part's motion_args.json gives (None without the file)."""
    path = folder / ARGS_NAME
    if not path.is_file():
        return None
    raw = read_json(path, dict, CheckpointError)
    a = {**RELEASE_ARG_DEFAULTS, **{k: v for k, v in raw.items() if k in RELEASE_ARG_DEFAULTS}}

    def need(name: str, ok: bool, expected: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: field '{name}': expected {expected}, got {a[name]!r}")

    def positive(name: str) -> int:
        need(
            name,
            isinstance(a[name], int) and not isinstance(a[name], bool) and a[name] > 0,
            "a positive integer",
        )
        return int(a[name])

    need("use_part", a["use_part"] in (None, part), f"{part!r} (this is the {part} folder)")
    need("quantizer_name", a["quantizer_name"] == GROUPED_QUANTIZER, repr(GROUPED_QUANTIZER))
    need("shared_codebook", a["shared_codebook"] is False, "false (one codebook per residual layer)")
    need("norm", a["norm"] in (None, "None"), "null (no normalisation layers)")
    need("stride_t", a["stride_t"] == 2, "2")
    need("activate", a["activate"] in ("relu", "silu", "gelu"), "'relu', 'silu' or 'gelu'")
    feat = str(a["motion_feat"]).lower()
    features = {"mano51": "D51", "mano99": "D99", "mano109": "D109", "mano114": "D114", "mano162": "D162"}
    need("motion_feat", feat in features, "one of " + ", ".join(features))
    code_dim = positive("code_dim")
    need("output_emb_width", a["output_emb_width"] == code_dim, f"code_dim ({code_dim})")
    return {
        "features": features[feat],
        "codebook_size": positive("nb_code"),
        "code_dim": code_dim,
        "width": positive("width"),
        "res_depth": positive("depth"),
        "alpha": 2 ** positive("down_t"),
        "dilation_growth": positive("dilation_growth_rate"),
        "activation": a["activate"],
        "conv_layers": positive("num_conv_layers"),
        "residual_layers": positive("num_quantizers"),
        "groups": positive("num_quant_groups"),
        "window_size": positive("window_size"),
    }


def _read_stats(folder: Path, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """mean, std (dim,) of a part: motion_meta.json, masked by meta_mask.json's ``meta_mask`` if given."""
    path = folder / META_NAME
    if not path.is_file():
        raise MissingResourceError(f"{path}: missing (the release keeps the part's mean and std there)")
    meta = read_json(path, dict, CheckpointError)
    mask = None
    if (folder / MASK_NAME).is_file():
        mask = read_json(folder / MASK_NAME, dict, CheckpointError).get("meta_mask")
    out = []
    for key in ("mean", "std"):
        try:
            v = torch.as_tensor(np.asarray(meta[key], dtype=np.float64).tolist(), dtype=torch.float32)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"{path}: field '{key}': expected a list of numbers ({type(e).__name__})"
            ) from None
        if v.dim() != 1:
            raise CheckpointError(f"{path}: field '{key}': expected a flat list, got shape {tuple(v.shape)}")
        if mask is not None:
            m = np.asarray(mask)
            if m.dtype != bool or m.shape != tuple(v.shape):
                raise CheckpointError(
                    f"{folder / MASK_NAME}: field 'meta_mask': expected {v.shape[0]} booleans (one per entry of "
                    f"{META_NAME} '{key}'), got {m.dtype} of shape {m.shape}"
                )
            v = v[torch.as_tensor(m)]
        if v.shape[0] != dim or not torch.isfinite(v).all():
            raise CheckpointError(
                f"{path}: field '{key}': expected {dim} finite values for this part, got {v.shape[0]}"
            )
        out.append(v)
    return out[0], out[1]


def convert_release(src: str | Path, fps: float | None = None) -> BeingH0Tokenizer:
    """The release's two part folders (``release_folders``) -> a ``BeingH0Tokenizer`` holding their weights
    exactly (strict load) and their statistics. ``fps``: the motion rate (default the preset's 15; the
    release's files do not record it). Errors are one line naming the file and the field."""
    folders = release_folders(src)
    base = BeingH0TokenizerConfig()
    fps = base.fps if fps is None else float(fps)
    fields: dict[str, Any] | None = None
    first = None
    for part, folder in folders.items():
        got = _read_args(folder, part)
        if got is None:  # the preset's architecture; the state dict's shapes are checked against it
            got = {k: getattr(base, k) for k in ARCHITECTURE_FIELDS}
            got["window_size"] = base.frames_per_block
        if fields is None:
            fields, first = got, folder / ARGS_NAME
            continue
        for k, v in got.items():
            if fields[k] != v:
                raise CheckpointError(
                    f"{folder / ARGS_NAME}: field '{k}': expected {fields[k]!r} as in {first} (both parts need "
                    f"one architecture), got {v!r}"
                )
    assert fields is not None
    window = fields.pop("window_size")
    config = BeingH0TokenizerConfig(**fields, fps=fps, seconds_per_block=window / fps)
    tok = BeingH0Tokenizer(config)
    for part, folder in folders.items():
        ckpt = _find_checkpoint(folder)
        net = read_release_net(ckpt)
        _check_tensors(tok.parts[part].state_dict(), net, ckpt, "net")
        tok.parts[part].load_state_dict(net, strict=True)
        tok.set_part_stats(part, *_read_stats(folder, config.part_dim(part)))
    return tok.eval()


__all__ = [
    "BEING_H0_MODEL_TYPE",
    "BEING_H0_PRESET",
    "BeingH0Tokenizer",
    "BeingH0TokenizerConfig",
    "PartNetwork",
    "convert_release",
    "read_release_net",
    "release_distances",
    "release_folders",
]
