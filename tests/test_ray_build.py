"""``handvla data build --ray``: on a local Ray instance started here, the store is the same as a
single-machine build (file for file, byte for byte), a worker that dies is retried by Ray, and an episode
whose worker dies every time is reported as failed while the build goes on. One test, so that one Ray
instance is started (pytest-xdist may run a module's tests in two processes). Skipped without the
``cluster`` extra."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
cloudpickle = pytest.importorskip("ray.cloudpickle")

from handvla.cli import main  # noqa: E402
from handvla.data.store import EpisodeStore  # noqa: E402
from handvla.ingest.build import build, load_build_config  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_build import make_build_data  # noqa: E402

pytestmark = pytest.mark.slow  # 25-60 s: a Ray instance takes 5-15 s to start on 2 busy cores


def _crash_hook(marker_dir: str):
    """A worker set-up hook (runs in every Ray worker process): episode processing kills its worker
    process for the keys named by files in ``marker_dir``: ``once.<n>`` the first time, ``always.<n>``
    every time (``<n>`` = the key with '/' as '__')."""

    def hook():
        from handvla.ingest import build as B

        original = B._process

        def crashing(job, cfg, written):
            name = job.out_key.replace("/", "__")
            once, always = Path(marker_dir) / f"once.{name}", Path(marker_dir) / f"always.{name}"
            if always.exists():
                os._exit(1)
            if once.exists():
                once.rename(once.with_name(f"crashed.{name}"))
                os._exit(1)
            return original(job, cfg, written)

        B._process = crashing

    return hook


@pytest.fixture
def setup(tmp_path, real_hands_dir):
    """The build fixtures, a local build of them, and a Ray instance of 2 CPUs whose workers run the
    crash hook (one test uses it: with pytest-xdist, tests of one module may run in two processes)."""
    path = make_build_data(tmp_path, real_hands_dir)
    markers = tmp_path / "markers"
    markers.mkdir()
    (tmp_path / "worker_tmp").mkdir()  # the workers' temporary folder
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the hook travels to the workers
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        logging_level="WARNING",
        runtime_env={
            "worker_process_setup_hook": _crash_hook(str(markers)),
            "env_vars": {"TMPDIR": str(tmp_path / "worker_tmp")},
        },
    )
    try:
        local = build(load_build_config(path), tmp_path / "local", workers=1, progress=False)
        yield tmp_path, path, markers, local
    finally:
        ray.shutdown()


def _files(store: Path) -> dict[str, bytes]:
    """Every file of a store but the build's own report/summary (they hold timings) and the writer lock."""
    skip = {"build_report.jsonl", "build_summary.json", "handvla_writer.lock"}
    return {
        str(p.relative_to(store)): p.read_bytes()
        for p in sorted(store.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def _report(store: Path) -> dict[str, dict]:
    lines = (store / "build_report.jsonl").read_text().splitlines()
    return {x["key"]: x for x in map(json.loads, lines)}


def test_ray_build_equals_local_build_retries_dead_workers_and_reports_lost_episodes(setup):
    root, path, markers, local = setup
    (markers / "once.hamer__clips__cup").touch()  # its first worker dies mid-episode; Ray runs it again
    (markers / "always.joints21__lost_right").touch()  # its worker dies every time: lost after the retries
    rc = main(
        [
            "data", "build", "--config", str(path), "--out", str(root / "ray"), "--ray", "auto",
            "--workers", "2", "--max-retries", "1", "--no-progress", "--max-failed-fraction", "1",
        ]
    )  # fmt: skip
    assert rc == 0
    assert (markers / "crashed.hamer__clips__cup").exists()  # the crash did happen
    summary = json.loads((root / "ray" / "build_summary.json").read_text())
    assert summary["engine"]["ray"]["workers"] == 2 and summary["engine"]["ray"]["max_retries"] == 1
    for k in ("written", "failed", "skipped", "episodes_written", "frames_written"):
        assert summary[k] == local[k], k
    rep, ref = _report(root / "ray"), _report(root / "local")
    assert {k: v["status"] for k, v in rep.items()} == {k: v["status"] for k, v in ref.items()}
    assert rep["hamer/clips/cup"]["status"] == "written"  # retried after its worker died
    lost = rep["joints21/lost_right"]  # (all-NaN joints: not in the local store either)
    assert (
        lost["status"] == "failed"
        and lost["reason"].startswith("ray: ")
        and "after 1 retries" in lost["reason"]
    )
    assert lost["source"]["name"] == "joints21" and lost["source"]["root"].endswith("j21")
    assert any(r["reason"].startswith("ray: task lost") and r["count"] == 1 for r in summary["reasons"])
    for key in ("joints21/wrong_left", "egodex/part1/add_remove_lid/0"):  # pipeline errors: as locally
        assert rep[key]["reason"] == ref[key]["reason"]
    a, b = _files(root / "local"), _files(root / "ray")
    assert sorted(a) == sorted(b) and any(k.endswith(".mp4") for k in a)
    assert [k for k in a if a[k] != b[k]] == []  # the same store, byte for byte
    assert EpisodeStore(root / "ray").validate(deep=True) == []
    # each task's temporary folder is gone; only the 3 tasks whose worker was killed mid-task left theirs
    # (before: one per worker process, never removed)
    assert len(list((root / "worker_tmp").iterdir())) <= 3
