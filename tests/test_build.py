"""``handvla data build`` / ``merge``: several sources in their native layouts, bad files reported and
skipped, resumability, and shard + merge equal to a single build."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent / "sources"))
import fixtures as F  # noqa: E402

from handvla.cli import main  # noqa: E402
from handvla.data.store import EpisodeStore  # noqa: E402
from handvla.errors import ConfigError  # noqa: E402
from handvla.hand.io import JointsRecording, load_joints, save_joints  # noqa: E402
from handvla.ingest.build import build, list_jobs, load_build_config, shard_of  # noqa: E402


def _write_real_clip(root: Path, real_hands: Path) -> None:
    """A 1 s slice of the real MediaPipe recording and its video (downscaled), in the joints21 layout, a
    copy labelled as the wrong hand, and an all-NaN recording."""
    from PIL import Image

    from handvla.video import read_video, write_video

    rec = load_joints(real_hands / "mediapipe_video_right.npz")
    n = 24
    frames = read_video(real_hands / "mediapipe_video_right.mp4", 0, n)
    small = np.stack([np.asarray(Image.fromarray(f).resize((160, 90), Image.BILINEAR)) for f in frames])
    clip = JointsRecording(
        rec.joints[:n],
        rec.t[:n],
        side="right",
        fps=rec.fps,
        source="mediapipe",
        licence=rec.licence,
        joint_order=rec.joint_order,
        frame=rec.frame,
    )
    d = root / "j21"
    save_joints(d / "clip_right.npz", clip)
    write_video(d / "clip_right.mp4", small, fps=rec.fps)
    clip.side = "left"  # a right hand labelled left
    save_joints(d / "wrong_left.npz", clip)
    write_video(d / "wrong_left.mp4", small, fps=rec.fps)
    np.savez(d / "lost_right.npz", joints=np.full((n, 21, 3), np.nan, np.float32), t=rec.t[:n], side="right")


def make_build_data(root: Path, real_hands: Path) -> Path:
    """Five sources in their native layouts with good and broken episodes, and their build config (also
    used by tests/test_ray_build.py)."""
    mano_dir, _ = F.mano_folder(root, mirror_left=True)
    F.write_hamer(root / "hamer", T=12)
    F.write_dexycb(root / "dexycb")  # camera 0 has images, camera 1 has none (skipped: no video)
    _write_real_clip(root, real_hands)
    eg = F.write_egodex(root / "egodex", T=4)
    eg["path"].write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)  # a corrupt HDF5
    F.write_dexycb(root / "dexycb_nocalib")
    for p in (root / "dexycb_nocalib" / "calibration" / "intrinsics").iterdir():
        p.unlink()  # a missing intrinsics file
    cfg = {
        "hand_model": "builtin",
        "mano_dir": str(mano_dir),
        "standardize": {"fit_iters": 10},
        "align": {"out_size": [128, 72]},  # (96 x 54: libx264 veryfast is not repeatable there)
        "balance": {"enabled": True, "augmentations": ["mirror"], "max_copies": 1},
        "sources": [
            {"name": "hamer", "root": str(root / "hamer"), "intrinsics": {"default": {"hfov_deg": 60}}},
            {"name": "dexycb", "root": str(root / "dexycb")},
            {"name": "joints21", "root": str(root / "j21")},
            {"name": "egodex", "root": str(root / "egodex")},
            {"name": "dexycb", "label": "dexycb_nocalib", "root": str(root / "dexycb_nocalib")},
        ],
    }
    path = root / "build.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory, real_hands_dir):
    root = tmp_path_factory.mktemp("build")
    return root, make_build_data(root, real_hands_dir)


@pytest.fixture(scope="module")
def single(data):
    root, path = data
    summary = build(load_build_config(path), root / "single", workers=2, progress=False)
    return root / "single", summary


def _report(store: Path) -> dict[str, dict]:
    return {x["key"]: x for x in map(json.loads, (store / "build_report.jsonl").read_text().splitlines())}


def test_build_writes_good_episodes_and_reports_bad_ones(single):
    out, s = single
    rep = _report(out)
    status = {k: v["status"] for k, v in rep.items()}
    assert status["hamer/clips/cup"] == "written"
    assert status["joints21/clip_right"] == "written"
    assert status["dexycb/20200709-subject-01/20200709_141754/836212060125"] == "written"
    assert status["dexycb/20200709-subject-01/20200709_141754/839512060362"] == "skipped"
    assert "no video" in rep["dexycb/20200709-subject-01/20200709_141754/839512060362"]["reason"]
    bad = {
        "egodex/part1/add_remove_lid/0": "0.hdf5",  # corrupt HDF5: the file is named
        "dexycb_nocalib/20200709-subject-01/20200709_141754/836212060125": "intrinsics",
        "joints21/lost_right": "observed",  # all-NaN joints
        "joints21/wrong_left": "mislabelled",
    }
    for key, word in bad.items():
        assert status[key] == "failed", rep[key]
        assert word in rep[key]["reason"], rep[key]["reason"]
    assert s["failed"] == 5 and s["skipped"] == 1 and s["written"] == 3
    store = EpisodeStore(out)
    keys = [store.meta(k)["key"] for k in range(len(store))]
    assert keys[:2] == ["hamer/clips/cup", "hamer/clips/cup@mirror"]  # the small source got its copy
    assert set(keys) == {k for v in rep.values() for k in v.get("episodes", [])}
    assert store.validate(deep=True) == []  # nothing half-written
    assert not list(out.glob(".build_tmp*")) and not list(out.rglob("*.tmp*"))
    # every episode is at 15 fps, in the canonical camera, with the standardisation report
    for k in range(len(store)):
        ep = store.load_episode(k)
        assert ep.camera.width == 128 and ep.camera.fx == pytest.approx(736.6339 * 128 / 1920)
        assert ep.video.shape[1:3] == (72, 128)
        prov = ep.annotations["provenance"]
        assert "standardize" in prov and "align" in prov and prov["build"]["order"][2] in (0, 1)
    hamer = store.load_episode(0, with_video=False)
    intr = hamer.annotations["provenance"]["intrinsics"]  # HaMeR's assumed camera replaced, 3D moved
    assert intr["mode"] == "weak_perspective" and intr["K_new"][0][0] == pytest.approx(
        32 / math.tan(math.pi / 6)
    )
    mirrored = store.load_episode(1, with_video=False)
    np.testing.assert_allclose(mirrored.joints["left"], hamer.joints["right"] * [-1, 1, 1], atol=1e-6)
    fit = rep["joints21/clip_right"]["standardize"]["hands"]["right"]
    assert fit["origin"] == "fit" and fit["fit_error_mm"] < 10 and fit["frames_fitted"] == 12


def test_build_resumes(data, single):
    root, path = data
    out, first = single
    n = len(EpisodeStore(out))
    again = build(load_build_config(path), out, workers=1, progress=False)
    assert again["episodes_written"] == 0 and again["exists"] == first["written"]
    assert len(EpisodeStore(out)) == n
    assert {v["status"] for v in _report(out).values()} == {"exists", "failed", "skipped"}


def test_shard_and_merge_equal_single_build(data, single):
    root, path = data
    out, _ = single
    cfg = load_build_config(path)
    jobs, _ = list_jobs(cfg)
    assert {shard_of(j.out_key, 2) for j in jobs} == {0, 1}  # both shards have work
    for i in range(2):
        rc = main(
            [
                "data",
                "build",
                "--config",
                str(path),
                "--out",
                str(root / f"shard{i}"),
                "--shard",
                f"{i}/2",
                "--no-progress",
                "--max-failed-fraction",
                "1",  # the fixture is mostly broken episodes on purpose
            ]
        )
        shard = json.loads((root / f"shard{i}" / "build_summary.json").read_text())
        assert rc == (0 if shard["episodes_in_store"] else 2)  # a shard of only broken episodes: exit 2
    rc = main(
        ["data", "merge", str(root / "merged"), str(root / "shard1"), str(root / "shard0"), "--no-progress"]
    )
    assert rc == 0
    a, b = EpisodeStore(out), EpisodeStore(root / "merged")
    assert len(a) == len(b) > 0
    for k in range(len(a)):
        ra, rb = a.meta(k), b.meta(k)
        for col in (
            "key",
            "tasks",
            "length",
            "source",
            "licence",
            "rig",
            "annotations",
            "hands",
            "camera/fx",
            "camera/cx",
            "camera/width",
            "dataset_from_index",
        ):
            assert ra[col] == rb[col], (k, col)
        ea, eb = a.load_episode(k), b.load_episode(k)
        for side in ("left", "right"):
            for name in ("global_orient", "hand_pose", "wrist_pos", "betas", "valid"):
                np.testing.assert_array_equal(getattr(ea.hands[side], name), getattr(eb.hands[side], name))
            np.testing.assert_array_equal(ea.joints[side], eb.joints[side])
        assert np.abs(ea.video.astype(int) - eb.video.astype(int)).max() <= 1


def test_config_errors(tmp_path):
    good = {"sources": [{"name": "hamer", "root": str(tmp_path)}]}
    load_build_config(base=good)
    with pytest.raises(ConfigError, match="sources.0.rooot"):
        load_build_config(base={"sources": [{"name": "hamer", "rooot": "x", "root": "y"}]})
    with pytest.raises(ConfigError, match="unknown source 'hamr'"):
        load_build_config(base={"sources": [{"name": "hamr", "root": "x"}]})
    with pytest.raises(ConfigError, match="mano_dir"):
        load_build_config(base={**good, "hand_model": "mano"})
    with pytest.raises(ConfigError, match="standardize.max_gap_frames"):
        load_build_config(base={**good, "standardize": {"max_gap_frames": -1}})
    with pytest.raises(ConfigError, match="same label|distinct 'label'"):
        load_build_config(base={"sources": [{"name": "hamer", "root": "a"}, {"name": "hamer", "root": "b"}]})
    (tmp_path / "c.yaml").write_text("sources: [\n")
    with pytest.raises(ConfigError, match="YAML"):
        load_build_config(tmp_path / "c.yaml")
    assert main(["data", "build", "--config", str(tmp_path / "none.yaml"), "--out", str(tmp_path / "o")]) == 2


def _cli_build(cfg: dict, root: Path, out: Path, *extra: str) -> int:
    path = root / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return main(["data", "build", "--config", str(path), "--out", str(out), "--no-progress", *extra])


def test_nothing_written_exits_2_and_leaves_a_reusable_out(data, capsys):
    """Every episode skipped for lack of video: exit 2 naming the reason and its count, no store left
    behind, and the next run with 'video: false' builds into the same --out (it used to fail with
    "camera='main', writer asked for None")."""
    root, path = data
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"] = [s for s in cfg["sources"] if s["name"] == "dexycb" and "label" not in s]
    cfg["sources"][0]["include"] = ["*/839512060362"]  # the camera without images
    out = root / "novideo"
    capsys.readouterr()
    assert _cli_build(cfg, root, out) == 2
    cap = capsys.readouterr()
    assert json.loads(cap.out)["skipped"] == 1
    assert "nothing was written" in cap.err and "1 skipped: no video" in cap.err and "video: false" in cap.err
    assert not (out / "meta").exists() and (out / "build_summary.json").is_file()
    assert _cli_build({**cfg, "video": False}, root, out) == 0
    assert EpisodeStore(out).camera is None and len(EpisodeStore(out)) == 1


def test_an_empty_store_of_other_settings_is_recreated(data):
    """An empty store with video, as an older failed build left it, is re-created for a motion-only build;
    a store WITH episodes of other settings is refused before any work, saying what to do."""
    from handvla.data.store import EpisodeWriter

    root, path = data
    cfg = yaml.safe_load(path.read_text())
    cfg["sources"] = [s for s in cfg["sources"] if s["name"] == "joints21"]
    cfg["sources"][0]["include"] = ["clip_right"]
    out = root / "legacy"
    EpisodeWriter(out, fps=15, camera="main").close()  # an empty store with video
    s = build(load_build_config(base={**cfg, "video": False}), out, progress=False)
    assert s["reset_empty_store"] and s["episodes_in_store"] == 1 and EpisodeStore(out).camera is None
    with pytest.raises(ConfigError, match=r"holds 1 episodes built with video: false .*another --out"):
        build(load_build_config(base=cfg), out, progress=False)
    assert len(EpisodeStore(out)) == 1


def test_most_episodes_failed_is_an_error_naming_the_reasons(single):
    from handvla.ingest.build import BuildFailed, check_outcome

    _, s = single  # 3 written, 5 failed, 1 skipped
    with pytest.raises(BuildFailed, match="6 of 9 episodes failed or were skipped") as e:
        check_outcome(s)
    msg = str(e.value)
    assert "2 failed: InputError: expected an existing YAML file" in msg  # grouped, with the count
    assert "1 skipped: no video" in msg and "the 3 written are kept" in msg
    check_outcome(s, max_failed_fraction=0.7)  # 6/9 < 0.7: accepted


def test_config_errors_come_before_any_work(data, tmp_path):
    root, path = data
    cfg = yaml.safe_load(path.read_text())
    dex = next(s for s in cfg["sources"] if s["name"] == "dexycb")

    def refused(match: str, **changes) -> None:
        c = {**cfg, **changes}
        with pytest.raises(ConfigError, match=match):
            build(load_build_config(base=c), tmp_path / "o", progress=False)
        assert not (tmp_path / "o").exists()  # nothing was started

    # root one level too deep: the hint names the parent that has the episodes
    deep = {**dex, "root": str(Path(dex["root"]) / "20200709-subject-01")}
    refused(r"sources\[0\] \(dexycb\): no episodes .*one level too deep: 'dexycb' finds 2", sources=[deep])
    # the wrong adapter: the hint names the one that reads this folder
    wrong = {"name": "egodex", "root": str(root / "hamer")}
    refused(r"no episodes of 'egodex' .*wrong adapter\? 'hamer' finds 1", sources=[wrong])
    refused(r"include \['nothing\*'\]", sources=[{**dex, "include": ["nothing*"]}])
    refused(
        r"sources\[0\] \(dexycb\)\.root: .*no such folder", sources=[{**dex, "root": str(root / "missing")}]
    )
    refused(r"mano_dir: ", mano_dir=str(root / "no_mano"))
    refused(r"mano_dir: the sources \['dexycb'\] need", mano_dir=None, sources=[dex])
    intr = {**dex, "intrinsics": {"file": str(root / "none.yaml")}}
    refused(r"sources\[0\] \(dexycb\)\.intrinsics\.file: .*no such file", sources=[intr])
    (tmp_path / "o").write_text("")
    with pytest.raises(ConfigError, match="--out .*got a file"):
        build(load_build_config(path), tmp_path / "o", progress=False)
    with pytest.raises(SystemExit) as e:  # argparse: exit 2
        main(["data", "build", "--config", str(path), "--out", str(tmp_path / "p"), "--workers", "0"])
    assert e.value.code == 2 and not (tmp_path / "p").exists()
    assert (
        main(
            [
                "data",
                "build",
                "--config",
                str(path),
                "--out",
                str(tmp_path / "p"),
                "--ray",
                "x:1",
                "--max-retries",
                "-1",
            ]
        )
        == 2
    )


def test_ray_without_the_extra_says_how_to_install(data, tmp_path, monkeypatch):
    root, path = data
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, as without the extra
    with pytest.raises(ConfigError, match=r"Ray is not installed.*handvla\[cluster\]"):
        build(load_build_config(path), tmp_path / "o", ray="local", progress=False)
    assert not (tmp_path / "o").exists()
