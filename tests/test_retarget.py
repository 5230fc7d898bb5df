"""Human hand -> Adroit retargeting and the human demonstrations made from it: the retargeter inverts the
robot's own forward kinematics (MuJoCo, the independent reference), keeps the grasp centre of real-shaped
human motion exactly where it is sent, and the replays become relocate demonstrations with the scripted
expert's features."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import handvla.robot.sim  # noqa: F401  (first: picks MuJoCo's headless GL backend before mujoco loads)

pytest.importorskip("gymnasium_robotics")
pytest.importorskip("mujoco")

from handvla.cli import main as cli_main  # noqa: E402
from handvla.data.store import EpisodeStore  # noqa: E402
from handvla.errors import InputError  # noqa: E402
from handvla.robot.lerobot_format import RobotDataset  # noqa: E402
from handvla.robot.posttrain import load_posttrain_config  # noqa: E402
from handvla.robot.retarget import ADROIT_KEYPOINTS, AdroitRetargeter  # noqa: E402
from handvla.robot.sim import AdroitSim, rollout  # noqa: E402
from handvla.robot.sim.expert import demo_features  # noqa: E402
from handvla.robot.sim.human_demos import HumanReplay, ball_lift_m, collect_human_demos, relocate_plan  # noqa: E402
from handvla.synth.handworld import HandWorldConfig, generate_episodes  # noqa: E402


@pytest.fixture(scope="module")
def sim():
    s = AdroitSim("relocate")
    yield s
    s.close()


@pytest.fixture(scope="module")
def carries(tmp_path_factory):
    """A small HandWorld store: pick-and-carry episodes and a push (no carry)."""
    root = tmp_path_factory.mktemp("carries")
    cfg = HandWorldConfig(width=32, height=24, shadows=False, tasks=("pick_up", "move"))
    generate_episodes(4, root / "carry", seed=3, config=cfg, progress=False)
    generate_episodes(1, root / "push", seed=3, config=cfg.model_copy(update={"tasks": ("push",)}), progress=False)
    return root


def _as_human(keypoints: np.ndarray) -> np.ndarray:
    """(T, K, 3) robot keypoints -> (T, 21, 3) 'human' joints (every OpenPose index has one keypoint)."""
    out = np.zeros((len(keypoints), 21, 3))
    for k, (_, _, h, _) in enumerate(ADROIT_KEYPOINTS):
        out[:, h] = keypoints[:, k]
    return out


def test_retargeting_inverts_the_robots_own_kinematics(sim):
    rt = AdroitRetargeter(sim.model)
    rng = np.random.default_rng(0)
    lo, hi = rt.lo, rt.hi
    # a smooth path through random poses: arm within half its range, hand anywhere in its limits
    mid, half = (lo + hi) / 2, (hi - lo) / 2
    a, b = mid + 0.5 * half * rng.uniform(-1, 1, (2, 30))
    a[8:], b[8:] = rng.uniform(lo[8:], hi[8:], (2, 22))
    qs = a + np.linspace(0, 1, 12)[:, None] * (b - a)
    kps = np.stack([rt.keypoints(q) for q in qs])
    res = rt.retarget(_as_human(kps), scale=1.0, q_start=qs[0])
    assert res.qpos.shape == (12, 30)
    assert (res.qpos >= lo - 1e-9).all() and (res.qpos <= hi + 1e-9).all()
    assert res.centre_error_m().max() < 5e-4  # the grasp centre goes exactly where it is sent
    assert np.median(res.errors_m()) < 2e-3, res.errors_m().max(1)  # reachable poses are reached
    assert res.shape_error_m.mean() < 3e-3
    # an offset moves the whole hand with it
    moved = rt.retarget(_as_human(kps) + [0.03, -0.02, 0.05], offset=[-0.03, 0.02, -0.05], scale=1.0, q_start=qs[0])
    assert np.abs(moved.reached - res.reached).max() < 2e-3
    with pytest.raises(InputError, match="joints"):
        rt.retarget(np.zeros((3, 16, 3)))


def test_human_carries_become_relocate_demonstrations(sim, carries, tmp_path):
    st = EpisodeStore(carries / "carry")
    plan, why = relocate_plan(st.load_episode(0, with_video=False))
    assert plan is not None, why
    assert plan.stop > plan.start and plan.grip[plan.start : plan.stop].any()
    none, why = relocate_plan(EpisodeStore(carries / "push").load_episode(0, with_video=False))
    assert none is None and "carry" in why
    # the replay: target where the human's object ended, moved with the ball; the grasp centre exact
    ctl = HumanReplay(plan)
    ro = rollout(sim, ctl, 50_000)
    palm_ball, palm_target = ro.states[0, 30:33], ro.states[0, 33:36]  # the state saw the new target:
    np.testing.assert_allclose(palm_target - palm_ball, ro.states[0, 36:39], atol=1e-6)  # ball - target
    np.testing.assert_allclose(
        ro.states[0, 36:39], plan.object_start - plan.object_end, atol=1e-6
    )  # ball - target = the human object's start - end (the scene moved rigidly)
    q = ctl.quality()
    assert q["centre_mm"] < 1.0 and 1.0 < q["scale"] < 1.4 and q["speed"] >= 1.0
    assert abs(ball_lift_m(ro.states) - (ro.states[:, 38].max() - ro.states[0, 38])) < 1e-9
    # a dataset with the expert's features, every replay kept, a summary beside it
    out = tmp_path / "human"
    s = collect_human_demos(carries / "carry", out, image_size=16, only_successful=False, progress=False)
    assert s["replayed"] == s["written"] == 4 and s["skipped"] == {}
    ds = RobotDataset(out)
    assert ds.num_episodes == 4 and ds.fps == sim.fps
    assert ds.features["observation.state"]["shape"] == [39] and ds.features["action"]["shape"] == [30]
    want = demo_features(AdroitSim("relocate", image_size=16), (16, 16), "observation.images.front")
    assert {k: ds.features[k]["shape"] for k in want} == {k: v["shape"] for k, v in want.items()}
    rows = json.loads((out / "human_demos.json").read_text())["per_episode"]
    assert [r["relocated"] for r in rows] == [r["success"] and r["ball_lift_m"] >= 0.03 for r in rows]


def test_retarget_cli_and_the_two_embodiment_config(carries, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["data", "retarget", "--store", str(carries / "carry"), "--out", str(out), "--episodes", "2",
                   "--image-size", "0", "--keep-failures", "--quiet"])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["written"] == 2 and "per_episode" not in summary
    # the example config: both datasets map into the same unified dimensions, each with its own name
    cfg = load_posttrain_config(Path(__file__).resolve().parents[1] / "configs" / "posttrain_relocate_human.yaml")
    main = cfg.data.embodiment.resolve(39, 30)
    extra = cfg.data.extra_datasets[0].embodiment
    assert extra.name != cfg.data.embodiment.name
    other = extra.resolve(39, 30)
    np.testing.assert_array_equal(main.action_dst, other.action_dst)
    np.testing.assert_array_equal(main.state_dst, other.state_dst)
    assert main.action_mask().sum() == 30


@pytest.mark.slow
def test_transfer_benchmark_runs_every_arm_and_pairs_them(carries, tmp_path, capsys, benchmark_script):
    """benchmarks/relocate_transfer.py end to end at toy sizes: four arms (one from a motion-pretrained
    checkpoint, one from that checkpoint's architecture with fresh weights, one with the human replays as a
    second embodiment), paired against the plain arm, and the pretrained arm against the fresh one."""
    from handvla.tokenizer.configuration import PRESETS, TokenizerConfig
    from handvla.tokenizer.modeling import MotionTokenizer
    from handvla.vla import build_vla, save_vla

    save_vla(tmp_path / "vla", build_vla("tiny", motion_tokenizer=MotionTokenizer(TokenizerConfig(**PRESETS["tiny"])), seed=5))
    collect_human_demos(carries / "carry", tmp_path / "human", max_episodes=2, image_size=64, only_successful=False,
                        progress=False)  # fmt: skip
    mod = benchmark_script("relocate_transfer")
    argv = ["--pretrained", str(tmp_path / "vla"), "--human", str(tmp_path / "human"), "--demos", "2",
            "--seeds", "0", "--steps", "3", "--episodes", "2", "--work", str(tmp_path / "work")]  # fmt: skip
    assert mod.main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    row = out["demos_2"]
    for arm in ("plain", "scratch", "pretrained", "human"):
        assert row[arm]["success_n"] == 2 and row[arm]["train_steps"] == [3]
    assert row["human"]["human_episodes"] == 2 and row["human"]["human_sample_share"] == 0.5
    for arm, other in (("scratch", "plain"), ("pretrained", "plain"), ("human", "plain"), ("pretrained", "scratch")):
        pair = row[f"{arm}_vs_{other}"]
        assert pair["episodes_only_this_arm"] + pair[f"episodes_only_{other}"] <= 2 and 0 <= pair["mcnemar_p"] <= 1
    # the fresh copy: the pretrained checkpoint's architecture and tokenizers, none of its weights
    import torch
    from safetensors.torch import load_file

    fresh, pre = (load_file(str(p / "model.safetensors")) for p in (tmp_path / "work" / "scratch_init", tmp_path / "vla"))
    assert fresh.keys() == pre.keys() and all(fresh[k].shape == pre[k].shape for k in pre)
    fixed = ("position", "lambda")  # sin-cos positions and layer scales start the same in every new model
    drawn = [k for k in pre if pre[k].numel() > 1 and pre[k].float().std() > 0 and not any(f in k for f in fixed)]
    assert drawn and not any(torch.equal(fresh[k], pre[k]) for k in drawn)
    assert out["mean_action_baseline"]["n"] == 2
    # a rerun reuses every finished run
    assert mod.main(argv) == 0 and json.loads(capsys.readouterr().out)["demos_2"] == row
