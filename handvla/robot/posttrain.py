"""Robot post-training of the VLA (Being-H0 stage 3) on a LeRobot v3 dataset, with the shared trainer.

One typed config (`PosttrainConfig`, YAML sections ``data``, ``model``, ``train``, ``eval``)::

    data:   dataset (a LeRobot v3 folder), chunk_size, image_keys, state_key / action_key, task override,
            held-out episodes, where the normalisation statistics come from and their modes, and optionally
            ``embodiment``: where its state and action dimensions go in the unified 200-d action space
            (handvla.policy.action_space; the model then reads and writes that space, the loss counts only
            the embodiment's slots, and the deployed policy still takes and returns the robot's vectors)
    model:  the policy's one config, ``handvla.policy.PolicyConfig``: init_checkpoint (a handvla VLA,
            load_vla) | backbone (an InternVL3 -hf folder) | preset (random init); backbone_mode full /
            frozen / lora; head sizes; loss l1 / mse; tiles per camera. Its sizes, keys and cameras are
            filled in from the dataset and the data section (the YAML does not set them)
    train:  handvla.train.trainer.TrainConfig (output_dir, steps, batch, lr, bf16, DDP / FSDP2, time budget)
    eval:   validation error on the held-out episodes during training, open-loop error at the end

State and action sizes, camera keys and image sizes come from the dataset's ``meta/info.json`` (and one
decoded frame per camera), never from source edits. The statistics are fixed once per run: read from the
dataset's ``meta/stats.json`` (``data.stats: dataset``, LeRobot's way) or computed exactly from the training
episodes (``data.stats: compute``), then saved as ``OUTPUT_DIR/normalization/`` and reused on resume, and
finally stored in the exported checkpoint so inference unnormalises with exactly these numbers.

Outputs under ``train.output_dir``: ``checkpoints/`` (the trainer's, for ``--resume``), ``metrics.jsonl``,
``normalization/``, ``text_tokenizer/`` (random presets), ``final/`` (the `HandVLAPolicyModel` checkpoint)
and ``posttrain_summary.json``. Under ``torchrun`` every rank builds the same model; rank 0 writes. The
process group is joined once, here, and its ``DistInfo`` handed to the trainer.

Motion-pretrained vs plain backbone at equal budget is two configs differing in one line
(``model.init_checkpoint: runs/pretrain/final`` vs ``model.backbone: /models/InternVL3-1B-hf``, or
``model.preset: tiny`` for the tiny random backbone) with the same ``train.max_steps`` / ``max_minutes``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from safetensors.torch import load_file

from handvla.atomic import atomic_write_text
from handvla.config import ConfigModel, load_config
from handvla.data.lerobot import INFO_PATH, STATS_PATH
from handvla.errors import ConfigError, InputError, MissingResourceError
from handvla.policy.action_space import EmbodimentMap
from handvla.policy.configuration import BUILT_FIELDS, DEFAULT_CHUNK_SIZE, PolicyConfig
from handvla.policy.modeling import MOTION_TOKENIZER_DIR, HandVLAPolicy, HandVLAPolicyModel
from handvla.policy.processing import Normalizer, NormMode
from handvla.robot.evaluate import evaluate_open_loop
from handvla.robot.lerobot_format import ACTION_KEY, STATE_KEY, ActionChunkDataset, RobotDataset
from handvla.train.distributed import barrier, init_distributed, unwrap
from handvla.train.trainer import TrainConfig, Trainer
from handvla.vla.loading import backbone_layer_types, load_initial_vla, write_summary

FINAL_DIR = "final"
NORM_DIR = "normalization"
SUMMARY_NAME = "posttrain_summary.json"


class ExtraDataset(ConfigModel):
    """Another embodiment's LeRobot v3 dataset, trained in the same run through the unified action space
    (``data.extra_datasets``). Its statistics are its own (stored in the checkpoint under
    ``<embodiment name>:<key>``); its cameras fill the main dataset's camera slots in order.

    Human-hand episodes: an episode store (``handvla data build`` / ``handvla data handworld``) is a LeRobot
    v3 dataset too: ``state_key: right_hand.betas`` (slot ``right_beta``) and ``action_key:
    right_hand.hand_pose`` (slot ``right_theta``: the chunk is the next hand poses)."""

    dataset: str = Field(..., description="LeRobot v3.0 dataset folder")
    embodiment: EmbodimentMap
    image_keys: list[str] | None = Field(None, description="as many cameras as the main dataset's; None: all")
    state_key: str = STATE_KEY
    action_key: str = ACTION_KEY
    task: str | None = None
    max_episodes: int | None = Field(None, gt=0)
    weight: float | None = Field(
        None, gt=0, lt=1,
        description="fraction of the training samples drawn from this dataset (the main dataset and the "
        "extras without a weight share the rest in proportion to their frames); None: by its frames",
    )  # fmt: skip


class PosttrainDataConfig(ConfigModel):
    """The robot dataset (YAML section ``data``)."""

    dataset: str = Field(..., description="LeRobot v3.0 dataset folder")
    chunk_size: int = Field(DEFAULT_CHUNK_SIZE, gt=0, description="Na: actions predicted per observation")
    image_keys: list[str] | None = Field(
        None, description="cameras (video/image features); None: all, []: none"
    )
    state_key: str = STATE_KEY
    action_key: str = ACTION_KEY
    task: str | None = Field(None, description="instruction used instead of the dataset's task text")
    max_episodes: int | None = Field(None, gt=0, description="use only the first N episodes")
    val_episodes: int = Field(0, ge=0, description="hold out the last N episodes (validation, open loop)")
    stats: Literal["dataset", "compute"] = Field(
        "dataset", description="dataset: meta/stats.json; compute: exact stats of the training episodes"
    )
    state_norm: NormMode = "mean_std"
    action_norm: NormMode = "mean_std"
    frame_cache_mb: float = Field(
        1024.0, ge=0, description="decode whole episodes once and keep them in memory when all fit (MB)"
    )
    embodiment: EmbodimentMap | None = Field(
        None,
        description="where the dataset's state and action dimensions go in the unified 200-d action space "
        "(handvla.policy.action_space); None: the policy works in the dataset's own space",
    )
    extra_datasets: list[ExtraDataset] = Field(
        default_factory=list,
        description="other embodiments' datasets trained in the same run (needs embodiment); sampled in "
        "proportion to their frames; validation and the deployed policy use the main dataset",
    )

    @model_validator(mode="after")
    def _extra_needs_unified(self) -> PosttrainDataConfig:
        if self.extra_datasets and self.embodiment is None:
            raise ValueError("extra_datasets: the main dataset needs an embodiment map too (data.embodiment)")
        names = [self.embodiment.name] if self.embodiment else []
        names += [e.embodiment.name for e in self.extra_datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"embodiment names must differ between datasets (their statistics are keyed by it): {names}")
        if sum(e.weight or 0.0 for e in self.extra_datasets) >= 1.0:
            raise ValueError("extra_datasets: the weights sum to 1 or more, leaving the main dataset nothing")
        return self

    @field_validator("image_keys", mode="before")
    @classmethod
    def _one_key(cls, v):
        return [v] if isinstance(v, str) else v


class PosttrainEvalConfig(ConfigModel):
    """Validation (YAML section ``eval``; ``train.eval_every`` sets the period)."""

    val_samples: int = Field(256, ge=0, description="held-out frames for the periodic validation error")
    val_batch_size: int = Field(16, gt=0)
    open_loop_samples: int = Field(200, ge=0, description="held-out frames for the final open-loop eval")


class PosttrainConfig(ConfigModel):
    """The whole ``handvla posttrain`` configuration."""

    data: PosttrainDataConfig
    model: PolicyConfig = Field(default_factory=PolicyConfig)
    train: TrainConfig
    eval: PosttrainEvalConfig = Field(default_factory=PosttrainEvalConfig)

    @model_validator(mode="after")
    def _model_sets_no_built_field(self) -> PosttrainConfig:
        """The policy's sizes, keys, cameras and token ids come from the dataset (and the ``data`` section)
        and the backbone when it is built; a value given under ``model`` would be overwritten."""
        defaults = PolicyConfig()
        given = [
            k
            for k in BUILT_FIELDS
            if k in self.model.model_fields_set and getattr(self.model, k) != getattr(defaults, k)
        ]
        if given:
            raise ValueError(
                f"model.{given[0]}: set from the dataset and the backbone when the policy is built (the data "
                "section chooses chunk_size, image_keys, state_key, action_key, task and embodiment), not in the config"
            )
        return self


# ---- config files ---------------------------------------------------------------------------------------


def load_posttrain_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None
) -> PosttrainConfig:
    """Read a YAML/JSON config (or start from ``base``), apply ``key=value`` overrides (YAML values), validate."""
    return load_config(PosttrainConfig, path, overrides, base, "posttrain config")


# ---- data -------------------------------------------------------------------------------------------


def _feature_dim(ds, key: str) -> int:
    spec = ds.features.get(key)
    if spec is None:
        raise InputError(ds.root / INFO_PATH, f"features.{key}", "a feature of the dataset", "missing")
    if spec.get("dtype") in ("video", "image", "string"):
        raise InputError(
            ds.root / INFO_PATH, f"features.{key}", "a numeric vector feature", spec.get("dtype")
        )
    return int(np.prod(spec.get("shape") or [1]))


def split_episodes(
    num_episodes: int, max_episodes: int | None, val_episodes: int, where: str
) -> tuple[list[int], list[int]]:
    """(training episodes, held-out episodes): the first ``max_episodes``, of which the last ``val_episodes``
    are held out."""
    n = min(num_episodes, max_episodes or num_episodes)
    if val_episodes >= n:
        raise ConfigError(f"{where}: data.val_episodes = {val_episodes} leaves no training episode (of {n})")
    return list(range(n - val_episodes)), list(range(n - val_episodes, n))


def build_normalizer(ds, cfg: PosttrainDataConfig, train_episodes: list[int]):
    """The run's `Normalizer` for the state and action features (see the module doc)."""
    keys = (cfg.state_key, cfg.action_key)
    modes = {cfg.state_key: cfg.state_norm, cfg.action_key: cfg.action_norm}
    names = {k: ds.feature_names(k) for k in keys}
    if cfg.stats == "compute":
        rows = np.concatenate(
            [np.arange(ds.episode_slice(k).start, ds.episode_slice(k).stop) for k in train_episodes]
        )
        arrays = {k: ds.column(k).reshape(len(ds), -1)[rows] for k in keys}
        return Normalizer.from_arrays(arrays, modes, names)
    path = ds.root / STATS_PATH
    if not path.is_file():
        raise MissingResourceError(
            f"{path}: dataset statistics not found; the normalisation needs them (or set data.stats=compute "
            "to compute them from the training episodes)"
        )
    stats = ds.stats
    for k in keys:
        if k not in stats:
            raise InputError(path, k, "statistics of the state and action features", "missing")
        dim = _feature_dim(ds, k)
        if stats[k].shape != (dim,):
            raise InputError(
                path, f"{k}.mean", f"{dim} values (meta/info.json shape)", str(stats[k].shape[0])
            )
    try:
        return Normalizer({k: stats[k] for k in keys}, modes, names)
    except ConfigError as e:
        raise InputError(path, None, "statistics usable by the chosen normalisation modes", str(e)) from None


class PolicyTrainDataset:
    """Training samples: an ``ActionChunkDataset`` (normalised state and actions, camera frames, task)
    encoded by the policy's `PolicyProcessor` (the same code the deployed policy runs). ``unified`` and
    ``image_keys``: another embodiment's map and cameras (``data.extra_datasets``)."""

    def __init__(self, chunks, processor, task: str | None = None, unified=None, image_keys=None):
        self.chunks, self.processor, self.task, self.unified = chunks, processor, task, unified
        self.image_keys = list(processor.config.image_keys if image_keys is None else image_keys)

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = self.chunks[i]
        images = [item["images"][k] for k in self.image_keys]
        out = self.processor.encode(
            self.task if self.task is not None else item["task"], images, item["state"], self.unified
        )
        out["actions"], out["action_mask"] = self.processor.actions_to_model(
            item["actions"], item["action_mask"], self.unified
        )
        return out

    def collate(self, samples):
        return self.processor.collate(samples)


class ConcatTrainDataset:
    """Several `PolicyTrainDataset` as one (the trainer shuffles). ``shares``: the fraction of the samples
    each part gives (None: in proportion to its size). With shares, part k takes ``share_k x`` the parts'
    total size of positions, mapped evenly over its own items: a part drawn more often repeats items, a
    part drawn less often gives an evenly spaced subset of its chunk starts."""

    def __init__(self, parts: list[PolicyTrainDataset], shares: list[float] | None = None):
        self.parts = parts
        sizes = np.array([len(p) for p in parts])
        if shares is None:
            self._sizes = sizes
        else:
            self._sizes = np.maximum(1, np.round(np.asarray(shares, float) * sizes.sum())).astype(int)
        self._ends = np.cumsum(self._sizes)

    def __len__(self) -> int:
        return int(self._ends[-1]) if len(self._ends) else 0

    def __getitem__(self, i: int):
        k = int(np.searchsorted(self._ends, i, side="right"))
        j = i - (int(self._ends[k - 1]) if k else 0)
        return self.parts[k][j * len(self.parts[k]) // int(self._sizes[k])]

    def collate(self, samples):
        return self.parts[0].collate(samples)


def _sample_shares(sizes: list[int], weights: list[float | None]) -> list[float] | None:
    """Sample shares of [main, *extras]: the given extras' weights, the rest split by size; None if no
    extra has a weight (every part by its size)."""
    if all(w is None for w in weights):
        return None
    rest = 1.0 - sum(w for w in weights if w is not None)
    free = [sizes[0]] + [n for n, w in zip(sizes[1:], weights) if w is None]
    shares = [rest * sizes[0] / sum(free)]
    shares += [w if w is not None else rest * n / sum(free) for n, w in zip(sizes[1:], weights)]
    return shares


class _PrefixedNormalizer:
    """A `Normalizer` seen through ``<prefix>:<key>`` names (an extra dataset's statistics)."""

    def __init__(self, normalizer: Normalizer, prefix: str):
        self.normalizer, self.prefix = normalizer, prefix

    def normalize(self, key, x):
        return self.normalizer.normalize(f"{self.prefix}:{key}", x)


def _merged(main: Normalizer, extras: dict[str, Normalizer]) -> Normalizer:
    """One `Normalizer` with the main dataset's features under their own names and each extra dataset's
    under ``<embodiment name>:<key>``."""
    stats, modes, names = dict(main.stats), dict(main.modes), dict(main.names)
    for prefix, n in extras.items():
        stats |= {f"{prefix}:{k}": v for k, v in n.stats.items()}
        modes |= {f"{prefix}:{k}": v for k, v in n.modes.items()}
        names |= {f"{prefix}:{k}": v for k, v in n.names.items()}
    return Normalizer(stats, modes, names, main.eps)


# ---- model ------------------------------------------------------------------------------------------


def policy_config_from_dataset(
    ds, cfg: PosttrainConfig, image_keys: list[str], image_shapes: list[list[int]], tasks: list[str]
) -> PolicyConfig:
    """``cfg.model`` (a copy) with the fields the dataset and the ``data`` section decide filled in."""
    d = cfg.data
    update = dict(
        state_dim=_feature_dim(ds, d.state_key),
        action_dim=_feature_dim(ds, d.action_key),
        chunk_size=d.chunk_size,
        default_task=d.task if d.task is not None else (tasks[0] if tasks else ""),
        image_keys=image_keys,
        image_shapes=image_shapes,
        state_key=d.state_key,
        action_key=d.action_key,
        state_names=ds.feature_names(d.state_key),
        action_names=ds.feature_names(d.action_key),
        fps=float(ds.fps),
        embodiment=d.embodiment,
    )
    pcfg = PolicyConfig.model_validate(cfg.model.model_dump() | update)
    pcfg.unified_map()  # a map that does not fit the dataset's sizes fails here, naming the field
    return pcfg


def _cameras(ds, image_keys: list[str] | None) -> list[str]:
    """The cameras a dataset section names: ``image_keys``, or all video/image features when None."""
    return list(ds.video_keys + ds.image_keys) if image_keys is None else list(image_keys)


def _camera_shapes(ds, keys: list[str]) -> list[list[int]]:
    """(H, W, 3) of each camera, from one decoded frame (also proves the video decodes)."""
    shapes = []
    for k in keys:
        frame = ds.frame(k, 0)
        shapes.append([int(s) for s in frame.shape])
    return shapes


def build_policy(cfg: PosttrainConfig, ds, normalizer, out_dir: Path, is_main: bool, barrier):
    """The `HandVLAPolicyModel` to train (same result on every rank and on every resume), on the VLA
    ``cfg.model`` names (`load_initial_vla`; a random preset's text tokenizer is trained on the task texts
    too)."""
    d, m = cfg.data, cfg.model
    cams = _cameras(ds, d.image_keys)
    for k in cams:
        if k not in ds.video_keys + ds.image_keys:
            raise InputError(
                ds.root / INFO_PATH, f"features.{k}", "a video or image feature (data.image_keys)", "missing"
            )
    tasks = [t for t in ds.tasks if t]
    corpus = tasks + ([d.task] if d.task else [])
    for e in d.extra_datasets:  # a random preset's text tokenizer also learns the other datasets' tasks
        corpus += [t for t in RobotDataset(e.dataset, columns=[]).tasks if t] + ([e.task] if e.task else [])
    bundle = load_initial_vla(m, corpus, out_dir, is_main, barrier)
    pcfg = policy_config_from_dataset(ds, cfg, cams, _camera_shapes(ds, cams), tasks)
    model = HandVLAPolicyModel.from_vla(bundle, pcfg)
    if m.init_checkpoint and (Path(m.init_checkpoint) / MOTION_TOKENIZER_DIR).is_dir():
        model.motion_tokenizer_dir = Path(m.init_checkpoint) / MOTION_TOKENIZER_DIR
    model.apply_backbone_mode()
    if m.gradient_checkpointing:
        model.backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.normalizer = normalizer
    return model


# ---- loss and validation ------------------------------------------------------------------------------


def policy_loss(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The trainer's loss hook: L1 or MSE of normalised action chunks (padding excluded)."""
    out = model(**batch)
    return out.loss, {"l1": float(out.l1.detach()), "mse": float(out.mse.detach())}


@torch.no_grad()
def validation_error(
    model, dataset: PolicyTrainDataset, max_samples: int, batch_size: int
) -> dict[str, float]:
    """Normalised-action L1 / MSE over up to ``max_samples`` evenly spread held-out frames (step-weighted)."""
    was = model.training
    model.eval()
    n = len(dataset)
    idx = np.linspace(0, n - 1, min(n, max_samples)).round().astype(int) if n else np.zeros(0, int)
    device = next(model.parameters()).device
    tot_l1 = tot_mse = tot_w = 0.0
    for i in range(0, len(idx), batch_size):
        batch = dataset.collate([dataset[int(j)] for j in idx[i : i + batch_size]])
        batch = {k: v.to(device) for k, v in batch.items()}
        out = model(**batch)
        w = float(batch["action_mask"].sum())
        tot_l1 += float(out.l1) * w
        tot_mse += float(out.mse) * w
        tot_w += w
    model.train(was)
    return {"val_l1": tot_l1 / max(tot_w, 1.0), "val_mse": tot_mse / max(tot_w, 1.0)}


# ---- the run ----------------------------------------------------------------------------------------


def run_posttrain(cfg: PosttrainConfig, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train the policy, export ``OUTPUT_DIR/final`` and write ``posttrain_summary.json`` (rank 0).
    Returns the summary."""
    t0 = time.time()
    info = init_distributed(cfg.train.device)
    out_dir = Path(cfg.train.output_dir)
    d = cfg.data
    ds = RobotDataset(d.dataset, columns=[d.state_key, d.action_key])
    train_eps, val_eps = split_episodes(ds.num_episodes, d.max_episodes, d.val_episodes, str(ds.root))
    extras = []  # (config, dataset, training episodes, resolved map, cameras), all checked before any work
    n_cams = len(_cameras(ds, d.image_keys))
    for e in d.extra_datasets:
        ds_e = RobotDataset(e.dataset, columns=[e.state_key, e.action_key])
        um = e.embodiment.resolve(_feature_dim(ds_e, e.state_key), _feature_dim(ds_e, e.action_key),
                                  f"data.extra_datasets ({e.dataset}).embodiment")  # fmt: skip
        cams = _cameras(ds_e, e.image_keys)
        if len(cams) != n_cams:
            raise ConfigError(
                f"data.extra_datasets ({e.dataset}).image_keys: {len(cams)} cameras {cams}; the policy's "
                f"prompt has {n_cams} (the main dataset's)"
            )
        n = min(ds_e.num_episodes, e.max_episodes or ds_e.num_episodes)
        extras.append((e, ds_e, list(range(n)), um, cams))
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "posttrain_config.json", cfg.model_dump_json(indent=2))
        if Normalizer.maybe_load(out_dir / NORM_DIR) is None:
            extra_norms = {
                e.embodiment.name: build_normalizer(
                    ds_e, d.model_copy(update={"state_key": e.state_key, "action_key": e.action_key}), eps
                )
                for e, ds_e, eps, _, _ in extras
            }
            _merged(build_normalizer(ds, d, train_eps), extra_norms).save(out_dir / NORM_DIR)
    barrier(info)
    # fixed once per run: a resumed run keeps the statistics its first session computed
    normalizer = Normalizer.load(out_dir / NORM_DIR)
    model = build_policy(cfg, ds, normalizer, out_dir, info.is_main, lambda: barrier(info))
    pcfg = model.config

    def chunks(eps):
        return ActionChunkDataset(
            ds, d.chunk_size, pcfg.image_keys, d.state_key, d.action_key, normalizer, eps, d.frame_cache_mb
        )

    train_set = PolicyTrainDataset(chunks(train_eps), model.processor, d.task)
    shares = [1.0]
    if extras:
        parts = [train_set]
        for e, ds_e, eps, um, cams in extras:
            ch = ActionChunkDataset(
                ds_e, d.chunk_size, cams, e.state_key, e.action_key,
                _PrefixedNormalizer(normalizer, e.embodiment.name), eps, d.frame_cache_mb,
            )  # fmt: skip
            parts.append(PolicyTrainDataset(ch, model.processor, e.task, unified=um, image_keys=cams))
        shares = _sample_shares([len(p) for p in parts], [e.weight for e, *_ in extras])
        train_set = ConcatTrainDataset(parts, shares)
        if shares is None:
            shares = [len(p) / len(train_set) for p in parts]
    val_set = PolicyTrainDataset(chunks(val_eps), model.processor, d.task) if val_eps else None

    def eval_fn(m, step):
        if val_set is None or not cfg.eval.val_samples:
            return {}
        return validation_error(m, val_set, cfg.eval.val_samples, cfg.eval.val_batch_size)

    n_params = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    trainer = Trainer(
        model,
        train_set,
        cfg.train,
        collate_fn=train_set.collate,
        loss_fn=policy_loss,
        eval_fn=eval_fn,
        layer_types=backbone_layer_types(model),
        dist=info,
    )
    result = trainer.train(resume=resume)

    summary: dict[str, Any] = {
        "train": result,
        "output_dir": str(out_dir),
        "dataset": str(ds.root),
        "episodes": {"train": len(train_eps), "val": len(val_eps)},
        "extra_datasets": [
            {"dataset": str(ds_e.root), "embodiment": e.embodiment.name, "episodes": len(eps),
             "sample_share": round(share, 4)}
            for (e, ds_e, eps, _, _), share in zip(extras, shares[1:])
        ],  # fmt: skip
        "main_sample_share": round(shares[0], 4),
        "frames": {"train": len(train_set), "val": len(val_set) if val_set else 0},
        "state_dim": pcfg.state_dim,
        "action_dim": pcfg.action_dim,
        "chunk_size": pcfg.chunk_size,
        "cameras": pcfg.image_keys,
        "backbone_mode": pcfg.backbone_mode,
        "init": pcfg.init,
        "parameters": {"total": n_params, "trainable": n_train},
    }
    if info.is_main:
        export = unwrap(trainer.model)
        if info.enabled and cfg.train.distributed == "fsdp2":
            # sharded parameters: rebuild on this rank and load the trainer's full checkpoint
            export = build_policy(cfg, ds, normalizer, out_dir, True, lambda: None)
            export.load_state_dict(load_file(str(trainer.latest_checkpoint() / "model.safetensors")))
        export = export.to("cpu").eval()
        final = export.save_pretrained(out_dir / FINAL_DIR)
        summary["final"] = str(final)
        if val_set is not None and cfg.eval.val_samples:
            summary["final_val"] = validation_error(
                export, val_set, cfg.eval.val_samples, cfg.eval.val_batch_size
            )
        if val_eps and cfg.eval.open_loop_samples and len(pcfg.image_keys) <= 1:
            # (the open-loop evaluator sends one camera as "image")
            policy = HandVLAPolicy(export, task=d.task)
            ol = evaluate_open_loop(
                policy,
                ds,
                episodes=val_eps,
                max_samples=cfg.eval.open_loop_samples,
                image_key=pcfg.image_keys[0] if pcfg.image_keys else None,
                state_key=d.state_key,
                action_key=d.action_key,
                plot_path=out_dir / "open_loop_val.png",
            )
            summary["open_loop_val"] = ol.to_dict()
        summary["minutes"] = (time.time() - t0) / 60
        write_summary(out_dir / SUMMARY_NAME, summary)
    barrier(info)
    return summary


__all__ = [
    "PolicyTrainDataset",
    "PosttrainConfig",
    "PosttrainDataConfig",
    "PosttrainEvalConfig",
    "build_normalizer",
    "build_policy",
    "load_posttrain_config",
    "policy_loss",
    "run_posttrain",
    "split_episodes",
    "validation_error",
]
