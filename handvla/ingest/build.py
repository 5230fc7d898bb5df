"""``handvla data build``: source datasets -> one standardised, aligned (and balanced) episode store.

For every enabled source of the config and every episode it lists::

    read (handvla.ingest.sources) -> intrinsics override (handvla.ingest.align) -> standardise
    (handvla.ingest.standardize: fit joints, clean pseudo-labels, 15 fps) -> align to the canonical camera
    -> balancing copies (mirror / roll / time-scale) -> EpisodeWriter (atomic, resumable)

Episodes are processed in parallel (``--workers``: a process pool; each worker reads, fits, warps and
encodes the video to a temporary mp4, the main process commits). A rerun skips every episode whose key is
already in the store (``EpisodeWriter.has``); a killed build leaves only whole episodes. An episode that
cannot be converted (a corrupt HDF5, a missing intrinsics file, all-NaN joints, a mislabelled hand, no
video for a video store, ...) is reported and skipped and the build goes on: ``<out>/build_report.jsonl``
has one line per episode (``status``: written / exists / failed / skipped, ``reason``, and the
standardisation report: fit error, frames fitted / repaired / dropped, swaps, outliers), and
``<out>/build_summary.json`` the totals (both written atomically, also after Ctrl-C).

The config is ``BuildConfig`` below (YAML, every section optional except ``sources``; unknown keys are
errors), read by ``load_build_config``; ``configs/build_unihand.yaml`` is a commented example.

Clusters (README paragraph): ``handvla data build --config C --out shard_i --shard i/n`` builds only the
episodes whose stable hash (SHA-1 of the output key; augmented copies follow their original) falls in
shard ``i`` of ``n``, into its own store, so ``n`` machines build ``n`` disjoint stores with the same
config (balancing counts every source's full listing, so every shard makes the same plan).
``handvla data merge OUT shard_0 ... shard_{n-1}`` then writes one store whose episodes come in the order
a single build would have written them (each episode records its build position in its provenance), with
the same parquet data and the same mp4 files (copied, not re-encoded); merging is resumable too (keys
already in OUT are skipped) and refuses stores of different fps, hand model, joints or video settings.

Ray (``--ray ADDRESS``, extra ``handvla[cluster]``, ``handvla.ingest.distributed``): the same config, with
each episode a Ray task on a cluster (or a local instance: ``--ray local``); the driver commits the
returned episodes in job order with the same writer, so the store equals a single-machine build. Worker
deaths are retried by Ray (``--max-retries``); an episode lost after its retries is reported as failed.

Before any work the whole config is checked (source folders, adapter options, MANO files, intrinsics
files, every source listing at least one episode, ``--out`` compatible with the config); a source that
lists nothing gets a hint (root one level too deep or too shallow, another adapter that finds episodes
there). A build that wrote nothing leaves no store behind (only its report and summary), and an empty store
left by an older failed build is re-created. ``check_outcome`` (called by the CLI, exit 2) fails a build
where the store is empty or more than ``max_failed_fraction`` of the episodes tried failed or were
skipped, naming the reasons with their counts.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from handvla.atomic import atomic_write_text
from handvla.config import ConfigModel, load_config
from handvla.data.lerobot import INFO_PATH
from handvla.data.store import EpisodeStore, EpisodeWriter
from handvla.errors import ConfigError, HandvlaError, InputError
from handvla.hand.mano import find_mano_file
from handvla.ingest.align import (
    AlignConfig,
    IntrinsicsConfig,
    ViewBalanceConfig,
    align_episode,
    apply_augmentation,
    apply_intrinsics,
    augmentations_for,
    balance_plan,
    iter_frames_at,
    load_intrinsics_file,
)
from handvla.ingest.distributed import Lost, RayRunner
from handvla.ingest.sources import SOURCES, get_source
from handvla.ingest.standardize import StandardizeConfig, standardize_episode
from handvla.video import write_video

REPORT_NAME = "build_report.jsonl"
SUMMARY_NAME = "build_summary.json"
TMP_PREFIX = ".build_tmp"
HINT_BUDGET_S = 10.0  # seconds spent looking for why a source lists no episode


# ---------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------


class SourceConfig(ConfigModel):
    """One dataset to ingest (YAML ``sources[i]``)."""

    name: str = Field(description="adapter name (handvla.ingest.sources.SOURCES)")
    root: str = Field(description="the dataset folder in its native layout")
    label: str | None = Field(None, description="key prefix and balancing group; default: name")
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="adapter constructor options")
    intrinsics: IntrinsicsConfig | None = None
    include: list[str] = Field(default_factory=list, description="fnmatch patterns on keys (any)")
    exclude: list[str] = Field(default_factory=list, description="fnmatch patterns on keys")
    limit: int | None = Field(None, ge=1, description="at most this many episodes (after filtering)")

    @model_validator(mode="after")
    def _check(self) -> SourceConfig:

        if self.name not in SOURCES:
            raise ValueError(f"unknown source {self.name!r}; expected one of {', '.join(sorted(SOURCES))}")
        if "mano_dir" in self.options:
            raise ValueError("give mano_dir at the top level of the config, not in options")
        if self.label is not None and (not self.label or "/" in self.label or "@" in self.label):
            raise ValueError(f"label must be a non-empty name without '/' or '@', got {self.label!r}")
        return self

    @property
    def tag(self) -> str:
        return self.label or self.name


class BuildConfig(ConfigModel):
    """A build (YAML file given to ``handvla data build --config``)."""

    hand_model: Literal["builtin", "mano"] = "builtin"
    mano_dir: str | None = None
    joints: bool = True
    video: bool = True
    workers: int = Field(1, ge=1)
    crf: int = Field(20, ge=0, le=51, description="libx264 quality of the stored video")
    preset: str = "veryfast"
    encoder_threads: int = Field(
        1,
        ge=0,
        description="libx264 threads per stored video. 1 (workers already encode in parallel) writes the "
        "same bytes on every machine and node; 0 lets libx264 choose from the cores, machine-dependent",
    )
    standardize: StandardizeConfig = Field(default_factory=StandardizeConfig)
    align: AlignConfig = Field(default_factory=AlignConfig)
    balance: ViewBalanceConfig = Field(default_factory=ViewBalanceConfig)
    sources: list[SourceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> BuildConfig:
        if self.hand_model == "mano" and not self.mano_dir:
            raise ValueError(
                "hand_model 'mano' needs mano_dir (the folder with MANO_RIGHT.pkl / MANO_LEFT.pkl)"
            )
        tags = [s.tag for s in self.sources if s.enabled]
        dup = sorted({t for t in tags if tags.count(t) > 1})
        if dup:
            raise ValueError(f"two enabled sources share the label {dup[0]!r}: give each a distinct 'label'")
        if isinstance(self.balance.target, dict):
            unknown = sorted(set(self.balance.target) - {s.tag for s in self.sources})
            if unknown:
                raise ValueError(f"balance.target names unknown source labels {unknown}")
        return self


def load_build_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: dict[str, Any] | None = None
) -> BuildConfig:
    """The build config from a YAML/JSON file (or ``base``) with ``key=value`` overrides
    (``handvla.config.load_config``): ``ConfigError`` naming the file, the field and what was expected."""
    return load_config(BuildConfig, path, overrides, base, "build config")


# ---------------------------------------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    """One source episode and the augmented copies to make of it."""

    source_pos: int  # index into config.sources
    key_pos: int  # index in the source's (filtered) listing
    key: str  # the adapter's key
    out_key: str  # the store key: '<label>/<key>'
    chains: tuple = ()  # augmentation op chains (align.augmentations_for)

    def all_keys(self) -> list[str]:
        return [self.out_key] + [augmented_key(self.out_key, c) for c in self.chains]


def augmented_key(base: str, chain) -> str:
    """The store key of an augmented copy (as ``align.apply_augmentation`` names it)."""
    parts = []
    for op, p in chain:
        parts.append({"mirror": "mirror", "rotate": f"rot{p:+.1f}", "timescale": f"speed{p:.2f}"}[op])
    return f"{base}@" + "+".join(parts)


def shard_of(key: str, n: int) -> int:
    """The shard (0..n-1) of an episode key: a stable hash (SHA-1), the same on every machine."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") % n


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n."""
    if text is None:
        return None
    try:
        i, n = (int(v) for v in str(text).split("/"))
    except ValueError:
        raise ConfigError(f"--shard: expected i/n such as 0/4, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard: expected 0 <= i < n, got {text!r}")
    return i, n


def _source(sc: SourceConfig, mano_dir: str | None):

    return get_source(sc.name, mano_dir=mano_dir, **sc.options)


def check_config(cfg: BuildConfig) -> None:
    """What the config names must exist, checked before any work: every enabled source's folder and
    adapter options, the MANO folder (where given or needed), intrinsics files and EXIF images.
    ConfigError naming the field (``sources[i].root``, ``mano_dir``, ...) and what was expected."""
    needs_mano = cfg.hand_model == "mano"
    for pos, sc in enumerate(cfg.sources):
        if not sc.enabled:
            continue
        where = f"sources[{pos}] ({sc.tag})"
        src = _source(sc, cfg.mano_dir)
        needs_mano = needs_mano or bool(getattr(src, "needs_mano", False))
        root = Path(sc.root).expanduser()
        if not root.is_dir():
            got = "a file" if root.exists() else "no such folder"
            raise ConfigError(f"{where}.root: expected the dataset folder of '{sc.name}', got {root} ({got})")
        intr = sc.intrinsics
        if intr is not None and intr.file is not None:
            try:
                load_intrinsics_file(intr.file)
            except InputError as e:
                raise ConfigError(f"{where}.intrinsics.file: {e}") from None
        if intr is not None and intr.exif is not None and intr.exif.image is not None:
            if not Path(intr.exif.image).expanduser().is_file():
                raise ConfigError(
                    f"{where}.intrinsics.exif.image: expected an image file, got {intr.exif.image}"
                )
    if cfg.mano_dir is not None or needs_mano:
        if cfg.mano_dir is None:
            users = [
                sc.tag for sc in cfg.sources if sc.enabled and getattr(SOURCES[sc.name], "needs_mano", False)
            ]
            raise ConfigError(
                f"mano_dir: the sources {users} need the MANO hand model: give mano_dir (the folder with "
                "MANO_RIGHT.pkl / MANO_LEFT.pkl)"
            )
        found = []
        for side in ("right", "left"):
            try:
                found.append(find_mano_file(cfg.mano_dir, side))
            except HandvlaError as e:
                err = e
        if not found:
            raise ConfigError(f"mano_dir: {err}") from None


def _empty_source_hint(sc: SourceConfig, src, root: Path, listed: int) -> str:
    """Why a source lists no episode: filters, a root one level too deep or too shallow, another adapter."""
    if listed:
        return f"its {listed} episodes all fall outside include {sc.include} / exclude {sc.exclude}"

    t0 = time.perf_counter()

    def count(source, folder: Path) -> int:
        if time.perf_counter() - t0 > HINT_BUDGET_S:  # a huge wrong folder: stop probing, report what we have
            return 0
        try:
            return len(source.list_episodes(folder))
        except Exception:  # probing: an adapter that cannot read this folder finds nothing here
            return 0

    hints = []
    parent = root.parent
    if parent != root and (n := count(src, parent)):
        hints.append(f"root is one level too deep: '{sc.name}' finds {n} episodes in {parent}")
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())[:50]
    for d in subdirs:
        if n := count(src, d):
            hints.append(f"root may be one level too shallow: '{sc.name}' finds {n} episodes in {d}")
            break
    for name in sorted(SOURCES):
        if name != sc.name and (n := count(get_source(name), root)):
            hints.append(f"wrong adapter? '{name}' finds {n} episodes there")
    return "; ".join(hints) if hints else f"nothing in the layout '{sc.name}' expects is there"


def list_jobs(
    cfg: BuildConfig, shard: tuple[int, int] | None = None, limit: int | None = None
) -> tuple[list[Job], dict[str, Any]]:
    """Every episode of the enabled sources (in config order, then listing order), with its balancing
    copies; then only those of ``shard``. Returns the jobs and per-source counts. A source that lists no
    episode (after include/exclude) is a ConfigError with a hint of why."""
    listed: list[tuple[int, SourceConfig, list[str]]] = []
    for pos, sc in enumerate(cfg.sources):
        if not sc.enabled:
            continue
        src = _source(sc, cfg.mano_dir)
        all_keys = src.list_episodes(sc.root)
        keys = all_keys
        if sc.include:
            keys = [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in sc.include)]
        keys = [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in sc.exclude)]
        if not keys:
            hint = _empty_source_hint(sc, src, Path(sc.root).expanduser(), len(all_keys))
            raise ConfigError(
                f"sources[{pos}] ({sc.tag}): no episodes of '{sc.name}' under {sc.root}: {hint} "
                "(fix root / name, or set enabled: false)"
            )
        n = min(x for x in (sc.limit, limit, len(keys)) if x is not None)
        listed.append((pos, sc, keys[:n]))
    counts = {sc.tag: len(keys) for _, sc, keys in listed}
    plan = balance_plan(counts, cfg.balance)
    jobs = []
    for pos, sc, keys in listed:
        for i, k in enumerate(keys):
            out_key = f"{sc.tag}/{k.strip('/')}"
            chains = tuple(tuple(c) for c in augmentations_for(out_key, plan[sc.tag], cfg.balance))
            jobs.append(Job(pos, i, k, out_key, chains))
    if shard is not None:
        jobs = [j for j in jobs if shard_of(j.out_key, shard[1]) == shard[0]]
    return jobs, {"episodes_listed": counts, "copies_per_episode": {k: round(v, 3) for k, v in plan.items()}}


def _store_settings(cfg: BuildConfig) -> dict[str, Any]:
    """The store settings a build config asks for, as ``EpisodeStore`` reports them."""
    return {
        "fps": float(cfg.standardize.fps),
        "hand_model": cfg.hand_model,
        "with_joints": bool(cfg.joints),
        "camera": "main" if cfg.video else None,
    }


_CONFIG_FIELD = {
    "fps": "standardize.fps",
    "hand_model": "hand_model",
    "with_joints": "joints",
    "camera": "video",
}


def check_out(out: Path, cfg: BuildConfig) -> bool:
    """``--out`` before any work: a folder (or nothing yet); a store already there must have the config's
    settings. An EMPTY store with other settings (left by an earlier build that wrote nothing) is removed
    so the build starts afresh; returns True when it was. A non-empty one is a ConfigError saying what to
    do."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: expected a folder (new, or a store to resume), got a file")
    if not (out / INFO_PATH).is_file():
        return False
    store = EpisodeStore(out)
    want = _store_settings(cfg)
    diff = [(k, getattr(store, k), v) for k, v in want.items() if getattr(store, k) != v]
    if not diff:
        return False
    if len(store) == 0:
        _remove_store_files(out)
        return True
    name, stored, given = diff[0]
    field_name = _CONFIG_FIELD[name]
    show = {"camera": lambda c: f"video: {str(c is not None).lower()}"}.get(
        name, lambda v: f"{field_name}: {v}"
    )
    raise ConfigError(
        f"--out {out}: holds {len(store)} episodes built with {show(stored)} but the config asks for "
        f"{show(given)}; build into another --out, or set {show(stored)} to resume this store"
    )


def _remove_store_files(out: Path) -> None:
    """Remove a store that holds no committed episode (its meta/, data/ and videos/ folders)."""
    for sub in ("meta", "data", "videos"):
        shutil.rmtree(out / sub, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# One episode (runs in a worker)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: Job
    status: str  # 'written' (ready to commit), 'failed', 'skipped'
    reason: str = ""
    category: str = ""  # the reason without what names the episode (summary counts group by it)
    episodes: list = field(default_factory=list)  # Episodes with video = a temporary mp4 (or None)
    report: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


_WORKER: dict[str, Any] = {}


def _worker_init(cfg_json: str, tmp_dir: str) -> None:

    torch.set_num_threads(1)
    _WORKER.clear()
    _WORKER.update(cfg=BuildConfig.model_validate_json(cfg_json), tmp=Path(tmp_dir), sources={})


def _source_episode_video(ep) -> Any:
    """What holds the frames of a source episode: an mp4 path, an array, image paths, or None."""
    if ep.video is not None:
        return ep.video
    if getattr(ep, "frame_paths", None):
        return list(ep.frame_paths)
    return None


def process_job(job: Job) -> JobResult:
    """Read, standardise, align and augment one episode; encode its video(s) to temporary mp4s."""
    cfg: BuildConfig = _WORKER["cfg"]
    t0 = time.perf_counter()
    written: list[Path] = []
    try:
        result = _process(job, cfg, written)
    except HandvlaError as e:
        result = JobResult(job, "failed", f"{type(e).__name__}: {e}", _category(e))
    except Exception as e:  # a reader library's own error on a broken file, or a bug: report, go on
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        result = JobResult(
            job, "failed", f"{type(e).__name__} at {where}: {e}", f"{type(e).__name__} at {where}"
        )
    if result.status != "written":
        for p in written:
            p.unlink(missing_ok=True)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


def _category(e: HandvlaError) -> str:
    """An error's kind without the file or episode it names: InputError -> its field and expectation."""
    if isinstance(e, InputError):
        return (
            f"InputError: field '{e.field}': expected {e.expected}"
            if e.field
            else f"InputError: expected {e.expected}"
        )
    return type(e).__name__


def _ray_job(cfg_json: str, job: Job) -> tuple[JobResult, list[bytes | None]]:
    """``process_job`` on a Ray worker (``handvla.ingest.distributed``): the encoded videos come back as
    bytes (the driver may be another machine), not as paths in the worker's temporary folder. Each task
    has its own temporary folder, removed when it ends (Ray stops its workers without running exit
    handlers, so a folder per worker process would stay behind)."""
    with tempfile.TemporaryDirectory(prefix="handvla-build-") as tmp:
        if _WORKER.get("cfg_json") != cfg_json:
            _worker_init(cfg_json, tmp)
            _WORKER["cfg_json"] = cfg_json
        _WORKER["tmp"] = Path(tmp)
        r = process_job(job)
        videos: list[bytes | None] = []
        for i, e in enumerate(r.episodes):
            if isinstance(e.video, str):
                videos.append(Path(e.video).read_bytes())
                r.episodes[i] = replace(e, video=None)
            else:
                videos.append(None)
    return r, videos


def _from_ray(job: Job, value, tmp_dir: Path) -> JobResult:
    """A Ray task's answer as a local ``JobResult``: videos written to ``tmp_dir``, a lost task failed."""
    if isinstance(value, Lost):
        return JobResult(job, "failed", f"ray: {value.reason}", "ray: task lost (worker or node died)")
    r, videos = value
    for i, (e, data) in enumerate(zip(r.episodes, videos)):
        if data is not None:
            path = tmp_dir / f"{hashlib.sha1(e.key.encode()).hexdigest()[:16]}.mp4"
            path.write_bytes(data)  # scratch: the writer copies it into the store atomically
            r.episodes[i] = replace(e, video=str(path))
    return r


def _process(job: Job, cfg: BuildConfig, written: list[Path]) -> JobResult:

    sc = cfg.sources[job.source_pos]
    cache = _WORKER["sources"]
    if job.source_pos not in cache:
        cache[job.source_pos] = _source(sc, cfg.mano_dir)
    src = cache[job.source_pos]
    ep = src.read_episode(sc.root, job.key)
    ep = replace(ep, key=job.out_key)
    if sc.intrinsics is not None:
        res = sc.intrinsics.resolve(
            job.key, ep.camera.width, ep.camera.height, getattr(ep, "frame_paths", None)
        )
        if res is not None:
            K, origin = res
            mode = sc.intrinsics.mode
            if mode == "auto":
                mode = "weak_perspective" if (src.kind == "rgb" and src.params == "mano") else "metric"
            ep = apply_intrinsics(ep, K, mode, origin)
    video_src = _source_episode_video(ep)
    if cfg.video and video_src is None:
        reason = "no video (this store has video; set 'video: false' for motion only)"
        return JobResult(job, "skipped", reason, reason)
    std = standardize_episode(
        ep,
        cfg.standardize,
        hand_model=cfg.hand_model,
        mano_dir=cfg.mano_dir,
        kind=src.kind,
        params=src.params,
        has_video=video_src is not None,
        with_joints=cfg.joints,
    )
    frames = None
    if cfg.video:
        frames = np.stack(list(iter_frames_at(video_src, std.frame_index)))
        cam = std.episode.camera
        if frames.shape[1:3] != (cam.height, cam.width):
            raise InputError(
                f"episode '{job.out_key}'",
                "video",
                f"frames of the camera's size {cam.width}x{cam.height}",
                f"{frames.shape[2]}x{frames.shape[1]}",
            )
    base = std.episode
    if cfg.align.enabled:
        base, frames = align_episode(base, frames, cfg.align)
    if frames is not None and frames.shape[1] % 2 + frames.shape[2] % 2:  # H.264 needs even sizes
        h2, w2 = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2
        frames = np.ascontiguousarray(frames[:, :h2, :w2])
        base = replace(base, camera=replace(base.camera, width=w2, height=h2))
    outputs = [(base, frames, 0)]
    for j, chain in enumerate(job.chains):
        aug, aug_frames = apply_augmentation(base, frames, list(chain))
        if aug.key != augmented_key(job.out_key, chain):  # the key a resumed build looks for
            raise RuntimeError(f"augmented key {aug.key!r} != {augmented_key(job.out_key, chain)!r}")
        outputs.append((aug, aug_frames, j + 1))
    episodes = []
    for e, fr, aug_pos in outputs:
        ann = dict(e.annotations)
        prov = dict(ann.get("provenance", {}))
        prov["build"] = {"order": [job.source_pos, job.key_pos, aug_pos], "source_key": job.key}
        ann["provenance"] = prov
        e = replace(e, annotations=ann)
        if fr is not None:
            name = hashlib.sha1(e.key.encode()).hexdigest()[:16]
            path = _WORKER["tmp"] / f"{name}.mp4"
            written.append(path)
            write_video(
                path,
                fr,
                fps=cfg.standardize.fps,
                crf=cfg.crf,
                preset=cfg.preset,
                threads=cfg.encoder_threads,
            )
            e = replace(e, video=str(path))
        episodes.append(e)
    return JobResult(job, "written", episodes=episodes, report=std.report)


# ---------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------


def _report_line(r: JobResult, status: str | None = None, reason: str | None = None, keys=None) -> dict:
    line = {
        "key": r.job.out_key,
        "source_key": r.job.key,
        "status": status or r.status,
        "reason": r.reason if reason is None else reason,
        "seconds": r.seconds,
    }
    if keys:
        line["episodes"] = keys
    if r.report:
        line["standardize"] = r.report
    return line


def build(
    cfg: BuildConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    shard: tuple[int, int] | None = None,
    limit: int | None = None,
    progress: bool = True,
    ray: str | None = None,
    max_retries: int = 3,
) -> dict[str, Any]:
    """Run a build into the store at ``out_dir`` (created or resumed). Returns the summary.

    ``ray``: None builds on this machine (``workers`` processes, default the config's); a Ray address
    ('local', 'auto', ``host:port``, ``ray://host:port``) runs each episode as a Ray task (``workers``:
    tasks at once, default the cluster's CPUs; ``max_retries``: Ray's retries of a task whose worker
    died). Either way the driver writes the store in job order, so the stores are the same."""
    out = Path(out_dir)
    t_start = time.perf_counter()
    if workers is not None and int(workers) < 1:
        raise ConfigError(f"--workers: expected a whole number >= 1, got {workers!r}")
    # everything that can be wrong with the config, before any work
    check_config(cfg)
    jobs, counts = list_jobs(cfg, shard, limit)
    reset = check_out(out, cfg)
    runner = RayRunner(ray, workers, max_retries) if ray is not None else None
    n_workers = runner.workers if runner is not None else int(workers or cfg.workers)
    lines: dict[int, dict[str, Any]] = {}  # by job position: the report follows the job order
    totals = {"written": 0, "exists": 0, "failed": 0, "skipped": 0}
    reasons: dict[tuple[str, str], list] = {}  # (status, category) -> [count, first key, first reason]
    episodes_written = frames_written = 0
    fit_errors: list[float] = []
    created = not (out / INFO_PATH).is_file()
    out.mkdir(parents=True, exist_ok=True)
    try:  # takes the store's writer lock: a second build on the same --out stops here, touching nothing
        writer = EpisodeWriter(
            out,
            fps=cfg.standardize.fps,
            hand_model=cfg.hand_model,
            joints=cfg.joints,
            camera="main" if cfg.video else None,
            crf=cfg.crf,
            preset=cfg.preset,
            encoder_threads=cfg.encoder_threads,
        )
    except BaseException:
        if runner is not None:
            runner.close()
        raise
    tmp_dir = out / f"{TMP_PREFIX}-{os.getpid()}"
    for stale in out.glob(f"{TMP_PREFIX}-*"):  # from a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp_dir.mkdir()
    pool = mapped = None
    try:
        todo, position = [], {}
        for n, job in enumerate(jobs):
            if all(writer.has(k) for k in job.all_keys()):
                totals["exists"] += 1
                lines[n] = {"key": job.out_key, "source_key": job.key, "status": "exists", "reason": ""}
            else:
                position[(job.source_pos, job.key_pos)] = n
                todo.append(job)
        bar = tqdm(
            total=len(jobs), initial=len(jobs) - len(todo), desc="build", unit="ep", disable=not progress
        )
        cfg_json = cfg.model_dump_json()
        if runner is not None:
            mapped = runner.map_ordered(_ray_job, todo, cfg_json)
            results = (_from_ray(j, v, tmp_dir) for j, v in mapped)
        elif n_workers == 1 or len(todo) <= 1:
            _worker_init(cfg_json, str(tmp_dir))
            results = (process_job(j) for j in todo)
        else:
            # not "fork": a child forked from a process that already decoded video (PyAV / FFmpeg keep scaler
            # thread pools) can hang for good in sws_scale (seen in the test suite); forkserver children start
            # from a clean server process
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(
                n_workers, initializer=_worker_init, initargs=(cfg_json, str(tmp_dir))
            )
            results = pool.imap(process_job, todo)  # in order: store order = job order
        for r in results:
            status, reason, category, keys = r.status, r.reason, r.category, []
            if r.status == "written":
                try:
                    for e in r.episodes:
                        if not writer.has(e.key):
                            writer.add_episode(e)
                            episodes_written += 1
                            frames_written += e.num_frames
                        keys.append(e.key)
                except HandvlaError as e:
                    status, reason, category = "failed", f"{type(e).__name__}: {e}", _category(e)
                finally:
                    for e in r.episodes:
                        if isinstance(e.video, str):
                            Path(e.video).unlink(missing_ok=True)
                if status == "written":
                    for h in r.report.get("hands", {}).values():
                        if "fit_error_mm" in h:
                            fit_errors.append(h["fit_error_mm"])
            totals[status] += 1
            if status in ("failed", "skipped"):
                entry = reasons.setdefault((status, category or reason), [0, r.job.out_key, reason])
                entry[0] += 1
            line = _report_line(r, status, reason, keys)
            if status == "failed":
                line["source"] = {
                    "name": cfg.sources[r.job.source_pos].name,
                    "root": cfg.sources[r.job.source_pos].root,
                }
            lines[position[(r.job.source_pos, r.job.key_pos)]] = line
            bar.update(1)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        if mapped is not None:
            mapped.close()  # cancels the tasks still pending (Ctrl-C, an error)
        engine = runner.describe() if runner is not None else {"workers": n_workers}
        if runner is not None:
            runner.close()
        writer.close()
        in_store = len(writer)
        if created and in_store == 0:  # a build that wrote nothing leaves no store behind
            _remove_store_files(out)
        shutil.rmtree(tmp_dir, ignore_errors=True)
        seconds = time.perf_counter() - t_start
        tried = totals["written"] + totals["failed"] + totals["skipped"]
        summary = {
            "out": str(out),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "engine": {"ray": engine} if runner is not None else {"local": engine},
            "jobs": len(jobs),
            **totals,
            "episodes_written": episodes_written,
            "frames_written": frames_written,
            "frames_per_s": round(frames_written / seconds, 3) if seconds > 0 else 0.0,
            "episodes_in_store": in_store,
            "seconds": round(seconds, 3),
            "jobs_per_s": round(tried / seconds, 4) if seconds > 0 else 0.0,
            "fit_error_mm_mean": round(float(np.mean(fit_errors)), 3) if fit_errors else None,
            "reasons": [
                {"status": st, "reason": cat, "count": v[0], "example": {"key": v[1], "reason": v[2]}}
                for (st, cat), v in sorted(reasons.items(), key=lambda kv: -kv[1][0])
            ],
            "reset_empty_store": reset,
            "report": str(out / REPORT_NAME),
            **counts,
        }
        text = "".join(json.dumps(lines[n], sort_keys=True) + "\n" for n in sorted(lines))
        atomic_write_text(out / REPORT_NAME, text)
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


class BuildFailed(HandvlaError):
    """A build that ran but wrote nothing, or where most episodes failed (exit status 2 from the CLI)."""


def check_outcome(summary: dict[str, Any], max_failed_fraction: float = 0.5) -> None:
    """BuildFailed when the store is empty after the build, or more than ``max_failed_fraction`` of the
    episodes tried in this run failed or were skipped; the message names the reasons with their counts."""
    tried = summary["written"] + summary["failed"] + summary["skipped"]
    bad = summary["failed"] + summary["skipped"]
    why = "; ".join(
        f"{r['count']} {r['status']}: {r['reason']}"
        + ("" if r["reason"] == r["example"]["reason"] else f" (e.g. {r['example']['reason']})")
        for r in summary["reasons"][:3]
    )
    if len(summary["reasons"]) > 3:
        why += f"; {len(summary['reasons']) - 3} other reasons"
    where = f"see {summary['report']}"
    if summary["episodes_in_store"] == 0:
        raise BuildFailed(
            f"{summary['out']}: nothing was written ({bad} of {tried} episodes): {why}; {where}"
        )
    if tried and bad > max_failed_fraction * tried:
        raise BuildFailed(
            f"{summary['out']}: {bad} of {tried} episodes failed or were skipped (more than "
            f"{max_failed_fraction:.0%}): {why}; the {summary['written']} written are kept; {where}"
        )


# ---------------------------------------------------------------------------------------------------------
# Merge
# ---------------------------------------------------------------------------------------------------------


def merge_stores(out_dir: str | Path, inputs: list[str | Path], progress: bool = True) -> dict[str, Any]:
    """Merge shard stores into ``out_dir`` in single-build order (the ``build.order`` recorded in each
    episode's provenance; episodes without it follow, in input order). Parquet data is rewritten, mp4
    files are copied as they are. Keys already in ``out_dir`` are skipped (resumable); a key present in
    two inputs is taken once (from the first)."""

    if not inputs:
        raise ConfigError("merge: give at least one input store")
    t0 = time.perf_counter()
    # a shard whose build wrote nothing has its report and summary but no store: nothing to merge from it
    empty = [
        str(p) for p in inputs if not (Path(p) / INFO_PATH).is_file() and (Path(p) / SUMMARY_NAME).is_file()
    ]
    stores = [EpisodeStore(p) for p in inputs if str(p) not in empty]
    if not stores:
        raise InputError(
            ", ".join(map(str, inputs)), None, "at least one input store with episodes", "only empty builds"
        )
    ref = stores[0]
    for st in stores[1:]:
        for name in ("fps", "hand_model", "with_joints", "camera"):
            if getattr(st, name) != getattr(ref, name):
                raise ConfigError(
                    f"merge: {st.root} has {name}={getattr(st, name)!r} but {ref.root} has {getattr(ref, name)!r}"
                )
    items = []
    for si, st in enumerate(stores):
        for k in range(len(st)):
            row = st.meta(k)
            try:
                order = json.loads(row["annotations"]).get("provenance", {}).get("build", {}).get("order")
            except (ValueError, AttributeError):
                order = None
            items.append((0 if order else 1, tuple(order) if order else (si, k), si, k, row["key"]))
    items.sort()
    seen: set[str] = set()
    duplicates = written = 0
    fps = int(ref.fps) if float(ref.fps).is_integer() else ref.fps
    with EpisodeWriter(
        out_dir, fps=fps, hand_model=ref.hand_model, joints=ref.with_joints, camera=ref.camera
    ) as w:
        for _, _, si, k, key in tqdm(items, desc="merge", unit="ep", disable=not progress):
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if w.has(key):
                continue
            st = stores[si]
            ep = st.load_episode(k, with_video=False)
            ep = replace(ep, episode_index=None, frame_offset=0)
            if st.camera is not None:
                ep = replace(ep, video=str(st.video_path(k)))
            w.add_episode(ep)
            written += 1
        total = len(w)
    return {
        "out": str(out_dir),
        "inputs": [str(p) for p in inputs],
        "empty_inputs": empty,
        "episodes_in_inputs": len(items),
        "written": written,
        "duplicates": duplicates,
        "episodes_in_store": total,
        "seconds": round(time.perf_counter() - t0, 3),
    }
