"""The policy's processing: normalisation of robot features, the policy tokens, and the one code path from
an observation (or a training sample) to the model's batch and from its output back to robot units.

Pre-processing (`PolicyProcessor`): the raw state is normalised with the checkpoint's statistics
(`Normalizer.normalize`, the same call the training dataset makes), the camera images are tiled and the
prompt is tokenised by the backbone's ``HandVLAProcessor``; ``collate`` pads samples to a batch. The same
code builds training samples (``handvla.robot.posttrain``) and live observations (``preprocess``, used by
``handvla.policy.modeling.HandVLAPolicy``). Post-processing (``postprocess``): the predicted chunk is
unnormalised with the same statistics.

Policy tokens: ``<PROP_CONTEXT>`` (the state's slot) and ``<ACTION_CHUNK_0..Na-1>`` (the action queries),
added to the text tokenizer as special tokens with contiguous ids (``add_policy_tokens``).

Normalisation of robot features (state, action): the per-feature mode, applied with the feature's
statistics (``handvla.data.lerobot.FeatureStats``: min, max, mean, std, the quantiles ``q01 .. q99`` and
count, from a dataset's meta/stats.json or computed with ``compute_stats``), and how they travel.

Modes (chosen per feature, as in LeRobot's ``NormalizationMode``):
- ``mean_std``:  (x - mean) / std
- ``min_max``:   2 (x - min) / (max - min) - 1          -> [-1, 1] over the data
- ``quantile``:  2 (x - q01) / (q99 - q01) - 1          -> [-1, 1] over the central 98 %, robust to outliers
- ``identity``:  x
A dimension whose scale (std, max - min, q99 - q01) is below ``eps`` (a joint that never moves) is only
shifted, never divided by a tiny number: it normalises to 0 and unnormalises back to its constant.
``unnormalize(normalize(x)) == x`` up to float rounding for every mode.

A ``Normalizer`` is saved beside a checkpoint as two files, so inference unnormalises with exactly the
training statistics: ``normalization.safetensors`` (every statistic as a float64 tensor
``"<feature>/<stat>"``) and ``normalization.json`` (format version, per-feature mode, shape and names,
and the same numbers as lists, for reading). Loading takes the tensors (bit-exact) and checks that the
JSON agrees with them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from tokenizers import AddedToken

from handvla.atomic import atomic_write_bytes, atomic_write_json, read_json
from handvla.data.lerobot import BASE_STATS, QUANTILES, FeatureStats, compute_stats
from handvla.errors import CheckpointError, ConfigError, InputError
from handvla.policy.action_space import ResolvedMap
from handvla.policy.configuration import POLICY_CONFIG_NAME, PolicyConfig
from handvla.vla.processing import IMAGE_PLACEHOLDER

PROP_CONTEXT_TOKEN = "<PROP_CONTEXT>"
NormMode = Literal["mean_std", "min_max", "quantile", "identity"]
MODES: tuple[str, ...] = get_args(NormMode)
NORM_FORMAT_VERSION = 1
SAFETENSORS_NAME = "normalization.safetensors"
JSON_NAME = "normalization.json"
DEFAULT_EPS = 1e-6


# ---------------------------------------------------------------------------------------------------------
# normaliser
# ---------------------------------------------------------------------------------------------------------


def _backend(x):
    """(converter of a float64 numpy array to x's kind, x as a float array or tensor)."""
    if isinstance(x, torch.Tensor):
        dtype = x.dtype if x.is_floating_point() else torch.float32

        def conv(a: np.ndarray):
            return torch.as_tensor(a, dtype=dtype, device=x.device)

        return conv, (x if x.is_floating_point() else x.to(dtype))
    arr = np.asarray(x)
    dtype = arr.dtype if arr.dtype.kind == "f" else np.float32

    def conv_np(a: np.ndarray):
        return a.astype(dtype)

    return conv_np, arr.astype(dtype, copy=False)


@dataclass
class Normalizer:
    """Per-feature statistics and modes; ``normalize`` / ``unnormalize`` numpy arrays or torch tensors whose
    last axis is the feature (any leading batch / time axes)."""

    stats: dict[str, FeatureStats]
    modes: dict[str, str]
    names: dict[str, list[str] | None] = field(default_factory=dict)
    eps: float = DEFAULT_EPS

    def __post_init__(self) -> None:
        for name, mode in self.modes.items():
            if mode not in MODES:
                raise ConfigError(f"normalisation mode of '{name}' must be one of {MODES}, got {mode!r}")
            if name not in self.stats:
                raise ConfigError(f"normalisation mode given for '{name}', which has no statistics")
            q01, q99 = self.stats[name].q01, self.stats[name].q99
            if mode == "quantile" and not (
                q01 is not None and q99 is not None and np.isfinite(q01).all() and np.isfinite(q99).all()
            ):
                raise ConfigError(
                    f"'{name}' uses quantile normalisation but its statistics have no q01/q99 "
                    "(recompute them with handvla.data.lerobot.compute_stats)"
                )
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise ConfigError(f"eps must be a positive number, got {self.eps!r}")
        self._cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_arrays(
        cls,
        arrays: Mapping[str, np.ndarray],
        modes: Mapping[str, str],
        names: Mapping[str, list[str] | None] | None = None,
        max_frames: int | None = None,
    ) -> Normalizer:
        """Compute the statistics of the features named in ``modes`` from ``arrays`` ({name: (N, D)})."""
        missing = [k for k in modes if k not in arrays]
        if missing:
            raise ConfigError(f"no data for feature(s) {missing}; have {sorted(arrays)}")
        stats = compute_stats({k: arrays[k] for k in modes}, max_frames)
        return cls(stats, dict(modes), dict(names or {}))

    # -- the affine map x_norm = (x - center) / scale ----------------------------------------------------
    def _affine(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        if name in self._cache:
            return self._cache[name]
        if name not in self.modes:
            raise InputError(
                "Normalizer", name, f"one of the normalised features {sorted(self.modes)}", "unknown"
            )
        s, mode = self.stats[name], self.modes[name]
        if mode == "mean_std":
            center, scale = s.mean, s.std
        elif mode == "min_max":
            center, scale = (s.max + s.min) / 2, (s.max - s.min) / 2
        elif mode == "quantile":
            center, scale = (s.q99 + s.q01) / 2, (s.q99 - s.q01) / 2
        else:
            center, scale = np.zeros_like(s.mean), np.ones_like(s.mean)
        # why: a constant dimension would be divided by ~0 and blow noise up; shift it only
        scale = np.where(scale < self.eps, 1.0, scale)
        self._cache[name] = (center, scale)
        return center, scale

    def _check(self, name: str, x, center: np.ndarray):
        if tuple(x.shape[-1:]) != center.shape:
            raise InputError(
                "Normalizer", name, f"a last axis of size {center.shape[0]}", f"shape {tuple(x.shape)}"
            )

    def normalize(self, name: str, x):
        center, scale = self._affine(name)
        conv, xf = _backend(x)
        self._check(name, xf, center)
        return (xf - conv(center)) / conv(scale)

    def unnormalize(self, name: str, x):
        center, scale = self._affine(name)
        conv, xf = _backend(x)
        self._check(name, xf, center)
        return xf * conv(scale) + conv(center)

    # -- saving and loading -----------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": NORM_FORMAT_VERSION,
            "eps": self.eps,
            "features": {
                name: {
                    "mode": self.modes.get(name, "identity"),
                    "shape": list(s.shape),
                    "names": self.names.get(name),
                    "stats": s.to_dict(),
                }
                for name, s in self.stats.items()
            },
        }

    def save(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``normalization.safetensors`` and ``normalization.json`` into ``directory`` (atomically)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tensors = {
            f"{name}/{k}": np.ascontiguousarray(a)
            for name, s in self.stats.items()
            for k, a in s.arrays().items()
        }
        tensors |= {f"{name}/count": np.asarray([s.count], np.int64) for name, s in self.stats.items()}
        meta = {"format_version": str(NORM_FORMAT_VERSION), "modes": json.dumps(self.modes, sort_keys=True)}
        st_path, js_path = d / SAFETENSORS_NAME, d / JSON_NAME
        atomic_write_bytes(st_path, st_save(tensors, metadata=meta))
        atomic_write_json(js_path, self.to_json())
        return st_path, js_path

    @classmethod
    def load(cls, directory: str | Path) -> Normalizer:
        """Load what ``save`` wrote; CheckpointError naming the file if it is missing or inconsistent."""
        d = Path(directory)
        st_path, js_path = d / SAFETENSORS_NAME, d / JSON_NAME
        for p in (st_path, js_path):
            if not p.is_file():
                raise CheckpointError(
                    f"{p}: normalisation statistics missing (expected {SAFETENSORS_NAME} and {JSON_NAME})"
                )
        meta = read_json(js_path, dict, CheckpointError)
        if meta.get("format_version") != NORM_FORMAT_VERSION:
            raise CheckpointError(
                f"{js_path}: field 'format_version': expected {NORM_FORMAT_VERSION}, got "
                f"{meta.get('format_version')!r}"
            )
        try:
            tensors = st_load(st_path.read_bytes())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{st_path}: unreadable safetensors file ({e})") from None
        feats = meta.get("features")
        if not isinstance(feats, dict):
            raise CheckpointError(f"{js_path}: field 'features': expected an object")
        stats, modes, names = {}, {}, {}
        for name, f in feats.items():
            try:
                vals = {k: tensors[f"{name}/{k}"] for k in BASE_STATS}
                count = int(tensors[f"{name}/count"][0])
            except KeyError as e:
                raise CheckpointError(
                    f"{st_path}: tensor {e.args[0]!r} missing (listed in {js_path.name})"
                ) from None
            vals |= {k: tensors[f"{name}/{k}"] for k in QUANTILES if f"{name}/{k}" in tensors}
            s = FeatureStats(**vals, count=count)
            if list(s.shape) != list(f.get("shape", [])):
                raise CheckpointError(
                    f"{js_path}: feature '{name}': shape {f.get('shape')} disagrees with {st_path.name} {list(s.shape)}"
                )
            js_mean = np.asarray(f.get("stats", {}).get("mean", []), np.float64)
            if js_mean.shape != s.mean.shape or not np.array_equal(js_mean, s.mean):
                raise CheckpointError(f"{js_path}: feature '{name}': mean disagrees with {st_path.name}")
            stats[name], modes[name], names[name] = s, f.get("mode", "identity"), f.get("names")
        extra = sorted({k.split("/")[0] for k in tensors} - set(feats))
        if extra:
            raise CheckpointError(f"{st_path}: feature(s) {extra} not described in {js_path.name}")
        try:
            return cls(stats, modes, names, eps=float(meta.get("eps", DEFAULT_EPS)))
        except ConfigError as e:
            raise CheckpointError(f"{js_path}: {e}") from None

    @classmethod
    def maybe_load(cls, directory: str | Path) -> Normalizer | None:
        """``load`` if the files are there, else None (a checkpoint trained without normalisation)."""
        d = Path(directory)
        if not (d / SAFETENSORS_NAME).exists() and not (d / JSON_NAME).exists():
            return None
        return cls.load(d)


# ---------------------------------------------------------------------------------------------------------
# policy tokens
# ---------------------------------------------------------------------------------------------------------


def action_chunk_token(i: int) -> str:
    """Vocabulary string of action query ``i``."""
    return f"<ACTION_CHUNK_{i}>"


def add_policy_tokens(tokenizer, chunk_size: int) -> tuple[int, int]:
    """Add ``<PROP_CONTEXT>`` and ``<ACTION_CHUNK_0..Na-1>`` (special, never split) to ``tokenizer`` in place.

    Idempotent; the action tokens must get contiguous ids. Returns (prop token id, id of <ACTION_CHUNK_0>)."""
    wanted = [PROP_CONTEXT_TOKEN] + [action_chunk_token(i) for i in range(chunk_size)]
    vocab = tokenizer.get_vocab()
    missing = [t for t in wanted if t not in vocab]
    if missing:
        tokenizer.add_tokens(
            [AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True
        )
    vocab = tokenizer.get_vocab()
    ids = [int(vocab[action_chunk_token(i)]) for i in range(chunk_size)]
    if ids != list(range(ids[0], ids[0] + chunk_size)):
        raise ConfigError(
            f"tokenizer: the action query tokens <ACTION_CHUNK_0..{chunk_size - 1}> do not have contiguous ids "
            f"({ids[:4]}...)"
        )
    return int(vocab[PROP_CONTEXT_TOKEN]), ids[0]


def check_policy_tokens(tokenizer, cfg: PolicyConfig, where: str) -> None:
    """CheckpointError unless ``tokenizer`` gives the policy tokens the ids ``cfg`` records."""
    vocab = tokenizer.get_vocab()
    got_prop = vocab.get(PROP_CONTEXT_TOKEN)
    got_act = [vocab.get(action_chunk_token(i)) for i in range(cfg.chunk_size)]
    want_act = [cfg.action_token_offset + i for i in range(cfg.chunk_size)]
    if got_prop != cfg.prop_token_id or got_act != want_act:
        raise CheckpointError(
            f"{where}: the tokenizer's policy token ids (<PROP_CONTEXT> = {got_prop}, <ACTION_CHUNK_0> = "
            f"{got_act[0]}) differ from {POLICY_CONFIG_NAME}'s ({cfg.prop_token_id}, {cfg.action_token_offset})"
        )


# ---------------------------------------------------------------------------------------------------------
# pre- and post-processing (one code path for training and inference)
# ---------------------------------------------------------------------------------------------------------


class PolicyProcessor:
    """Builds the policy's token sequence and image tiles: the same code for training samples
    (``handvla.robot.posttrain``) and live observations (``preprocess``); ``postprocess`` takes predicted
    chunks back to robot units.

    ``vla_processor``: the backbone's ``HandVLAProcessor`` (chat template, tiling); ``config``: the
    `PolicyConfig` with its token ids set."""

    def __init__(self, vla_processor, config: PolicyConfig):
        if config.prop_token_id is None or config.action_token_offset is None:
            raise ConfigError(
                "PolicyProcessor: the policy token ids are not set (HandVLAPolicyModel.from_vla)"
            )
        self.vla = vla_processor
        self.config = config
        self.tokenizer = vla_processor.tokenizer
        self.pad_id = int(vla_processor.vocab.pad_id)
        self.answer = "".join(action_chunk_token(i) for i in range(config.chunk_size))
        self._ids_cache: dict[tuple, torch.Tensor] = {}
        self.unified = config.unified_map()  # None: the model works in the robot's own state/action space

    def prompt(self, task: str | None) -> str:
        """The user turn for ``task`` (default: the config's ``default_task``)."""
        # why here: importing handvla.vla loads transformers (seconds); the policy package (its Normalizer,
        # its config) loads without it, and only building a prompt needs it

        task = (task if task is not None else self.config.default_task).strip().rstrip(".")
        n = len(self.config.image_keys)
        images = f"In {' and '.join([IMAGE_PLACEHOLDER] * n)}, " if n else ""
        try:
            text = self.config.prompt_template.format(
                images=images, task=task, state=PROP_CONTEXT_TOKEN, chunk_size=self.config.chunk_size
            )
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(
                f"prompt_template {self.config.prompt_template!r}: expected only the fields {{images}}, {{task}}, "
                f"{{state}}, {{chunk_size}} ({type(e).__name__}: {e})"
            ) from None
        if text.count(PROP_CONTEXT_TOKEN) != 1 or text.count(IMAGE_PLACEHOLDER) != n:
            raise ConfigError(
                f"prompt_template {self.config.prompt_template!r}: must place {{state}} once and {{images}} once "
                f"(the text then holds {PROP_CONTEXT_TOKEN} once and {n} '{IMAGE_PLACEHOLDER}')"
            )
        return text

    def encode(
        self,
        task: str | None,
        images: Sequence[np.ndarray],
        state: np.ndarray | torch.Tensor,
        unified: ResolvedMap | None = None,
    ) -> dict[str, torch.Tensor]:
        """One sample: ``input_ids`` (L,) int64, ``pixel_values`` (tiles, 3, S, S) float32 (absent without
        cameras), ``state`` (state_dim,) float32 (already normalised; with an embodiment map, placed in the
        unified space). ``unified``: another embodiment's map (a training dataset of another robot), whose
        state has its own size."""
        cfg = self.config
        if len(images) != len(cfg.image_keys):
            raise InputError(
                "policy observation", "images", f"{len(cfg.image_keys)} camera image(s)", str(len(images))
            )
        state_t = torch.as_tensor(
            np.asarray(state, np.float32) if not isinstance(state, torch.Tensor) else state
        )
        state_t = state_t.to(torch.float32).reshape(-1)
        if unified is not None:
            state_t = unified.state_to_unified(state_t)
        elif state_t.numel() != cfg.state_dim:
            raise InputError("policy observation", "state", f"{cfg.state_dim} values", str(state_t.numel()))
        elif self.unified is not None:
            state_t = self.unified.state_to_unified(state_t)
        imgs = [np.asarray(im.numpy() if isinstance(im, torch.Tensor) else im) for im in images]
        tiles = [self.vla.tile_image(im) for im in imgs]  # each (tiles, 3, S, S)
        # why: the token ids only depend on the task and the tile counts; tokenising the chat template
        # again for every frame would cost more than the model's forward pass on small models
        key = (task, tuple(t.shape[0] for t in tiles))
        ids = self._ids_cache.get(key)
        if ids is None:
            ids = self.vla.encode(self.prompt(task), self.answer, images=imgs).input_ids
            if len(self._ids_cache) < 4096:
                self._ids_cache[key] = ids
        out = {"input_ids": ids.clone(), "state": state_t}
        if tiles:
            out["pixel_values"] = torch.cat(tiles, 0)
        return out

    def collate(self, samples: Sequence[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Right-pad to a batch. ``input_ids`` comes first (the trainer counts samples by the first value):
        input_ids / attention_mask (B, L), state (B, Ds), pixel_values (all tiles), and when the samples
        carry them actions (B, Na, A) and action_mask (B, Na)."""
        if not samples:
            raise InputError("collate", "samples", "at least one sample", "none")
        B, L = len(samples), max(len(s["input_ids"]) for s in samples)
        ids = torch.full((B, L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((B, L), dtype=torch.long)
        for b, s in enumerate(samples):
            n = len(s["input_ids"])
            ids[b, :n] = s["input_ids"]
            mask[b, :n] = 1
        out = {"input_ids": ids, "attention_mask": mask, "state": torch.stack([s["state"] for s in samples])}
        pix = [s["pixel_values"] for s in samples if "pixel_values" in s]
        if pix:
            out["pixel_values"] = torch.cat(pix, 0)
        if "actions" in samples[0]:
            out["actions"] = torch.stack([s["actions"] for s in samples])
            out["action_mask"] = torch.stack([s["action_mask"] for s in samples])
        return out

    def preprocess(
        self, observation: dict[str, Any], normalizer: Normalizer, task: str | None = None
    ) -> dict[str, torch.Tensor]:
        """One observation -> the model's batch of one (`observation_sample`, collated)."""
        return self.collate([self.observation_sample(observation, normalizer, task)])

    def observation_sample(
        self, observation: dict[str, Any], normalizer: Normalizer, task: str | None = None
    ) -> dict[str, torch.Tensor]:
        """One observation in robot units (``state``, a uint8 (H, W, 3) image per camera name of
        ``config.observation_names``, optionally ``task``) -> one sample in the training sample layout
        (`encode`). The state is normalised with ``normalizer``; the instruction is ``observation["task"]``
        when it is a string, else ``task``."""
        c = self.config
        if not isinstance(observation, dict) or "state" not in observation:
            raise InputError("observation", "state", f"a map with 'state' ({c.state_dim} floats)", "missing")
        state = np.asarray(observation["state"], np.float32).reshape(-1)
        if state.shape != (c.state_dim,):
            raise InputError(
                "observation", "state", f"{c.state_dim} values", str(np.shape(observation["state"]))
            )
        state_n = normalizer.normalize(c.state_key, state)  # (Ds,) float32, the training statistics
        images = []
        for name in c.observation_names:
            if name not in observation:
                raise InputError("observation", name, "a uint8 (H, W, 3) camera image", "missing")
            img = np.asarray(observation[name])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise InputError("observation", name, "a uint8 (H, W, 3) image", f"{img.dtype} {img.shape}")
            images.append(img)
        obs_task = observation.get("task")
        return self.encode(obs_task if isinstance(obs_task, str) else task, images, state_n)

    def actions_to_model(self, actions, mask=None, unified: ResolvedMap | None = None):
        """Normalised robot actions (..., action_dim) -> what the model predicts: the same, or with an
        embodiment map the unified (..., 200) vector. With ``mask`` (..., ) (False: padded chunk step),
        also the loss mask: (...,) unchanged, or (..., 200) = step mask x the embodiment's action slots.
        ``unified``: another embodiment's map (see `encode`)."""
        um = unified if unified is not None else self.unified
        if um is None:
            return actions if mask is None else (actions, mask)
        out = um.action_to_unified(actions)
        if mask is None:
            return out
        slots = um.action_mask()
        if isinstance(mask, torch.Tensor):
            return out, mask[..., None] & torch.from_numpy(slots).to(mask.device)
        return out, np.asarray(mask)[..., None] & slots

    def postprocess(self, actions: np.ndarray | torch.Tensor, normalizer: Normalizer) -> np.ndarray:
        """A predicted chunk (..., model action size) in normalised units -> float32 actions in robot units
        (with an embodiment map, the robot's dimensions are read out of the unified vector first)."""
        if isinstance(actions, torch.Tensor):
            actions = actions.float().cpu().numpy()
        if self.unified is not None:
            actions = self.unified.action_from_unified(actions)
        return np.asarray(normalizer.unnormalize(self.config.action_key, actions), np.float32)


__all__ = [
    "MODES",
    "PROP_CONTEXT_TOKEN",
    "NormMode",
    "Normalizer",
    "PolicyProcessor",
    "action_chunk_token",
    "add_policy_tokens",
    "check_policy_tokens",
]
