"""Configuration of the part-level GRQ-VAE motion tokenizer (model) and of its training run.

``TokenizerConfig`` describes the model and travels with the weights as ``config.json``; ``TrainConfig``
describes one training run and is stored in the run's checkpoint. Both are plain dataclasses that check
themselves (``ConfigError`` naming the field) and load from JSON or YAML, flat or in ``model:`` /
``train:`` sections.

The defaults reproduce the Being-H0 tokenizer ("GRVQ-8K"): D162 features at 15 fps, one block per
hand-second = 15 frames padded to 16, two stride-2 stages (alpha = 4), width 512, code dim 512, residual
1D conv blocks of depth 3 (dilations 9/3/1), 2 groups x 8 residual layers x 4096 codes per part, hence
128 motion ids per hand-second and 8192 ids in all (see ``handvla.tokenizer.modeling.token_layout``).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from handvla.errors import ConfigError, InputError
from handvla.hand.features import FEATURE_SETS, feature_spec

#: bumped when the checkpoint layout changes in a way older code cannot read
FORMAT_VERSION = 1
MODEL_TYPE = "handvla-grq-vae-motion-tokenizer"


def _check(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"tokenizer config: field '{name}': expected {expected}, got {got!r}")


@dataclass
class TokenizerConfig:
    """The model. Every field is saved in ``config.json`` next to the weights."""

    #: feature set (D51/D99/D109/D114/D162, see ``handvla.hand.features``)
    features: str = "D162"
    #: frame of the 21-joint block of D114/D162: 'local' (hand frame, the finger part) or 'camera'
    joints_frame: str = "local"
    #: True: a wrist tokenizer and a finger tokenizer; False: one tokenizer for the whole feature vector
    part_level: bool = True
    #: motion rate in frames per second
    fps: float = 15.0
    #: seconds of motion per token block (one block per hand per ``seconds_per_block``)
    seconds_per_block: float = 1.0
    #: temporal downsampling of the encoder, a power of 2 (4 = two stride-2 stages)
    alpha: int = 4
    #: channels of the 1D conv encoder/decoder
    width: int = 512
    #: latent (code) dimension, split into ``groups`` equal groups
    code_dim: int = 512
    #: residual 1D conv blocks per resolution stage and their dilations (reversed growth, as 9/3/1)
    res_depth: int = 3
    dilation_growth: int = 3
    #: grouped residual VQ: groups x residual layers, ``codebook_size`` codes per codebook
    groups: int = 2
    residual_layers: int = 8
    codebook_size: int = 4096
    #: motion ids: 'per_part' (one range of ``codebook_size`` ids per part, shared by its residual layers)
    #: or 'per_layer' (one range per part and residual layer, the reference release's GRVQ-8K arithmetic:
    #: ``code + codebook_size * layer + part_base``; the id itself says its layer, which the VLA uses for
    #: per-layer constrained decoding, loss weights and metrics)
    id_layout: str = "per_part"
    #: order of a part's ids inside a block: 'group_time_layer' (the reference) or 'layer_group_time'
    #: (coarse first: all residual-layer-0 codes, then layer 1, ...)
    token_order: str = "group_time_layer"
    #: start every residual block as the identity (its last conv zero-initialised): a shallow network
    #: at step 0 that deepens as it trains, which makes the first few hundred steps much faster
    zero_init_residual: bool = True
    #: weight init of the convolutions: 'kaiming' (He normal, fan-in, keeps activations at unit scale
    #: through the ReLUs; trains faster at a higher learning rate) or 'torch' (PyTorch's default)
    init: str = "kaiming"
    #: feature normalisation: 'field' = per-dimension mean, one std per feature field (finger rotations,
    #: wrist rotation, wrist position, betas, joints), so normalised distances stay proportional to
    #: physical ones and near-constant dimensions are not blown up to unit variance; 'dim' = per-dimension
    #: mean and std (the reference's)
    normalization: str = "field"
    #: extra weight per feature field after normalisation (the field's std is divided by it, so it gets
    #: more of the loss and of the codebooks' resolution). Fields: hand_pose, global_orient, wrist_pos,
    #: betas, joints. The wrist position needs millimetres over a range of tens of centimetres, and the
    #: joint block measures positions directly, so both get more than the rotations.
    field_weights: dict = field(default_factory=lambda: {"wrist_pos": 3.0, "joints": 3.0})
    #: a linear patch path beside the conv encoder and decoder, initialised to PCA of the training
    #: windows (see ``modeling.PartAutoencoder``); False gives the reference's conv-only networks
    linear_skip: bool = True
    #: commitment loss weight (lambda_commit)
    commitment_weight: float = 0.02
    #: codebook health: data-driven initialisation, EMA updates, dead-code reset
    kmeans_init: bool = True
    kmeans_iters: int = 10
    #: how each part's codebooks are initialised (when ``kmeans_init``; parts: wrist, finger, hand):
    #: 'kmeans' = Lloyd's k-means on the residuals, layer by layer; 'lattice' = a product grid of 1-D
    #: Lloyd-Max quantisers along the residual's principal directions, bits going greedily to the
    #: direction with the largest remaining error (see ``modeling.lattice_codebook``). k-means memorises a
    #: small training set (every window gets its own code, the next layers then see near-zero residuals)
    #: while the grid tiles the space, so it generalises to unseen motion; measured on held-out real
    #: hands, lattice fingers halve the gap between training and held-out error (benchmarks/tokenizer.py)
    codebook_init: dict = field(default_factory=lambda: {"wrist": "kmeans", "finger": "lattice", "hand": "lattice"})
    ema_decay: float = 0.99
    #: a code is reset to a random current input when its EMA share of assignments falls below
    #: ``dead_code_threshold / codebook_size`` (1.0 = the uniform share); 0 disables resets
    dead_code_threshold: float = 0.05
    #: hand model used for the joint block of the features and for the joint loss
    hand_model: str = "builtin"
    format_version: int = FORMAT_VERSION
    model_type: str = MODEL_TYPE

    def __post_init__(self) -> None:
        try:
            self.features = feature_spec(self.features, self.joints_frame).name
        except InputError as e:
            raise ConfigError(
                f"tokenizer config: field '{e.field}': expected {e.expected}, got {e.got}"
            ) from None
        for name in ("part_level", "linear_skip", "zero_init_residual", "kmeans_init"):
            _check(isinstance(getattr(self, name), bool), name, "true or false", getattr(self, name))
        _check(self.fps > 0, "fps", "a positive number", self.fps)
        _check(self.seconds_per_block > 0, "seconds_per_block", "a positive number", self.seconds_per_block)
        _check(
            isinstance(self.alpha, int) and self.alpha >= 1 and (self.alpha & (self.alpha - 1)) == 0,
            "alpha",
            "a power of 2 (1, 2, 4, ...)",
            self.alpha,
        )
        fpb = self.fps * self.seconds_per_block
        _check(
            abs(fpb - round(fpb)) < 1e-6 and round(fpb) >= 1,
            "seconds_per_block",
            "a whole number of frames per block (fps x seconds)",
            fpb,
        )
        for name in (
            "width",
            "code_dim",
            "res_depth",
            "dilation_growth",
            "groups",
            "residual_layers",
            "codebook_size",
            "kmeans_iters",
        ):
            v = getattr(self, name)
            lo = 0 if name == "kmeans_iters" else 1
            _check(isinstance(v, int) and v >= lo, name, f"an integer >= {lo}", v)
        _check(
            self.code_dim % self.groups == 0,
            "code_dim",
            f"a multiple of groups ({self.groups})",
            self.code_dim,
        )
        _check(self.commitment_weight >= 0, "commitment_weight", "a number >= 0", self.commitment_weight)
        _check(0 <= self.ema_decay < 1, "ema_decay", "a number in [0, 1)", self.ema_decay)
        _check(
            self.dead_code_threshold >= 0, "dead_code_threshold", "a number >= 0", self.dead_code_threshold
        )
        _check(self.normalization in ("field", "dim"), "normalization", "'field' or 'dim'", self.normalization)
        _check(isinstance(self.field_weights, dict), "field_weights", "a mapping field -> weight", self.field_weights)
        known = ("hand_pose", "global_orient", "wrist_pos", "betas", "joints")  # absent ones are ignored
        for k, v in self.field_weights.items():
            _check(k in known, "field_weights", f"feature fields ({', '.join(known)})", k)
            _check(isinstance(v, (int, float)) and v > 0, f"field_weights.{k}", "a positive number", v)
        _check(isinstance(self.codebook_init, dict), "codebook_init", "a mapping part -> method", self.codebook_init)
        for k, v in self.codebook_init.items():
            _check(k in ("wrist", "finger", "hand"), "codebook_init", "parts wrist, finger, hand", k)
            _check(v in ("kmeans", "lattice"), f"codebook_init.{k}", "'kmeans' or 'lattice'", v)
        _check(self.id_layout in ("per_part", "per_layer"), "id_layout", "'per_part' or 'per_layer'", self.id_layout)
        _check(
            self.token_order in ("group_time_layer", "layer_group_time"),
            "token_order",
            "'group_time_layer' or 'layer_group_time'",
            self.token_order,
        )
        _check(self.init in ("kaiming", "torch"), "init", "'kaiming' or 'torch'", self.init)
        _check(self.hand_model in ("builtin", "mano"), "hand_model", "'builtin' or 'mano'", self.hand_model)
        _check(
            self.format_version == FORMAT_VERSION,
            "format_version",
            f"{FORMAT_VERSION} (this code's format)",
            self.format_version,
        )
        _check(self.model_type == MODEL_TYPE, "model_type", repr(MODEL_TYPE), self.model_type)

    # --- derived sizes ---------------------------------------------------------------------------------
    @property
    def spec(self):
        return feature_spec(self.features, self.joints_frame)

    @property
    def frames_per_block(self) -> int:
        """Real motion frames per block (15 at 15 fps, 1 s)."""
        return int(round(self.fps * self.seconds_per_block))

    @property
    def window_frames(self) -> int:
        """Frames the network sees per block: ``frames_per_block`` padded up to a multiple of alpha (16)."""
        return int(math.ceil(self.frames_per_block / self.alpha) * self.alpha)

    @property
    def latent_steps(self) -> int:
        """Latent time steps per block (window_frames / alpha = 4)."""
        return self.window_frames // self.alpha

    @property
    def parts(self) -> tuple[str, ...]:
        return ("wrist", "finger") if self.part_level else ("hand",)

    def part_dim(self, part: str) -> int:
        return self.spec.dim if part == "hand" else self.spec.part_dim(part)

    @property
    def dilations(self) -> tuple[int, ...]:
        return tuple(self.dilation_growth**i for i in reversed(range(self.res_depth)))

    # --- (de)serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "tokenizer config") -> TokenizerConfig:
        d = dict(d) if isinstance(d, dict) else d
        if isinstance(d, dict) and "wrist_pos_weight" in d:  # checkpoints written before field_weights
            w = d.pop("wrist_pos_weight")
            d.setdefault("field_weights", {"wrist_pos": w})
        return cls(**_known_fields(cls, d, where))

    def save(self, path: str | Path) -> None:
        from handvla.atomic import atomic_write_bytes

        atomic_write_bytes(Path(path), (json.dumps(self.to_dict(), indent=2) + "\n").encode())


@dataclass
class TrainConfig:
    """One training run (optimiser, schedule, batches, losses, augmentation, checkpoints)."""

    #: total optimiser steps of the LR schedule; None = estimated from ``max_minutes`` after a few steps
    steps: int | None = None
    #: wall-clock budget in minutes (training stops, saves and exits when it is spent)
    max_minutes: float | None = None
    batch_size: int = 64
    lr: float = 1e-3
    min_lr_ratio: float = 0.05
    warmup_steps: int = 50
    weight_decay: float = 0.0
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0
    #: train only the decoders: encoders (and so the latent space the codebooks live in) stay as
    #: initialised, the codebooks keep refining by EMA, and the decoders learn to undo quantisation error
    freeze_encoder: bool = False
    #: reconstruction loss on normalised features: smooth L1 with this beta (0 = plain L1)
    recon_beta: float = 0.1
    #: joint-position loss (mean Euclidean joint error in metres through differentiable FK), this weight
    #: per metre: 100 makes 1 cm of joint error cost as much as 1 std of feature error
    joint_loss_weight: float = 100.0
    #: extra weight of the wrist feature dims (lambda_2); used only by whole-hand (not part-level) models
    wrist_loss_weight: float = 1.0
    #: steps during which the quantiser is bypassed (a plain auto-encoder warms up), then k-means init
    vq_start_step: int = 0
    #: windows (x latent steps per window vectors) encoded for the k-means codebook initialisation
    kmeans_init_windows: int = 1024
    #: windows encoded for the 'lattice' codebook initialisation (see ``TokenizerConfig.codebook_init``):
    #: a grid does not memorise, so it gets more data than k-means
    lattice_init_windows: int = 8192
    #: after the k-means init, steps that only refine the codebooks (encoder forward + EMA updates, no
    #: gradients; about a third of a training step each) on batches of ``vq_warmup_batch`` windows;
    #: they spread codes that k-means fitted to a few windows over fresh data (lattice parts are skipped)
    vq_warmup_steps: int = 300
    vq_warmup_batch: int = 64
    #: augmentation: random rotation of the whole scene about the vertical (y) axis, degrees (0 = off)
    aug_yaw_deg: float = 0.0
    #: augmentation: random shift of the wrist path, metres per axis (0 = off)
    aug_shift_m: float = 0.0
    #: built-in motion: number of sequences and seconds each
    builtin_sequences: int = 512
    builtin_seconds: float = 10.0
    #: real files are repeated this many times in the window pool (they are small next to built-in data)
    real_weight: float = 1.0
    seed: int = 0
    log_every: int = 10
    #: save a resumable checkpoint every N steps and/or minutes
    checkpoint_every: int = 500
    checkpoint_minutes: float = 5.0
    #: torch threads (None = torch's default)
    threads: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.adam_betas, list):
            self.adam_betas = tuple(self.adam_betas)
        _check(
            self.steps is None or (isinstance(self.steps, int) and self.steps >= 1),
            "steps",
            "an integer >= 1 or null",
            self.steps,
        )
        _check(
            self.max_minutes is None or self.max_minutes > 0,
            "max_minutes",
            "a positive number or null",
            self.max_minutes,
        )
        for name in (
            "batch_size",
            "log_every",
            "checkpoint_every",
            "kmeans_init_windows",
            "lattice_init_windows",
            "vq_warmup_batch",
            "builtin_sequences",
        ):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 1, name, "an integer >= 1", v)
        for name in ("warmup_steps", "vq_start_step", "vq_warmup_steps", "seed"):
            v = getattr(self, name)
            _check(isinstance(v, int) and v >= 0, name, "an integer >= 0", v)
        for name in ("lr", "builtin_seconds", "real_weight", "checkpoint_minutes"):
            _check(getattr(self, name) > 0, name, "a positive number", getattr(self, name))
        for name in (
            "min_lr_ratio",
            "weight_decay",
            "grad_clip",
            "recon_beta",
            "joint_loss_weight",
            "wrist_loss_weight",
            "aug_yaw_deg",
            "aug_shift_m",
        ):
            _check(getattr(self, name) >= 0, name, "a number >= 0", getattr(self, name))
        _check(len(self.adam_betas) == 2, "adam_betas", "two numbers", self.adam_betas)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "train config") -> TrainConfig:
        return cls(**_known_fields(cls, d, where))


def _known_fields(cls, d: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of field names to values, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(
            f"{where}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}"
        )
    return dict(d)


#: named model presets; 'tiny' keeps the default token layout (128 ids per hand-second) at toy sizes
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {"width": 32, "code_dim": 32, "codebook_size": 64, "res_depth": 2, "kmeans_iters": 2},
}
#: training settings that go with each preset (a test-sized run for 'tiny')
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {
        "batch_size": 16,
        "warmup_steps": 5,
        "kmeans_init_windows": 64,
        "lattice_init_windows": 128,
        "vq_warmup_steps": 5,
        "builtin_sequences": 16,
        "builtin_seconds": 4.0,
        "log_every": 5,
        "lr": 5e-3,
    },
}


def preset(name: str) -> tuple[TokenizerConfig, TrainConfig]:
    if name not in PRESETS:
        raise ConfigError(f"unknown tokenizer preset {name!r}: expected one of {', '.join(PRESETS)}")
    return TokenizerConfig(**PRESETS[name]), TrainConfig(**TRAIN_PRESETS[name])


def load_config_file(
    path: str | Path, base: tuple[TokenizerConfig, TrainConfig] | None = None
) -> tuple[TokenizerConfig, TrainConfig]:
    """Read a YAML or JSON file with model and training fields, flat or under ``model:`` / ``train:``.

    Fields it does not name keep the values of ``base`` (default: the default preset).
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        from handvla.errors import MissingResourceError

        raise MissingResourceError(f"{path}: tokenizer config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    model_cfg, train_cfg = base or preset("default")
    model_d, train_d = model_cfg.to_dict(), train_cfg.to_dict()
    model_names, train_names = set(model_d), set(train_d)
    flat = {k: v for k, v in raw.items() if k not in ("model", "train")}
    for section, target, names in (("model", model_d, model_names), ("train", train_d, train_names)):
        sub = raw.get(section) or {}
        if not isinstance(sub, dict):
            raise ConfigError(f"{path}: section '{section}': expected a mapping, got {type(sub).__name__}")
        unknown = sorted(set(sub) - names)
        if unknown:
            raise ConfigError(f"{path}: section '{section}': unknown field(s) {', '.join(unknown)}")
        target.update(sub)
    for k, v in flat.items():
        if k in model_names:
            model_d[k] = v
        elif k in train_names:
            train_d[k] = v
        else:
            raise ConfigError(f"{path}: unknown field {k!r} (not a tokenizer model or training field)")
    return (TokenizerConfig.from_dict(model_d, str(path)), TrainConfig.from_dict(train_d, str(path)))


__all__ = [
    "FEATURE_SETS",
    "FORMAT_VERSION",
    "PRESETS",
    "TokenizerConfig",
    "TrainConfig",
    "load_config_file",
    "preset",
]
