"""Training and evaluation data for the motion tokenizer: hand motions -> feature clips -> random windows.

Sources (``load_sources``):
- ``builtin``: procedural motion from ``handvla.synth.builtin_motion.generate_dataset`` (left and right).
- joint files (``.npz`` with ``joints``, the layout of ``/work/shared/data/real_hands``): resampled to the
  tokenizer's fps (``JointsRecording.resample``) and fitted to hand parameters
  (``handvla.hand.fitting.fit_recording``); fits are cached by file content when a cache folder is given.
- parameter files (``.npz`` from ``HandMotion.to_dict``): resampled to the tokenizer's fps if needed
  (``HandMotion.resampled``).
- episode stores (folders made by ``handvla data build``, ``handvla.data.store``): every hand of every
  episode with valid frames, resampled to the tokenizer's fps if needed.
A source may also be a glob (``data/*.npz``); any other folder stands for the ``.npz`` files in it.
Every motion keeps the source it came from (``LoadedMotion.source``) and its file (``group``: the file, or
the store episode), so ``split_by_file`` can hold out whole files and ``source_report`` can say which
sources were used with how many frames.

Range checks (``joints_range_warnings``, ``motion_range_warnings``, ``stats_range_warnings``): inputs a
tokenizer trained on camera-frame metres cannot represent (a world/mocap frame far from the camera,
millimetres) get a warning naming the file and the field, printed to stderr when the file is loaded and
kept in ``LoadedMotion.warnings`` (for run summaries).

Left hands are mirrored into the right-hand frame (``HandMotion.mirrored``) before features are
computed: one tokenizer serves both hands. Training windows are ``frames_per_block`` (15) consecutive
frames at a random offset, padded to ``window_frames`` (16) by repeating the last frame, as at encoding
time; the loss mask excludes padding and invalid frames.
"""

from __future__ import annotations

import glob
import hashlib
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from handvla.atomic import atomic_write_bytes
from handvla.data.store import EpisodeStore
from handvla.errors import InputError, MissingResourceError
from handvla.hand import fitting, ik
from handvla.hand import rotations as R
from handvla.hand.features import FeatureNormalizer, FeatureSpec, motion_to_features
from handvla.hand.fitting import fit_recording
from handvla.hand.io import JointsRecording, load_any, load_joints, load_motion, save_motion
from handvla.hand.motion import HandMotion
from handvla.hand.registry import shared_hand_model
from handvla.synth.builtin_motion import generate_dataset
from handvla.tokenizer.configuration import TokenizerConfig
from handvla.tokenizer.modeling import fill_invalid

BUILTIN = "builtin"

#: plausible inputs for a tokenizer of camera-frame motion in metres: the wrist within this distance of the
#: camera (built-in motion stays within 0.7 m, the Leap files within 0.4 m of their device)
MAX_WRIST_DISTANCE_M = 2.0
#: length of the middle finger, MCP to tip along its bones (real files: 0.088-0.102 m)
FINGER_LENGTH_RANGE_M = (0.04, 0.16)
#: a frame is out of the tokenizer's range when a field is this many training stds from its training mean
#: (root mean square over the field's dimensions)
MAX_STATS_Z = 5.0
#: ... and a file gets a warning when more than this share of its valid frames is out of range
MAX_OUT_OF_RANGE_SHARE = 0.1


# ---------------------------------------------------------------------------------------------------------
# Loading motions
# ---------------------------------------------------------------------------------------------------------


@dataclass
class LoadedMotion:
    """One hand's motion at the tokenizer's fps, and where it came from."""

    name: str
    motion: HandMotion
    kind: str  # 'builtin', 'params' or 'joints'
    observed: np.ndarray | None = None  # (T, 21, 3) observed joints (joint files), metres, NaN = missing
    root_is_palm: bool = False
    #: (6, 3) wrist frame: the fit's palm-landmark offsets (``FitResult.landmark_offsets``), or None
    landmark_offsets: np.ndarray | None = None
    fit_mpjpe_mm: float | None = None
    source: str = ""  # the source as given (``builtin``, a path, a glob, a store)
    group: str = ""  # its file: the path, or ``STORE#episode`` (``split_by_file`` keeps groups whole)
    warnings: list[str] = field(default_factory=list)  # range warnings (already printed)


def is_store(path: str | Path) -> bool:
    """True for an episode store folder (``handvla data build``'s output)."""
    return (Path(path) / "meta" / "info.json").is_file()


def expand_sources(sources: list[str]) -> list[tuple[str, str]]:
    """``(source as given, item)`` pairs: ``builtin`` stays, a glob becomes its matches, an episode store
    stays a store, any other folder becomes its sorted ``.npz`` files; each item is checked to exist."""
    out: list[tuple[str, str]] = []
    for s in sources:
        if s == BUILTIN:
            out.append((s, s))
            continue
        if glob.has_magic(s):
            matches = sorted(glob.glob(s, recursive=True))
            items = [m for m in matches if is_store(m) or (Path(m).is_file() and m.endswith(".npz"))]
            if not items:
                raise MissingResourceError(f"{s}: the pattern matches no .npz motion file or episode store")
            out.extend((s, m) for m in items)
            continue
        p = Path(s)
        if p.is_dir() and is_store(p):
            out.append((s, str(p)))
        elif p.is_dir():
            files = sorted(str(f) for f in p.glob("*.npz"))
            if not files:
                raise MissingResourceError(
                    f"{p}: folder holds no .npz motion files and is not an episode store (no meta/info.json)"
                )
            out.extend((s, f) for f in files)
        elif p.is_file():
            out.append((s, str(p)))
        else:
            raise MissingResourceError(
                f"{p}: motion data not found (expected 'builtin', a .npz file, a folder, a glob or an "
                "episode store)"
            )
    return out


def expand_paths(sources: list[str]) -> list[str]:
    """The items of ``expand_sources`` (``builtin``, files and stores), in order."""
    return [item for _, item in expand_sources(sources)]


# ---------------------------------------------------------------------------------------------------------
# Range checks
# ---------------------------------------------------------------------------------------------------------


def joints_range_warnings(rec: JointsRecording, where: str) -> list[str]:
    """Warnings for observed joints a camera-frame metre tokenizer cannot represent: hands of implausible
    size (millimetres, centimetres) or far from the origin (a world / mocap frame)."""
    j = rec.joints[rec.observed]
    if not len(j):
        return []
    out = []
    finger = float(np.median(np.linalg.norm(np.diff(j[:, 9:13], axis=1), axis=-1).sum(-1)))
    lo, hi = FINGER_LENGTH_RANGE_M
    if not lo <= finger <= hi:
        unit = " (millimetres?)" if finger > 10 else " (centimetres?)" if finger > 1 else ""
        out.append(
            f"{where}: field 'joints': middle finger {finger:.4g} long, expected {lo}-{hi} m{unit}: "
            "the tokenizer works in metres"
        )
    far = float(np.linalg.norm(j[:, 0], axis=-1).max())
    if far > MAX_WRIST_DISTANCE_M and lo <= finger <= hi:
        out.append(
            f"{where}: field 'joints': the hand goes {far:.3g} m from the origin, expected within "
            f"{MAX_WRIST_DISTANCE_M} m of the camera (a world or mocap frame?)"
        )
    return out


def motion_range_warnings(lm: LoadedMotion) -> list[str]:
    """Warnings for a hand-parameter motion far from the camera (``wrist_pos`` beyond
    ``MAX_WRIST_DISTANCE_M`` in valid frames)."""
    m = lm.motion
    v = np.asarray(m.valid, bool)
    if not v.any():
        return []
    far = float(np.linalg.norm(m.wrist_pos[v], axis=-1).max())
    if far > MAX_WRIST_DISTANCE_M:
        return [
            f"{lm.group or lm.name}: field 'wrist_pos': up to {far:.3g} m from the camera, expected within "
            f"{MAX_WRIST_DISTANCE_M} m (a world or mocap frame, or millimetres?)"
        ]
    return []


def stats_range_warnings(
    spec: FeatureSpec,
    normalizer: FeatureNormalizer,
    field_weights: dict[str, float],
    clips: list[FeatureClip],
    where: dict[str, str] | None = None,
) -> list[str]:
    """Warnings for clips whose features lie outside the tokenizer's normalisation stats: per feature field,
    the share of valid frames whose distance from the training mean, in training stds (``normalizer``'s std
    undone of its ``field_weights``) and as a root mean square over the field's dimensions, exceeds
    ``MAX_STATS_Z``. ``where`` maps clip names to file names."""
    out = []
    slices = spec.slices()
    mean, std = normalizer.mean, normalizer.std.clone()
    for name, w in field_weights.items():
        if name in slices:
            std[slices[name]] *= float(w)
    for c in clips:
        f = c.feats[c.valid]
        if not len(f):
            continue
        z = (f - mean) / std.clamp(min=1e-8)
        for fname, sl in slices.items():
            zf = z[:, sl].square().mean(-1).sqrt()
            share = float((zf > MAX_STATS_Z).float().mean())
            if share > MAX_OUT_OF_RANGE_SHARE:
                out.append(
                    f"{(where or {}).get(c.name, c.name)}: field '{fname}': {100 * share:.0f}% of frames are "
                    f"more than {MAX_STATS_Z:g} std from the tokenizer's training data (max {float(zf.max()):.3g} "
                    "std): out of its range, expect large reconstruction errors"
                )
    return out


def warn(lines: list[str]) -> None:
    """Print warnings to stderr, one line each."""
    for line in lines:
        print(f"WARNING: {line}", file=sys.stderr, flush=True)


def _fit_cache_key(path: str, fps: float) -> str:

    h = hashlib.sha256(Path(path).read_bytes())
    h.update(f"fps={fps}".encode())
    h.update(repr(fitting.FitConfig()).encode())
    for module in (fitting, ik):  # a changed fitter invalidates old fits
        h.update(inspect.getsource(module).encode())
    return h.hexdigest()[:24]


def load_joint_file(path: str, fps: float, fit_cache: str | Path | None = None) -> LoadedMotion:
    """A joint recording -> resampled to ``fps`` -> fitted ``HandMotion`` (cached under ``fit_cache``)."""

    raw = load_joints(path)
    warnings = joints_range_warnings(raw, str(path))
    warn(warnings)
    rec = raw.resample(fps)
    name = Path(path).stem
    cache_file = meta_file = None
    if fit_cache is not None:
        key = _fit_cache_key(path, fps)
        cache_file = Path(fit_cache) / f"{name}.{key}.npz"
        meta_file = cache_file.with_suffix(".json")
    if cache_file is not None and cache_file.is_file() and meta_file.is_file():
        motion = load_motion(cache_file)
        meta = json.loads(meta_file.read_text())
        offsets = meta.get("landmark_offsets")
        offsets = np.asarray(offsets, np.float32).reshape(6, 3) if offsets is not None else None
        fit_mm = meta["fit_mpjpe_mm"]
    else:
        res = fit_recording(rec)
        motion, offsets, fit_mm = res.motion, res.landmark_offsets, float(res.fit_mpjpe_mm)
        if cache_file is not None:
            save_motion(cache_file, motion)
            meta = {
                "source": str(path),
                "fit_mpjpe_mm": fit_mm,
                "landmark_offsets": None if offsets is None else offsets.astype(float).tolist(),
            }
            atomic_write_bytes(meta_file, json.dumps(meta).encode())
    return LoadedMotion(
        name,
        motion,
        "joints",
        observed=rec.joints,
        root_is_palm=rec.root_is_palm,
        landmark_offsets=offsets,
        fit_mpjpe_mm=fit_mm,
        source=str(path),
        group=str(path),
        warnings=warnings,
    )


def load_motion_file(path: str, fps: float, fit_cache: str | Path | None = None) -> LoadedMotion:
    """A joint file or a parameter file -> ``LoadedMotion`` at ``fps``."""

    loaded = load_any(path)
    if isinstance(loaded, HandMotion):
        return LoadedMotion(
            Path(path).stem, loaded.resampled(fps), "params", source=str(path), group=str(path)
        )
    return load_joint_file(path, fps, fit_cache)


def load_store_motions(
    path: str | Path, fps: float, progress: bool = False, max_episodes: int | None = None
) -> list[LoadedMotion]:
    """Every hand with valid frames of every episode of an episode store (of its first ``max_episodes``), at
    ``fps`` (kind 'store'; the group of both hands of an episode is the episode, so a split keeps them
    together)."""
    store = EpisodeStore(path)
    out = []
    n = len(store) if max_episodes is None else min(len(store), max_episodes)
    for k in tqdm(range(n), desc=f"reading {Path(path).name}", disable=not progress, leave=False):
        ep = store.load_episode(k, with_video=False)
        for side, m in ep.hands.items():
            if int(np.asarray(m.valid).sum()) < 2:
                continue
            if abs(m.fps - fps) > 1e-6:
                m = m.resampled(fps)
            out.append(
                LoadedMotion(
                    f"{Path(path).name}/{ep.key or k}/{side}",
                    m,
                    "store",
                    source=str(path),
                    group=f"{path}#{k}",
                )
            )
    if not out:
        raise InputError(
            path, "episodes", "at least one episode with a valid hand", f"{len(store)} episodes, no hand"
        )
    return out


def builtin_motions(n_sequences: int, seconds: float, seed: int, fps: float) -> list[LoadedMotion]:

    motions = generate_dataset(n_sequences, seconds, seed=seed, fps=fps)
    return [
        LoadedMotion(f"builtin_{seed}_{i}", m, BUILTIN, source=BUILTIN, group=BUILTIN)
        for i, m in enumerate(motions)
    ]


def load_sources(
    sources: list[str],
    fps: float,
    builtin_sequences: int = 512,
    builtin_seconds: float = 10.0,
    seed: int = 0,
    fit_cache: str | Path | None = None,
    progress: bool = False,
    max_motions: int | None = None,
) -> list[LoadedMotion]:
    """Every source -> motions at ``fps``. ``builtin`` expands to ``builtin_sequences`` sequences; stores to
    their episodes' hands. Motions far from the camera get a printed warning (``motion_range_warnings``).
    ``max_motions``: at most this many, reading no further (of a store, as many episodes as motions are
    still needed: fewer motions if some of those episodes hold no valid hand)."""

    out: list[LoadedMotion] = []
    items = expand_sources(sources)
    for given, s in tqdm(items, desc="loading motion", disable=not progress or len(items) < 2, leave=False):
        left = None if max_motions is None else max_motions - len(out)
        if left is not None and left <= 0:
            break
        if s == BUILTIN:
            out.extend(builtin_motions(builtin_sequences, builtin_seconds, seed, fps))
            continue
        loaded = (
            load_store_motions(s, fps, progress, max_episodes=left)  # an episode gives at least one hand
            if is_store(s)
            else [load_motion_file(s, fps, fit_cache)]
        )
        for lm in loaded:
            lm.source = given
            extra = motion_range_warnings(lm)
            warn(extra)
            lm.warnings = lm.warnings + extra
        out.extend(loaded)
    return out if max_motions is None else out[:max_motions]


def split_by_file(
    motions: list[LoadedMotion], fraction: float, seed: int
) -> tuple[list[LoadedMotion], list[LoadedMotion]]:
    """(training, held-out) motions: ``fraction`` of the files (``group``s) of non-built-in motions, drawn
    with ``seed``, are held out whole; at least one file each side when there are two or more files and
    ``fraction`` > 0. Built-in motion always trains."""
    groups = sorted({m.group for m in motions if m.kind != BUILTIN})
    n_val = 0
    if fraction > 0 and len(groups) >= 2:
        n_val = min(max(round(fraction * len(groups)), 1), len(groups) - 1)
    order = np.random.default_rng(seed).permutation(len(groups))
    val = {groups[i] for i in order[:n_val]}
    return [m for m in motions if m.group not in val], [m for m in motions if m.group in val]


def source_report(motions: list[LoadedMotion], role: str) -> list[dict]:
    """One row per source as given: its kind, files (or sequences / store hands), frames and seconds at the
    tokenizer's fps, and ``role`` ('train' or 'val')."""
    rows: dict[str, dict] = {}
    for m in motions:
        r = rows.setdefault(
            m.source or m.name,
            {
                "source": m.source or m.name,
                "role": role,
                "kind": m.kind,
                "files": set(),
                "motions": 0,
                "frames": 0,
                "valid_frames": 0,
                "seconds": 0.0,
            },
        )
        r["files"].add(m.group)
        r["motions"] += 1
        r["frames"] += len(m.motion)
        r["valid_frames"] += int(np.asarray(m.motion.valid).sum())
        r["seconds"] += len(m.motion) / m.motion.fps
    for r in rows.values():
        r["files"] = len(r["files"])
        r["seconds"] = round(r["seconds"], 2)
    return list(rows.values())


# ---------------------------------------------------------------------------------------------------------
# Feature clips and windows
# ---------------------------------------------------------------------------------------------------------


@dataclass
class FeatureClip:
    """One motion's features in the right-hand frame."""

    feats: torch.Tensor  # (T, D) raw features
    betas: torch.Tensor  # (10,)
    valid: torch.Tensor  # (T,) bool
    name: str
    weight: float = 1.0


def make_clips(
    config: TokenizerConfig, motions: list[LoadedMotion], real_weight: float = 1.0
) -> list[FeatureClip]:
    """Features of each motion (left hands mirrored to right; invalid frames filled, masked later)."""
    hand = shared_hand_model(config.hand_model, "right")
    clips = []
    for lm in motions:
        m = fill_invalid(lm.motion)
        if m.side == "left":
            m = m.mirrored()
        feats = motion_to_features(config.spec, m, hand)
        w = 1.0 if lm.kind == BUILTIN else real_weight
        clips.append(
            FeatureClip(feats, torch.from_numpy(m.betas.copy()), torch.from_numpy(m.valid.copy()), lm.name, w)
        )
    return clips


def _yaw_matrices(angles: np.ndarray) -> torch.Tensor:
    """(B,) radians -> (B, 3, 3) rotations about the y axis (the vertical of both the OpenCV camera frame,
    y down, and y-up device frames)."""
    c, s = np.cos(angles), np.sin(angles)
    z, o = np.zeros_like(c), np.ones_like(c)
    m = np.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(-1, 3, 3)
    return torch.as_tensor(m, dtype=torch.float32)


def rotate_features(spec: FeatureSpec, feats: torch.Tensor, rot: torch.Tensor) -> torch.Tensor:
    """Rotate the whole scene: feats (B, W, D) raw, rot (B, 3, 3) -> features of the rotated motion
    (wrist rotation R -> rot R, wrist position p -> rot p; camera-frame joints rotate too; hand-frame
    finger features do not change)."""
    s = spec.slices()
    out = feats.clone()
    go = feats[..., s["global_orient"]]
    G = R.rot6d_to_matrix(go) if spec.rot == "6d" else R.axis_angle_to_matrix(go)
    G = rot[:, None] @ G
    out[..., s["global_orient"]] = R.matrix_to_rot6d(G) if spec.rot == "6d" else R.matrix_to_axis_angle(G)
    out[..., s["wrist_pos"]] = (rot[:, None] @ feats[..., s["wrist_pos"]][..., None])[..., 0]
    if spec.has_joints and spec.joints_frame == "camera":
        j = feats[..., s["joints"]].reshape(feats.shape[:-1] + (21, 3))
        out[..., s["joints"]] = (j @ rot[:, None].transpose(-1, -2)).reshape(feats.shape[:-1] + (63,))
    return out


@dataclass
class Batch:
    feats: torch.Tensor  # (B, W, D) raw features
    betas: torch.Tensor  # (B, 10)
    mask: torch.Tensor  # (B, W) bool: real, valid frames (not padding)


class WindowSampler:
    """Random training windows: a clip (weighted by its frame count x weight), a random start, then
    ``frames_per_block`` frames padded to ``window_frames``; optional scene augmentation (yaw, shift) and
    speed augmentation (``aug_speed`` > 1: each window plays its clip faster or slower by a factor drawn
    log-uniformly from [1 / aug_speed, aug_speed], features interpolated linearly between neighbouring
    frames).

    All randomness comes from ``self.rng`` (a numpy Generator), whose state is saved in checkpoints so a
    resumed run draws the same batches."""

    def __init__(
        self,
        config: TokenizerConfig,
        clips: list[FeatureClip],
        seed: int = 0,
        aug_yaw_deg: float = 0.0,
        aug_shift_m: float = 0.0,
        aug_speed: float = 1.0,
    ):
        if not clips:
            raise InputError("tokenizer training", "data", "at least one motion clip", "none")
        self.config, self.clips = config, clips
        self.spec = config.spec
        self.F, self.W = config.frames_per_block, config.window_frames
        self.aug_yaw = np.deg2rad(aug_yaw_deg)
        self.aug_shift = aug_shift_m
        if not aug_speed >= 1.0:
            raise InputError("tokenizer training", "aug_speed", "a factor >= 1 (1 = off)", aug_speed)
        self.aug_speed = float(aug_speed)
        self.rng = np.random.default_rng(seed)
        n_starts = np.array([max(len(c.feats) - self.F + 1, 1) for c in clips], np.float64)
        w = n_starts * np.array([c.weight for c in clips])
        self.p = w / w.sum()
        self.n_starts = n_starts.astype(int)

    def sample(self, batch_size: int) -> Batch:
        ci = self.rng.choice(len(self.clips), size=batch_size, p=self.p)
        if self.aug_speed > 1.0:
            speed = np.exp(self.rng.uniform(-np.log(self.aug_speed), np.log(self.aug_speed), batch_size))
            # a faster window spans more of its clip: its start leaves room for (F - 1) * speed frames
            span = np.ceil((self.F - 1) * speed).astype(int) + 1
            lengths = np.array([len(self.clips[c].feats) for c in ci])
            starts = (self.rng.random(batch_size) * np.maximum(lengths - span + 1, 1)).astype(int)
        else:
            speed = np.ones(batch_size)
            starts = (self.rng.random(batch_size) * self.n_starts[ci]).astype(int)
        feats, betas, mask = [], [], []
        k = np.arange(self.W)
        for c, s, v in zip(ci, starts, speed):
            clip = self.clips[c]
            T = len(clip.feats)
            pos = s + np.minimum(k, self.F - 1) * v  # padding repeats the block's last frame
            real = (k < self.F) & (pos <= T - 1)  # padding: past the block, or past the clip's end
            pos = np.minimum(pos, T - 1)
            i0 = np.floor(pos).astype(int)
            if v == 1.0:  # whole frames: no interpolation (the exact frames)
                feats.append(clip.feats[i0])
                mask.append(torch.from_numpy(real) & clip.valid[i0])
            else:  # rotations too are interpolated in their feature form (neighbouring frames: close)
                i1 = np.minimum(i0 + 1, T - 1)
                w = torch.as_tensor(pos - i0, dtype=clip.feats.dtype)[:, None]
                feats.append(clip.feats[i0] * (1 - w) + clip.feats[i1] * w)
                both = clip.valid[i0] & (clip.valid[i1] | torch.from_numpy(pos == i0))  # i1 weighs nothing
                mask.append(torch.from_numpy(real) & both)
            betas.append(clip.betas)
        batch = Batch(torch.stack(feats), torch.stack(betas), torch.stack(mask))
        if self.aug_yaw > 0:
            ang = self.rng.uniform(-self.aug_yaw, self.aug_yaw, batch_size)
            batch.feats = rotate_features(self.spec, batch.feats, _yaw_matrices(ang))
        if self.aug_shift > 0:
            shift = torch.as_tensor(
                self.rng.uniform(-self.aug_shift, self.aug_shift, (batch_size, 1, 3)), dtype=torch.float32
            )
            batch.feats[..., self.spec.slices()["wrist_pos"]] += shift
        return batch

    def fit_normalizer(self, n_windows: int = 4096, seed: int = 12345) -> FeatureNormalizer:
        """Normalisation stats over ``n_windows`` windows drawn like training windows (augmentation
        included) from a separate generator, over real frames only (see ``normalizer_from_features``)."""
        saved = self.rng
        self.rng = np.random.default_rng(seed)
        try:
            b = self.sample(n_windows)
        finally:
            self.rng = saved
        return normalizer_from_features(self.config, b.feats[b.mask])


def normalizer_from_features(config: TokenizerConfig, feats: torch.Tensor) -> FeatureNormalizer:
    """Mean per dimension; std per dimension ('dim') or one per feature field ('field': the RMS of the
    field's per-dimension stds); then each field's std divided by its ``field_weights`` entry."""
    norm = FeatureNormalizer.fit(feats)
    std = norm.std.clone()
    slices = config.spec.slices()
    if config.normalization == "field":
        for sl in slices.values():
            std[sl] = std[sl].square().mean().sqrt()
    for name, w in config.field_weights.items():
        if name in slices:  # fields the feature set lacks (joints in D99) are ignored
            std[slices[name]] /= float(w)
    return FeatureNormalizer(norm.mean, std)


__all__ = [
    "BUILTIN",
    "Batch",
    "FeatureClip",
    "LoadedMotion",
    "WindowSampler",
    "builtin_motions",
    "expand_paths",
    "expand_sources",
    "is_store",
    "joints_range_warnings",
    "load_store_motions",
    "motion_range_warnings",
    "source_report",
    "split_by_file",
    "stats_range_warnings",
    "warn",
    "load_joint_file",
    "load_motion_file",
    "load_sources",
    "make_clips",
    "rotate_features",
]
