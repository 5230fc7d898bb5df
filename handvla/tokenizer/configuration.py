"""Configuration of the part-level GRQ-VAE motion tokenizer (model) and of its training run.

``TokenizerConfig`` describes the model and travels with the weights as ``config.json``;
``TokenizerTrainConfig`` describes one training run (kept in the run folder, see
``handvla.tokenizer.training``). Both are ``handvla.config.ConfigModel``s: a bad value is a ``ConfigError``
naming the field, and ``load_config_file`` reads them from one JSON or YAML file, flat or in ``model:`` /
``train:`` sections.

The defaults reproduce the Being-H0 tokenizer ("GRVQ-8K"): D162 features at 15 fps, one block per
hand-second = 15 frames padded to 16, two stride-2 stages (alpha = 4), width 512, code dim 512, residual
1D conv blocks of depth 3 (dilations 9/3/1), 2 groups x 8 residual layers x 4096 codes per part, hence
128 motion ids per hand-second and 8192 ids in all (see ``handvla.tokenizer.layout.token_layout``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, PositiveFloat, field_validator, model_validator

from handvla.atomic import atomic_write_bytes
from handvla.config import ConfigModel, load_config
from handvla.errors import ConfigError, InputError, MissingResourceError
from handvla.hand.features import FEATURE_SETS, feature_spec
from handvla.tokenizer.layout import ID_LAYOUTS, TOKEN_ORDERS

#: bumped when the checkpoint layout changes in a way older code cannot read
FORMAT_VERSION = 1
MODEL_TYPE = "handvla-grq-vae-motion-tokenizer"

#: feature fields ``field_weights`` may name (fields a feature set lacks are ignored)
WeightedField = Literal["hand_pose", "global_orient", "wrist_pos", "betas", "joints"]


#: default spans of the end-point bins per space (tokenizer frame: camera, left hands mirrored): a wrist up to
#: 1.5 m from the camera, within +-50 degrees of its axis ('ray': x / z, y / z up to tan 50 = 1.19)
END_POINT_RANGES: dict[str, list[list[float]]] = {
    "xyz": [[-0.9, -0.9, 0.1], [0.9, 0.9, 1.5]],
    "ray": [[-1.2, -1.2, 0.1], [1.2, 1.2, 1.5]],
}


class TokenizerConfig(ConfigModel):
    """The model. Every field is saved in ``config.json`` next to the weights."""

    model_config = ConfigDict(protected_namespaces=())  # the saved key ``model_type`` is a field

    features: str = Field(
        "D162", description="feature set (D51/D99/D109/D114/D162, see handvla.hand.features)"
    )
    joints_frame: Literal["local", "camera"] = Field(
        "local",
        description="frame of the 21-joint block of D114/D162: 'local' (hand frame, the finger part) or 'camera'",
    )
    part_level: bool = Field(
        True,
        description="True: a wrist tokenizer and a finger tokenizer; False: one for the whole feature vector",
    )
    fps: float = Field(15.0, gt=0, description="motion rate in frames per second")
    seconds_per_block: float = Field(
        1.0, gt=0, description="seconds of motion per token block (one block per hand per seconds_per_block)"
    )
    alpha: int = Field(
        4, ge=1, description="temporal downsampling of the encoder, a power of 2 (4 = two stride-2 stages)"
    )
    width: int = Field(512, ge=1, description="channels of the 1D conv encoder/decoder")
    code_dim: int = Field(512, ge=1, description="latent (code) dimension, split into `groups` equal groups")
    res_depth: int = Field(3, ge=1, description="residual 1D conv blocks per resolution stage")
    dilation_growth: int = Field(3, ge=1, description="their dilations: reversed growth, as 9/3/1")
    groups: int = Field(
        2, ge=1, description="grouped residual VQ: groups per part (code_dim splits into them)"
    )
    residual_layers: int = Field(8, ge=1, description="grouped residual VQ: residual codebooks per group")
    codebook_size: int = Field(4096, ge=1, description="codes per codebook")
    id_layout: str = Field(
        "per_part",
        description="motion ids: 'per_part' (one range of codebook_size ids per part, shared by its residual "
        "layers) or 'per_layer' (one range per part and residual layer, the reference release's GRVQ-8K "
        "arithmetic: code + codebook_size * layer + part_base; the id itself says its layer, which the VLA uses "
        "for per-layer constrained decoding, loss weights and metrics)",
    )
    token_order: str = Field(
        "group_time_layer",
        description="order of a part's ids inside a block: 'group_time_layer' (the reference) or "
        "'layer_group_time' (coarse first: all residual-layer-0 codes, then layer 1, ...)",
    )
    end_point_space: Literal["none", "xyz", "ray"] = Field(
        "none",
        description="each block also states where its wrist ends, as one id per axis and bin before the block's "
        "codes, and decoding moves the wrist path so that every block ends there (a departure from the "
        "reference, which has no such ids: 'none'). 'xyz': the wrist position in metres; 'ray': x / z, y / z "
        "(where it is in the image) and z (its depth), in the frame end_point_frame names. A language model "
        "then says where the hand goes as a few ids it can read off a place, not as the sum of residual codes "
        "(docs/vla-learning.md (18))",
    )
    end_point_frame: Literal["hand", "camera"] = Field(
        "hand",
        description="the frame of the end-point ids (end_point_space): 'hand', the tokenizer's own (left hands "
        "mirrored, as their codes are), or 'camera' (left hands not mirrored: a place has the same ids whichever "
        "hand ends there, the ids a VLA states for an object's place; docs/vla-learning.md (21)). The "
        "codes stay in the tokenizer's frame either way",
    )
    end_point_bins: int = Field(64, ge=2, description="bins per axis of the end-point ids (end_point_space)")
    end_point_range: list[list[float]] | None = Field(
        None,
        description="[[lo_0, lo_1, lo_2], [hi_0, hi_1, hi_2]]: the span the end-point bins divide evenly, per "
        "axis of end_point_space (values outside go to the first / last bin). None: the defaults for the space "
        "(END_POINT_RANGES: a hand within 1.5 m of the camera, 100 degrees across), or set from data with "
        "handvla.tokenizer.with_end_points",
    )
    zero_init_residual: bool = Field(
        True,
        description="start every residual block as the identity (its last conv zero-initialised): a shallow "
        "network at step 0 that deepens as it trains, which makes the first few hundred steps much faster",
    )
    init: Literal["kaiming", "torch"] = Field(
        "kaiming",
        description="weight init of the convolutions: 'kaiming' (He normal, fan-in, keeps activations at unit "
        "scale through the ReLUs; trains faster at a higher learning rate) or 'torch' (PyTorch's default)",
    )
    normalization: Literal["field", "dim"] = Field(
        "field",
        description="feature normalisation: 'field' = per-dimension mean, one std per feature field (finger "
        "rotations, wrist rotation, wrist position, betas, joints), so normalised distances stay proportional "
        "to physical ones and near-constant dimensions are not blown up to unit variance; 'dim' = "
        "per-dimension mean and std (the reference's)",
    )
    field_weights: dict[WeightedField, PositiveFloat] = Field(
        default_factory=lambda: {"wrist_pos": 3.0, "joints": 3.0},
        description="extra weight per feature field after normalisation (the field's std is divided by it, so "
        "it gets more of the loss and of the codebooks' resolution). The wrist position needs millimetres over "
        "a range of tens of centimetres, and the joint block measures positions directly, so both get more "
        "than the rotations",
    )
    linear_skip: bool = Field(
        True,
        description="a linear patch path beside the conv encoder and decoder, initialised to PCA of the "
        "training windows (see modeling.PartAutoencoder); False gives the reference's conv-only networks",
    )
    commitment_weight: float = Field(0.02, ge=0, description="commitment loss weight (lambda_commit)")
    kmeans_init: bool = Field(True, description="data-driven codebook initialisation (else random codes)")
    kmeans_iters: int = Field(10, ge=0, description="Lloyd iterations of the k-means initialisation")
    codebook_init: dict[Literal["wrist", "finger", "hand"], Literal["kmeans", "lattice"]] = Field(
        default_factory=lambda: {"wrist": "kmeans", "finger": "lattice", "hand": "lattice"},
        description="how each part's codebooks are initialised (when kmeans_init; parts absent: 'kmeans'): "
        "'kmeans' = Lloyd's k-means on the residuals, layer by layer; 'lattice' = a product grid of 1-D "
        "Lloyd-Max quantisers along the residual's principal directions, bits going greedily to the direction "
        "with the largest remaining error (see modeling.lattice_codebook). k-means memorises a small training "
        "set (every window gets its own code, the next layers then see near-zero residuals) while the grid "
        "tiles the space, so it generalises to unseen motion; measured on held-out real hands, lattice fingers "
        "halve the gap between training and held-out error (benchmarks/tokenizer.py)",
    )
    encode_beam: int = Field(
        4,
        ge=1,
        description="candidates kept per residual layer when motion is encoded to codes (beam search over "
        "the sum of the layers' codes, modeling.beam_search_codes); 1 = greedy, the nearest code layer by "
        "layer (passes that update the codebooks, the set-up's EMA refinement, always choose greedily). Decoding "
        "is the same either way; a beam only finds codes whose sum is closer to the latent "
        "(on held-out real hands 4 cuts MPJPE by an eighth and wrist error by a quarter, at a quarter to a third "
        "of the encoding speed: benchmarks/tokenizer_beam.py)",
    )
    ema_decay: float = Field(0.99, ge=0, lt=1, description="decay of the codebooks' EMA updates")
    dead_code_threshold: float = Field(
        0.05,
        ge=0,
        description="a code is reset to a random current input when its EMA share of assignments falls below "
        "dead_code_threshold / codebook_size (1.0 = the uniform share); 0 disables resets",
    )
    hand_model: Literal["builtin", "mano"] = Field(
        "builtin", description="hand model used for the joint block of the features and for the joint loss"
    )
    format_version: Literal[FORMAT_VERSION] = FORMAT_VERSION
    model_type: Literal[MODEL_TYPE] = MODEL_TYPE

    @model_validator(mode="before")
    @classmethod
    def _older_keys(cls, d: Any) -> Any:
        """config.json files written before ``field_weights`` carry ``wrist_pos_weight``."""
        if isinstance(d, dict) and "wrist_pos_weight" in d:
            d = dict(d)
            d.setdefault("field_weights", {"wrist_pos": d.pop("wrist_pos_weight")})
        return d

    @field_validator("features")
    @classmethod
    def _feature_set(cls, v: str) -> str:
        try:
            return feature_spec(v).name  # the canonical name ('d162', 'MANO-D162' -> 'D162')
        except InputError as e:
            raise ConfigError(
                f"tokenizer config: field 'features': expected {e.expected}, got {e.got}"
            ) from None

    @model_validator(mode="after")
    def _check(self) -> TokenizerConfig:
        _check((self.alpha & (self.alpha - 1)) == 0, "alpha", "a power of 2 (1, 2, 4, ...)", self.alpha)
        fpb = self.fps * self.seconds_per_block
        _check(
            abs(fpb - round(fpb)) < 1e-6 and round(fpb) >= 1,
            "seconds_per_block",
            "a whole number of frames per block (fps x seconds)",
            fpb,
        )
        _check(
            self.code_dim % self.groups == 0,
            "code_dim",
            f"a multiple of groups ({self.groups})",
            self.code_dim,
        )
        _check(self.id_layout in ID_LAYOUTS, "id_layout", " or ".join(map(repr, ID_LAYOUTS)), self.id_layout)
        if self.end_point_range is not None:
            r = self.end_point_range
            ok = len(r) == 2 and all(len(v) == 3 for v in r) and all(
                math.isfinite(lo) and math.isfinite(hi) and hi > lo for lo, hi in zip(r[0], r[1])
            )
            _check(ok, "end_point_range", "[[lo, lo, lo], [hi, hi, hi]] with finite hi > lo per axis", r)
        _check(
            self.token_order in TOKEN_ORDERS,
            "token_order",
            " or ".join(map(repr, TOKEN_ORDERS)),
            self.token_order,
        )
        return self

    # --- derived sizes ---------------------------------------------------------------------------------
    @property
    def end_point_span(self) -> tuple[list[float], list[float]]:
        """(lo, hi) per axis of the end-point bins: ``end_point_range`` or the space's default."""
        if self.end_point_space == "none":
            raise ConfigError("tokenizer config: field 'end_point_space' is 'none': this tokenizer has no end-point ids")
        r = self.end_point_range or END_POINT_RANGES[self.end_point_space]
        return [float(v) for v in r[0]], [float(v) for v in r[1]]

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

    def save(self, path: str | Path) -> None:
        """Write ``config.json`` (every field, the keys of ``model_dump``)."""
        atomic_write_bytes(Path(path), (json.dumps(self.model_dump(), indent=2) + "\n").encode())


def _check(cond: bool, name: str, expected: str, got: Any) -> None:
    if not cond:
        raise ConfigError(f"tokenizer config: field '{name}': expected {expected}, got {got!r}")


class TokenizerTrainConfig(ConfigModel):
    """One training run (optimiser, schedule, batches, losses, augmentation, checkpoints). The run itself is
    ``handvla.train.trainer.Trainer``'s (see ``handvla.tokenizer.training.trainer_config`` for the mapping)."""

    steps: int | None = Field(
        None,
        ge=1,
        description="optimiser steps in all (the LR schedule's length); None = as many as the time "
        "budget allows (the cosine schedule then ends at the deadline)",
    )
    max_minutes: float | None = Field(
        None,
        gt=0,
        description="training-time budget in minutes (summed over resumed sessions): training "
        "stops, saves and exits when it is spent",
    )
    # the defaults are benchmarks/tokenizer.py's recipe, the one that improves on held-out real files: the
    # encoders keep their PCA initialisation and the decoders learn at a low rate (lr 1e-3 with a trained
    # encoder undid the PCA start and ended worse than the initialisation on unseen captures); codebooks
    # kept as set up (EMA updates copied a few minutes of real motion, up-weighted 60x, into them: 0.5 mm on
    # the training files, worse on held-out ones than at step 0); a small random yaw and shift of the scene
    # (camera-frame captures put the hand anywhere): the ablation is in the README, "Measured"
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-5, gt=0)
    min_lr_ratio: float = Field(0.05, ge=0, le=1, description="final lr as a fraction of lr (cosine)")
    warmup_steps: int = Field(20, ge=0)
    weight_decay: float = Field(0.0, ge=0)
    adam_betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = Field(1.0, ge=0, description="gradient-norm clipping (0 = off)")
    freeze_encoder: bool = Field(
        True,
        description="train only the decoders: encoders (and so the latent space the codebooks live in) stay as "
        "initialised (codebook_updates says whether the codebooks still move), and the decoders learn to "
        "undo quantisation error",
    )
    codebook_updates: Literal["off", "ema", "ema_reseed"] = Field(
        "off",
        description="codebook maintenance during training, after the set-up (which always refines them): "
        "'off' keeps the codebooks as set up; 'ema' moves each code to the running mean of its assignments; "
        "'ema_reseed' also re-seeds codes unused for a while with vectors of the batch. With codebooks far "
        "larger than the real data (4096 codes per layer, minutes of real motion up-weighted 60x) both "
        "copy training windows into the codebooks: the training files reconstruct to 0.5 mm and unseen ones "
        "worse than at step 0. Small codebooks on plentiful data (the tiny preset, the demo) gain from them",
    )
    recon_beta: float = Field(
        0.1,
        ge=0,
        description="reconstruction loss on normalised features: smooth L1 with this beta (0 = plain L1)",
    )
    joint_loss_weight: float = Field(
        100.0,
        ge=0,
        description="joint-position loss (mean Euclidean joint error in metres through differentiable FK), "
        "this weight per metre: 100 makes 1 cm of joint error cost as much as 1 std of feature error",
    )
    wrist_loss_weight: float = Field(
        1.0, ge=0, description="extra weight of the wrist feature dims (lambda_2); whole-hand models only"
    )
    vq_start_step: int = Field(
        0,
        ge=0,
        description="steps during which the quantiser is bypassed (a plain auto-encoder warms up), "
        "then the codebook initialisation",
    )
    kmeans_init_windows: int = Field(
        1024,
        ge=1,
        description="windows (x latent steps per window vectors) encoded for the k-means codebook init",
    )
    lattice_init_windows: int = Field(
        8192,
        ge=1,
        description="windows encoded for the 'lattice' codebook init (see TokenizerConfig.codebook_init): a grid "
        "does not memorise, so it gets more data than k-means",
    )
    vq_warmup_steps: int = Field(
        300,
        ge=0,
        description="after the k-means init, steps that only refine the codebooks (encoder forward + EMA "
        "updates, no gradients; about a third of a training step each) on batches of vq_warmup_batch windows; "
        "they spread codes that k-means fitted to a few windows over fresh data (lattice parts are skipped)",
    )
    vq_warmup_batch: int = Field(64, ge=1)
    aug_yaw_deg: float = Field(
        15.0,
        ge=0,
        description="augmentation: random rotation of the scene about the vertical (y) axis, degrees",
    )
    aug_shift_m: float = Field(
        0.05, ge=0, description="augmentation: random shift of the wrist path, metres per axis"
    )
    aug_speed: float = Field(
        1.0,
        ge=1.0,
        description="augmentation: each window plays its motion faster or slower by a factor drawn "
        "log-uniformly from [1 / aug_speed, aug_speed] (features interpolated between frames); 1 = off",
    )
    builtin_sequences: int = Field(256, ge=1, description="built-in motion: number of sequences")
    builtin_seconds: float = Field(10.0, gt=0, description="built-in motion: seconds per sequence")
    real_weight: float = Field(
        60.0,
        gt=0,
        description="real files are repeated this many times in the window pool (they are small next "
        "to built-in data)",
    )
    seed: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    checkpoint_every: int = Field(500, ge=1, description="save a resumable checkpoint every N steps")
    checkpoint_minutes: float = Field(
        5.0, gt=0, description="and after N minutes of training since the last one"
    )
    threads: int | None = Field(None, ge=1, description="torch threads (None = torch's default)")
    val_sources: list[str] = Field(
        default_factory=list,
        description="held-out validation data (files, folders, globs, stores); empty = hold out val_fraction "
        "of the training files",
    )
    val_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="share of the real training files (store episodes) held out for validation, by file "
        "(never frames of a training file), chosen with the seed; 0 = none",
    )
    val_builtin_sequences: int = Field(
        8, ge=0, description="validation on this many fresh built-in sequences when no real file is held out"
    )
    eval_minutes: float = Field(
        1.0,
        gt=0,
        description="training minutes between validations (validation time is not part of the budget); the "
        "best validation checkpoint is kept in OUT/best",
    )
    best_metric: Literal["mpjpe_mm", "pa_mpjpe_mm"] = Field(
        "mpjpe_mm", description="held-out metric that picks the best checkpoint (lower is better)"
    )
    min_steps_ok: int = Field(
        200, ge=0, description="fewer optimiser steps than this and the result carries a too-few-steps warning"
    )


#: named model presets; 'tiny' keeps the default token layout (128 ids per hand-second) at toy sizes
PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "tiny": {"width": 32, "code_dim": 32, "codebook_size": 64, "res_depth": 2, "kmeans_iters": 2},
    # Being-H0's released GRVQ-8K tokenizer (handvla.tokenizer.being_h0 loads its weights): 512 codes per
    # codebook, one id range per residual layer (8192 ids), per-dimension normalisation, conv-only networks
    # with PyTorch's init, random codebooks with EMA decay 0.8 and no dead-code reset, D162 whose joint
    # block is wrist-centred in camera orientation (a MANO layer centred on the wrist)
    "being-h0-grvq-8k": {
        "features": "D162",
        "joints_frame": "camera",
        "part_level": True,
        "fps": 15.0,
        "seconds_per_block": 1.0,
        "alpha": 4,
        "width": 512,
        "code_dim": 512,
        "res_depth": 3,
        "dilation_growth": 3,
        "groups": 2,
        "residual_layers": 8,
        "codebook_size": 512,
        "id_layout": "per_layer",
        "token_order": "group_time_layer",
        "zero_init_residual": False,
        "init": "torch",
        "normalization": "dim",
        "field_weights": {},
        "linear_skip": False,
        "commitment_weight": 0.02,
        "kmeans_init": False,
        "ema_decay": 0.8,
        "dead_code_threshold": 0.0,
        "encode_beam": 1,
        "hand_model": "mano",
    },
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
        "freeze_encoder": False,
        "real_weight": 1.0,
        # 64 codes per layer and a short set-up: EMA refinement during training still helps them
        "codebook_updates": "ema_reseed",
    },
    "being-h0-grvq-8k": {},
}


def preset(name: str) -> tuple[TokenizerConfig, TokenizerTrainConfig]:
    if name not in PRESETS:
        raise ConfigError(f"unknown tokenizer preset {name!r}: expected one of {', '.join(PRESETS)}")
    return TokenizerConfig(**PRESETS[name]), TokenizerTrainConfig(**TRAIN_PRESETS[name])


def load_config_file(
    path: str | Path, base: tuple[TokenizerConfig, TokenizerTrainConfig] | None = None
) -> tuple[TokenizerConfig, TokenizerTrainConfig]:
    """Read a YAML or JSON file with model and training fields, flat or under ``model:`` / ``train:``.

    Fields it does not name keep the values of ``base`` (default: the default preset).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingResourceError(f"{path}: tokenizer config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(raw).__name__}")
    model_cfg, train_cfg = base or preset("default")
    merged = {"model": model_cfg.model_dump(), "train": train_cfg.model_dump()}
    owner = {name: section for section, cls in (("model", TokenizerConfig), ("train", TokenizerTrainConfig))
             for name in cls.model_fields}  # fmt: skip
    for section in ("model", "train"):
        sub = raw.get(section) or {}
        if not isinstance(sub, dict):
            raise ConfigError(f"{path}: section '{section}': expected a mapping, got {type(sub).__name__}")
        merged[section].update(sub)
    for k, v in raw.items():
        if k in ("model", "train"):
            continue
        if k not in owner:
            raise ConfigError(f"{path}: unknown field {k!r} (not a tokenizer model or training field)")
        merged[owner[k]][k] = v
    return (
        load_config(TokenizerConfig, base=merged["model"], what=f"{path}: section 'model'"),
        load_config(TokenizerTrainConfig, base=merged["train"], what=f"{path}: section 'train'"),
    )


__all__ = [
    "FEATURE_SETS",
    "FORMAT_VERSION",
    "PRESETS",
    "TokenizerConfig",
    "TokenizerTrainConfig",
    "load_config_file",
    "preset",
]
