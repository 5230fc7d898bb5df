"""The Adroit simulator wrapper, the scripted relocate expert, demonstrations and closed-loop evaluation.

Most tests do not render (rendering needs an EGL context, ~3-7 s to start on a CPU-only machine); one
test collects a tiny demonstration dataset with 32x32 video and replays it."""

from __future__ import annotations

import numpy as np
import pytest

import handvla.robot.sim  # noqa: F401  (first: picks MuJoCo's headless GL backend before mujoco loads)

pytest.importorskip("gymnasium_robotics")
pytest.importorskip("mujoco")

from handvla.errors import ConfigError, InputError  # noqa: E402
from handvla.robot.evaluate import evaluate_closed_loop, evaluate_remote  # noqa: E402
from handvla.robot.lerobot_format import RobotDataset  # noqa: E402
from handvla.robot.sim import AdroitSim, ExpertPolicy, RelocateExpert, collect_demos, rollout  # noqa: E402
from handvla.robot.sim.expert import expert_rollouts  # noqa: E402

SEEDS = [3, 11, 42]


@pytest.fixture(scope="module")
def sim():
    s = AdroitSim("relocate")
    yield s
    s.close()


def test_sim_reset_is_seeded_and_checks_actions(sim):
    a = sim.reset(5)["state"]
    p5 = sim.privileged()
    b = sim.reset(6)["state"]
    c = sim.reset(5)["state"]
    assert a.shape == (39,) and a.dtype == np.float32
    np.testing.assert_array_equal(a, c)
    assert not np.allclose(a, b)  # another seed, another ball / target
    # the state's last 9 values are palm - ball, palm - target, ball - target (world frame, metres)
    np.testing.assert_allclose(a[30:33], p5["palm_pos"] - p5["obj_pos"], atol=1e-6)
    np.testing.assert_allclose(a[36:39], p5["obj_pos"] - p5["target_pos"], atol=1e-6)
    assert -0.15 <= p5["obj_pos"][0] <= 0.15 and 0.15 <= p5["target_pos"][2] <= 0.35
    assert sim.observation_spec() == {"state": {"shape": [39], "dtype": "float32"}}
    assert len(sim.state_names()) == 39 and len(sim.action_names()) == 30 and sim.fps == pytest.approx(100.0)
    with pytest.raises(InputError, match="action"):
        sim.step(np.zeros(29))
    with pytest.raises(InputError, match="finite"):
        sim.step(np.full(30, np.nan))
    with pytest.raises(ConfigError, match="unknown sim task"):
        AdroitSim("hammer-it")


def test_expert_solves_relocate(sim):
    expert = RelocateExpert()
    for s in SEEDS:
        ro = rollout(sim, expert, s)
        assert ro.length == 200 and ro.success and ro.success_at_end, ro.summary()
        # the phases happen in order and end holding the ball at the target
        first = {p: expert.phase_log.index(p) for p in ("approach", "descend", "close", "carry", "hold")}
        assert first["approach"] < first["descend"] < first["close"] < first["carry"] < first["hold"]
        ball, target = sim.privileged()["obj_pos"], sim.privileged()["target_pos"]
        assert np.linalg.norm(ball - target) < 0.05 and ball[2] > 0.1  # lifted, near the target
        assert np.abs(ro.actions).max() <= 1.0


def test_expert_regrasps_after_a_drop():
    """Knock the ball back onto the table mid-carry: the expert notices, opens, grasps again, succeeds."""
    import mujoco

    with AdroitSim("relocate", max_steps=400) as long_sim:
        expert = RelocateExpert()

        def knock(t, obs, action):
            if t == 115:
                d = long_sim.data
                d.qpos[30:36] = 0.0  # the ball's free joints: back to its body position on the table
                d.qvel[30:36] = 0.0
                mujoco.mj_forward(long_sim.model, d)

        ro = rollout(long_sim, expert, SEEDS[0], on_step=knock)
        assert "regrasp" in expert.phase_log[116:]
        assert ro.success and ro.success_at_end
        assert expert.phase_log[-1] == "hold"


def test_evaluator_on_expert_policy_matches_direct_rollouts(sim):
    res = evaluate_closed_loop(
        ExpertPolicy(sim), task="relocate", episodes=len(SEEDS) - 1, seed=SEEDS[0], sim=sim
    )
    # the evaluator's seeds are seed, seed+1, ...: compare with direct rollouts of the same seeds
    again = {r.seed: r for r in expert_rollouts("relocate", res.seeds)}
    for row in res.per_seed:
        d = again[row["seed"]]
        assert row["success"] == d.success and row["success_steps"] == d.success_steps
        assert row["return"] == pytest.approx(d.total_return, rel=1e-6)
    assert res.success_rate == 1.0 and res.success_ci95[1] == 1.0 and res.success_ci95[0] > 0.15
    assert res.chunk_size == 1 and res.mean_length == 200


class RandomPolicy:
    def __init__(self, chunk=8, seed=0):
        self.rng = np.random.default_rng(seed)
        self.chunk = chunk

    def metadata(self):
        return {
            "chunk_size": self.chunk,
            "action_dim": 30,
            "observation": {"state": {"shape": [39], "dtype": "float32"}},
        }

    def infer(self, obs):
        assert obs["state"].shape == (39,)
        return self.rng.uniform(-1, 1, (self.chunk, 30)).astype(np.float32)


def test_random_policy_fails(sim):
    res = evaluate_closed_loop(RandomPolicy(), episodes=3, sim=sim, replan_every=4)
    assert res.success_rate == 0.0 and res.success_ci95[0] == 0.0
    assert res.replan_every == 4 and len(res.per_seed) == 3
    assert res.seeds == [10_000, 10_001, 10_002]
    bad = RandomPolicy()
    bad.metadata = lambda: {"chunk_size": 8, "action_dim": 28, "observation": {"state": {"shape": [39]}}}
    with pytest.raises(ConfigError, match="action_dim"):
        evaluate_closed_loop(bad, episodes=1, sim=sim)


def test_remote_evaluation_matches_local(sim):
    from handvla.robot.server import PolicyServer

    server = PolicyServer(ExpertPolicy(sim), port=0)
    port = server.start_in_thread()
    try:
        remote = evaluate_remote(
            f"ws://127.0.0.1:{port}", task="relocate", episodes=2, seed=SEEDS[1], sim=sim
        )
    finally:
        server.stop()
    local = evaluate_closed_loop(ExpertPolicy(sim), episodes=2, seed=SEEDS[1], sim=sim)
    assert [r["success"] for r in remote.per_seed] == [r["success"] for r in local.per_seed] == [True, True]
    # float32 on the wire, float32 actions locally: the same episodes
    assert [r["return"] for r in remote.per_seed] == pytest.approx(
        [r["return"] for r in local.per_seed], rel=1e-6
    )


def test_collect_demos_and_replay(tmp_path):
    out = tmp_path / "demos"
    summary = collect_demos("relocate", 1, out, seed=SEEDS[0], image_size=32, progress=False)
    assert summary["episodes"] == 1 and summary["seeds"] == [SEEDS[0]]
    ds = RobotDataset(out)
    assert ds.num_episodes == 1 and ds.num_frames == 200 and ds.tasks == ["relocate the ball to the target"]
    assert ds.video_keys == ["observation.images.front"] and ds.fps == 100
    assert ds.feature_names("action")[0] == "A_ARTx"
    assert ds.feature_names("observation.state")[30] == "palm_minus_ball.x"
    frames = ds.frames("observation.images.front", 0, 100, 105)
    assert frames.shape == (5, 32, 32, 3) and frames.std() > 5  # a rendered scene, not a blank image
    assert ds.stats["action"].count == 200
    # replaying the recorded actions from the same seed reproduces the recorded states and the success
    ep = ds.episode(0)
    with AdroitSim("relocate") as replay_sim:
        obs = replay_sim.reset(summary["seeds"][0])
        achieved = 0
        for t in range(len(ep["action"])):
            np.testing.assert_allclose(obs["state"], ep["observation.state"][t], atol=1e-5)
            r = replay_sim.step(ep["action"][t])
            achieved += r.goal_achieved
            obs = r.obs
    assert achieved == int(ep["next.success"].sum()) and achieved > 25
