"""Annotating a whole store: clips from every episode, annotated in parallel, appended to the backend's table.

Resumable: clips already in ``meta/annotations/<backend>.jsonl`` (same segmentation) are skipped; clips
that failed before are tried again unless ``retry_failed=False``. Results are written by this thread as
they complete (the annotator may run in several threads), so a killed run keeps all finished clips.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from handvla.data.store import EpisodeStore
from handvla.errors import ConfigError, HandvlaError, InputError
from handvla.language.annotate.base import AnnotationFailure, Annotator, Clip, ClipAnnotation, clip_id
from handvla.language.annotate.objects import known_objects
from handvla.language.annotate.segments import ClipSpec, SegmentConfig, segment_episode
from handvla.language.annotate.table import AnnotationTable


def store_clips(
    store, config: SegmentConfig, episodes: list[int] | None = None
) -> list[tuple[ClipSpec, str]]:
    """(clip spec, episode key) of every clip of the store (or of ``episodes``)."""
    out = []
    ks = range(len(store)) if episodes is None else episodes
    for k in ks:
        row = store.meta(k)
        for spec in segment_episode(int(row["length"]), store.fps, k, config):
            out.append((spec, row["key"]))
    return out


def action_text(annotations: dict[str, Any] | None) -> str:
    """The source's action phrase from an episode's annotations ('action': {'label', 'text'}), or ""."""
    entry = (annotations or {}).get("action")  # written by handvla.ingest.sources.base.action_annotation
    if not isinstance(entry, dict):
        return ""
    return str(entry.get("text") or "").strip()


def load_clip(store, spec: ClipSpec, config: SegmentConfig, with_frames: bool) -> Clip:
    """Read one clip from the store: hands seen in it, joints, 2 FPS frames (if asked), known objects."""
    ep = store.load_episode(spec.episode_index, spec.start_s, spec.end_s, with_video=with_frames)
    a = ep.frame_offset
    if a != spec.start_frame or ep.num_frames != spec.num_frames:
        raise HandvlaError(
            f"{store.root}: episode {spec.episode_index}: window read frames {a}..{a + ep.num_frames}, "
            f"expected {spec.start_frame}..{spec.end_frame}"
        )
    hands = {s: m for s, m in ep.hands.items() if bool(np.any(m.valid))}
    joints = {s: ep.joints[s] for s in hands if s in ep.joints}
    frame_idx = spec.sample_frames(config.frame_rate_hz)
    frames = None
    if with_frames and isinstance(ep.video, np.ndarray) and len(ep.video):
        frames = ep.video[[f - a for f in frame_idx]]
    objects = known_objects(
        ep.ground_truth,
        ep.camera,
        spec.start_frame,
        spec.end_frame,
        where=f"{store.root} episode {spec.episode_index}",
    )
    return Clip(
        spec=spec,
        episode_key=ep.key,
        hands=hands,
        camera=ep.camera,
        windows_s=spec.window_times(config.window_s, config.stride_s),
        joints=joints,
        frames=frames,
        frame_times_s=[f / spec.fps for f in frame_idx],
        objects=objects,
        tasks=list(ep.tasks),
        source=ep.source,
        action=action_text(ep.annotations),
        segmentation=config.fingerprint(),
    )


def _failure_record(spec: ClipSpec, key: str, backend: str, err: BaseException) -> dict[str, Any]:
    return {
        "clip_id": clip_id(key, spec.start_frame, spec.end_frame),
        "episode_index": spec.episode_index,
        "episode_key": key,
        "clip_index": spec.clip_index,
        "start_frame": spec.start_frame,
        "end_frame": spec.end_frame,
        "backend": backend,
        "kind": getattr(err, "kind", type(err).__name__),
        "attempts": getattr(err, "attempts", 1),
        "error": str(err)[:500],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def annotate_store(
    root: str | Path,
    annotator: Annotator,
    config: SegmentConfig | None = None,
    workers: int = 1,
    episodes: list[int] | None = None,
    limit: int | None = None,
    retry_failed: bool = True,
    progress: bool = True,
    compact: bool = True,
) -> dict[str, Any]:
    """Annotate every clip of the store at ``root`` not yet in the backend's table; returns a report."""

    if int(workers) != workers or workers < 1:
        raise ConfigError(f"--workers: expected a whole number >= 1, got {workers!r}")
    cfg = config or SegmentConfig()
    store = EpisodeStore(root)
    table = AnnotationTable(root, annotator.name)
    seg = cfg.fingerprint()
    with_frames = annotator.needs_frames and store.video_key is not None
    t0 = time.perf_counter()
    n_done = n_fail = 0
    with table.writer() as writer:
        all_clips = store_clips(store, cfg, episodes)
        done = table.done(seg)
        failed_before = set(table.failures())
        todo = [(s, k) for s, k in all_clips if clip_id(k, s.start_frame, s.end_frame) not in done]
        skipped_failed = 0
        if not retry_failed:
            keep = [(s, k) for s, k in todo if clip_id(k, s.start_frame, s.end_frame) not in failed_before]
            skipped_failed = len(todo) - len(keep)
            todo = keep
        if limit is not None:
            todo = todo[: max(0, int(limit))]
        bar = tqdm(
            total=len(todo),
            desc=f"annotate ({annotator.name})",
            unit="clip",
            disable=not progress,
            file=sys.stderr,
        )

        def work(spec: ClipSpec) -> ClipAnnotation:
            return annotator.annotate(load_clip(store, spec, cfg, with_frames))

        items: Iterator[tuple[ClipSpec, str]] = iter(todo)
        pool = ThreadPoolExecutor(max_workers=int(workers), thread_name_prefix="annotate")
        try:
            pending: dict[Future, tuple[ClipSpec, str]] = {}

            def fill() -> None:
                while len(pending) < 2 * int(workers):  # a bounded queue: clips hold frames in memory
                    nxt = next(items, None)
                    if nxt is None:
                        return
                    pending[pool.submit(work, nxt[0])] = nxt

            fill()
            while pending:
                finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished:
                    spec, key = pending.pop(fut)
                    try:
                        ann = fut.result()
                    except (AnnotationFailure, InputError) as e:  # this clip only; config errors stop the run
                        writer.append_failure(_failure_record(spec, key, annotator.name, e))
                        n_fail += 1
                    else:
                        writer.append(ann)
                        n_done += 1
                    bar.update(1)
                    bar.set_postfix(failed=n_fail)
                fill()
        except BaseException:
            # do not start the clips still queued; the ones already running finish (and are lost)
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            pool.shutdown(wait=True)
            bar.close()
            writer.sync()
        total_records = writer.compact() if compact else None
    dt = time.perf_counter() - t0
    annotator.close()
    return {
        "dir": str(root),
        "backend": annotator.name,
        "table": str(table.path),
        "segmentation": seg,
        "clips": len(all_clips),
        "already_done": len(all_clips) - len(todo) - skipped_failed,
        "annotated": n_done,
        "failed": n_fail,
        "skipped_failed_before": skipped_failed,
        "records_in_table": total_records,
        "seconds": round(dt, 3),
        "clips_per_s": round(n_done / dt, 3) if dt > 0 else 0.0,
        "frames_sent": bool(with_frames),
        "annotator": annotator.stats(),
    }
