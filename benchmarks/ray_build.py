"""``handvla data build`` throughput on this machine, single-machine vs Ray (needs ``handvla[cluster]``).

    python benchmarks/ray_build.py [--real-hands DIR] [--limit N] [--copies K] [--workers 1 2] [--repeat R]
                                   [--video]

Builds the shared real recordings (``joints21`` adapter: Leap / MediaPipe joints, fitted to the hand
model and resampled to 15 fps; motion only unless ``--video``, which keeps only the recording with a
video), K times under K labels (default 8), into fresh stores: on this machine with one process and with
a pool of two, then on a local Ray instance (started here with as many CPUs as the largest ``--workers``)
with each number of workers; ``R`` rounds of these, interleaved. Prints one JSON document: per run, the
seconds, episodes and frames written and frames per second (wall clock; a small warm-up build before the
timed ones pays the first-call costs: Ray's and its workers' start-up, imports), and whether the store is
the same, file for file and byte for byte, as the single-machine one.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handvla.ingest.build import build, load_build_config  # noqa: E402

SKIP = {"build_report.jsonl", "build_summary.json", "handvla_writer.lock"}


def _files(store: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name not in SKIP
    }


def _run(cfg, out: Path, **kw) -> dict:
    s = build(cfg, out, progress=False, **kw)
    return {
        k: s[k]
        for k in ("seconds", "episodes_written", "frames_written", "frames_per_s", "failed", "skipped")
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--real-hands", default=str(ROOT.parent / "shared" / "data" / "real_hands"))
    ap.add_argument("--limit", type=int, default=None, help="at most N recordings")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to run")
    ap.add_argument("--copies", type=int, default=8, help="the recordings under this many labels")
    ap.add_argument("--repeat", type=int, default=1, help="rounds of all runs (interleaved)")
    ap.add_argument("--video", action="store_true", help="a store with video (only recordings with one)")
    args = ap.parse_args()

    import ray  # the cluster extra: only this benchmark and `--ray` builds need it

    src = {"name": "joints21", "root": args.real_hands, **({"limit": args.limit} if args.limit else {})}
    if args.video:
        src["include"] = [p.stem for p in Path(args.real_hands).glob("*.mp4")]
    # --copies: the recordings under several labels, so that the build is long next to its fixed costs
    base = {"video": bool(args.video), "sources": [{**src, "label": f"real{c}"} for c in range(args.copies)]}
    cfg = load_build_config(base=base)
    small = load_build_config(base={**base, "sources": [{**src, "limit": 2}]})  # warm-up builds
    result: dict = {"config": base, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="ray_build_bench_") as tmp:
        tmp = Path(tmp)
        for i in range(args.repeat):  # rounds interleave the runs: the machine's load hits them alike
            runs: dict = {}
            build(small, tmp / f"warm_local_{i}", workers=1, progress=False)  # first-call costs, untimed
            runs["local_1_process"] = _run(cfg, tmp / f"local_{i}", workers=1)
            ref = _files(tmp / f"local_{i}")
            runs["local_2_processes"] = _run(cfg, tmp / f"local2_{i}", workers=2)
            runs["local_2_processes"]["identical_to_local"] = _files(tmp / f"local2_{i}") == ref
            # Ray after the process pool: a pool forked from a Ray driver inherits Ray's threads
            t0 = time.perf_counter()
            ray.init(num_cpus=max(args.workers), include_dashboard=False, logging_level="WARNING")
            runs["ray_start_s"] = round(time.perf_counter() - t0, 3)
            try:
                t0 = time.perf_counter()  # start the workers and pay their first-call costs, untimed
                build(small, tmp / f"warm_ray_{i}", ray="auto", workers=max(args.workers), progress=False)
                runs["ray_warm_up_s"] = round(time.perf_counter() - t0, 3)
                for n in args.workers:
                    out = tmp / f"ray_{n}_{i}"
                    runs[f"ray_{n}_workers"] = _run(cfg, out, ray="auto", workers=n)
                    runs[f"ray_{n}_workers"]["identical_to_local"] = _files(out) == ref
            finally:
                ray.shutdown()
            result["rounds"].append(runs)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
