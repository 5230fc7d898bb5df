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
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import multiprocessing as mp
import os
import shutil
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
from handvla.data.store import EpisodeStore, EpisodeWriter
from handvla.errors import ConfigError, HandvlaError, InputError
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
)
from handvla.ingest.sources import SOURCES, get_source
from handvla.ingest.standardize import StandardizeConfig, standardize_episode
from handvla.video import write_video

REPORT_NAME = "build_report.jsonl"
SUMMARY_NAME = "build_summary.json"
TMP_PREFIX = ".build_tmp"


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


def list_jobs(
    cfg: BuildConfig, shard: tuple[int, int] | None = None, limit: int | None = None
) -> tuple[list[Job], dict[str, Any]]:
    """Every episode of the enabled sources (in config order, then listing order), with its balancing
    copies; then only those of ``shard``. Returns the jobs and per-source counts."""
    listed: list[tuple[int, SourceConfig, list[str]]] = []
    for pos, sc in enumerate(cfg.sources):
        if not sc.enabled:
            continue
        src = _source(sc, cfg.mano_dir)
        keys = src.list_episodes(sc.root)
        if sc.include:
            keys = [k for k in keys if any(fnmatch.fnmatchcase(k, p) for p in sc.include)]
        keys = [k for k in keys if not any(fnmatch.fnmatchcase(k, p) for p in sc.exclude)]
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


# ---------------------------------------------------------------------------------------------------------
# One episode (runs in a worker)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    job: Job
    status: str  # 'written' (ready to commit), 'failed', 'skipped'
    reason: str = ""
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
        result = JobResult(job, "failed", f"{type(e).__name__}: {e}")
    except Exception as e:  # a reader library's own error on a broken file, or a bug: report, go on
        tb = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{Path(tb.filename).name}:{tb.lineno}"
        result = JobResult(job, "failed", f"{type(e).__name__} at {where}: {e}")
    if result.status != "written":
        for p in written:
            p.unlink(missing_ok=True)
    result.seconds = round(time.perf_counter() - t0, 3)
    return result


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
        return JobResult(
            job, "skipped", "no video (this store has video; set 'video: false' for motion only)"
        )
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
            write_video(path, fr, fps=cfg.standardize.fps, crf=cfg.crf, preset=cfg.preset)
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
) -> dict[str, Any]:
    """Run a build into the store at ``out_dir`` (created or resumed). Returns the summary."""


    out = Path(out_dir)
    t_start = time.perf_counter()
    jobs, counts = list_jobs(cfg, shard, limit)
    n_workers = int(workers or cfg.workers)
    if n_workers < 1:
        raise ConfigError(f"--workers: expected a whole number >= 1, got {workers!r}")
    lines: dict[int, dict[str, Any]] = {}  # by job position: the report follows the job order
    totals = {"written": 0, "exists": 0, "failed": 0, "skipped": 0}
    episodes_written = frames_written = 0
    fit_errors: list[float] = []
    out.mkdir(parents=True, exist_ok=True)
    tmp_dir = out / f"{TMP_PREFIX}-{os.getpid()}"
    for stale in out.glob(f"{TMP_PREFIX}-*"):  # from a killed build
        shutil.rmtree(stale, ignore_errors=True)
    tmp_dir.mkdir()
    writer = EpisodeWriter(
        out,
        fps=cfg.standardize.fps,
        hand_model=cfg.hand_model,
        joints=cfg.joints,
        camera="main" if cfg.video else None,
        crf=cfg.crf,
        preset=cfg.preset,
    )
    pool = None
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
        if n_workers == 1 or len(todo) <= 1:
            _worker_init(cfg_json, str(tmp_dir))
            results = (process_job(j) for j in todo)
        else:
            method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
            pool = mp.get_context(method).Pool(
                n_workers, initializer=_worker_init, initargs=(cfg_json, str(tmp_dir))
            )
            results = pool.imap(process_job, todo)  # in order: store order = job order
        for r in results:
            status, reason, keys = r.status, r.reason, []
            if r.status == "written":
                try:
                    for e in r.episodes:
                        if not writer.has(e.key):
                            writer.add_episode(e)
                            episodes_written += 1
                            frames_written += e.num_frames
                        keys.append(e.key)
                except HandvlaError as e:
                    status, reason = "failed", f"{type(e).__name__}: {e}"
                finally:
                    for e in r.episodes:
                        if isinstance(e.video, str):
                            Path(e.video).unlink(missing_ok=True)
                if status == "written":
                    for h in r.report.get("hands", {}).values():
                        if "fit_error_mm" in h:
                            fit_errors.append(h["fit_error_mm"])
            totals[status] += 1
            lines[position[(r.job.source_pos, r.job.key_pos)]] = _report_line(r, status, reason, keys)
            bar.update(1)
        bar.close()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        writer.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
        seconds = time.perf_counter() - t_start
        summary = {
            "out": str(out),
            "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
            "jobs": len(jobs),
            **totals,
            "episodes_written": episodes_written,
            "frames_written": frames_written,
            "episodes_in_store": len(writer),
            "seconds": round(seconds, 3),
            "jobs_per_s": round((totals["written"] + totals["failed"] + totals["skipped"]) / seconds, 4)
            if seconds > 0
            else 0.0,
            "fit_error_mm_mean": round(float(np.mean(fit_errors)), 3) if fit_errors else None,
            "report": str(out / REPORT_NAME),
            **counts,
        }
        text = "".join(json.dumps(lines[n], sort_keys=True) + "\n" for n in sorted(lines))
        atomic_write_text(out / REPORT_NAME, text)
        atomic_write_text(out / SUMMARY_NAME, json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary


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
    stores = [EpisodeStore(p) for p in inputs]
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
        "episodes_in_inputs": len(items),
        "written": written,
        "duplicates": duplicates,
        "episodes_in_store": total,
        "seconds": round(time.perf_counter() - t0, 3),
    }
