"""The benchmark suites: Meta-World MT10 behind the simulator interface (seeded, deterministic), its
scripted experts, multi-task LeRobot demos, and suite evaluation with per-task Wilson intervals that two
runs reproduce exactly; Adroit hammer and pen run for evaluation."""

from __future__ import annotations

import json

import numpy as np
import pytest

import handvla.robot.sim  # noqa: E402,F401  (first: it chooses MuJoCo's headless GL before mujoco loads)

pytest.importorskip("metaworld", reason="Meta-World: pip install --no-deps metaworld==3.1.1")
pytest.importorskip("gymnasium_robotics")

from handvla.cli import main  # noqa: E402
from handvla.errors import ConfigError  # noqa: E402
from handvla.robot.evaluate import EVAL_SEED, evaluate_suite, suite_table  # noqa: E402
from handvla.robot.lerobot_format import RobotDataset  # noqa: E402
from handvla.robot.sim.expert import collect_demos, expert_rollouts, make_expert  # noqa: E402
from handvla.robot.sim.metaworld import MT10, MetaWorldScriptedPolicy, MetaWorldSim  # noqa: E402
from handvla.robot.sim.suites import SUITES, make_sim, suite_tasks  # noqa: E402


def test_metaworld_episodes_are_seeded_and_the_experts_solve_them():
    with MetaWorldSim("push-v3") as sim:
        a = sim.reset(3)["state"]
        b = sim.reset(4)["state"]
        c = sim.reset(3)["state"]
    np.testing.assert_array_equal(a, c)
    assert not np.array_equal(a[4:7], b[4:7])  # another seed, another puck placement
    ros = expert_rollouts("reach-v3", [0, 1, 2])
    assert all(r.success for r in ros) and all(r.states.shape[1] == 39 for r in ros)

    # a do-nothing controller does not succeed at pushing: success is not free
    class Still:
        def reset(self, sim): ...
        def act(self, obs):
            return np.zeros(4, np.float32)

    from handvla.robot.sim.adroit import rollout

    with MetaWorldSim("push-v3", max_steps=60) as sim:
        assert not rollout(sim, Still(), 0).success


def test_metaworld_evaluation_seeds_use_placements_no_demonstration_seed_uses():
    from handvla.robot.sim.metaworld import EVAL_SEEDS_FROM, variation_index

    assert EVAL_SEEDS_FROM == EVAL_SEED
    demo = {variation_index(s) for s in range(300)}
    held = {variation_index(s) for s in range(EVAL_SEED, EVAL_SEED + 300)}
    assert demo == set(range(25)) | {None} and held == set(range(25, 50)) | {None}
    assert variation_index(24) == 24 and variation_index(25) is None and variation_index(EVAL_SEED + 24) == 49
    # and in the simulator: the goal of an evaluation episode is none of the demonstration seeds' goals
    with MetaWorldSim("reach-v3") as sim:
        goals = {tuple(np.round(sim.reset(s)["state"][-3:], 5)) for s in range(25)}
        evals = {tuple(np.round(sim.reset(s)["state"][-3:], 5)) for s in range(EVAL_SEED, EVAL_SEED + 25)}
    assert len(goals) == 25 and len(evals) == 25 and not goals & evals
    with pytest.raises(ConfigError, match="reach the evaluation seeds"):
        collect_demos("reach-v3", 5, "/nonexistent", seed=EVAL_SEED - 3, progress=False)


def test_metaworld_seeds_past_the_benchmark_variations_are_new_episodes():
    """Meta-World's reset ignores its seed: a variation replayed is the same episode. Seeds past the 25
    variations of their range draw their own placement (seeded, so reproducible), and the scripted expert
    still solves them; a drawn seed leaves the next variation seed's episode unchanged."""
    from handvla.robot.sim.metaworld import placement_key

    with MetaWorldSim("push-v3") as sim:
        fixed = sim.reset(EVAL_SEED + 3)["state"]
        variations = {tuple(np.round(sim.reset(s)["state"][4:7], 5)) for s in range(EVAL_SEED, EVAL_SEED + 25)}
        variations |= {tuple(np.round(sim.reset(s)["state"][4:7], 5)) for s in range(25)}
        drawn = [sim.reset(s)["state"] for s in (EVAL_SEED + 25, EVAL_SEED + 26, 25, EVAL_SEED + 25)]
        np.testing.assert_array_equal(sim.reset(EVAL_SEED + 3)["state"], fixed)
    np.testing.assert_array_equal(drawn[0], drawn[3])  # same seed, same episode
    places = {tuple(np.round(d[4:7], 5)) for d in drawn[:3]} | {tuple(np.round(d[-3:], 5)) for d in drawn[:3]}
    assert len(places) == 6 and not places & variations  # new puck and goal positions
    assert placement_key(EVAL_SEED + 3) != placement_key(EVAL_SEED + 28)
    assert all(r.success for r in expert_rollouts("push-v3", [25, 26, EVAL_SEED + 30]))


def test_suites_name_their_tasks_and_experts():
    assert suite_tasks("metaworld-mt10") == list(MT10) and len(SUITES["metaworld-mt10"]) == 10
    assert suite_tasks("adroit") == ["relocate", "door", "hammer", "pen"]
    with pytest.raises(ConfigError, match="no scripted expert for task 'hammer'"):
        make_expert("hammer")
    with pytest.raises(ConfigError, match="unknown suite"):
        suite_tasks("libero")
    for task in ("hammer", "pen"):
        with make_sim(task) as sim:
            sim.reset(0)
            r = sim.step(np.zeros(sim.action_dim, np.float32))
            assert np.isfinite(r.obs["state"]).all() and len(sim.state_names()) == sim.state_dim


def test_multi_task_demos_and_suite_eval_reproduce(tmp_path):
    tasks = ["reach-v3", "drawer-close-v3"]
    summary = collect_demos(tasks, 2, tmp_path / "demos", seed=0, image_size=32, progress=False)
    assert summary["episodes"] == 4 and set(summary["per_task"]) == set(tasks)
    ds = RobotDataset(tmp_path / "demos")
    assert ds.num_episodes == 4
    info = json.loads((tmp_path / "demos" / "meta" / "info.json").read_text())
    assert info["robot_type"] == "sawyer" and "observation.images.corner2" in info["features"]
    tasks_file = tmp_path / "demos" / "meta" / "tasks.parquet"
    assert tasks_file.is_file()

    policy = MetaWorldScriptedPolicy()
    r1 = evaluate_suite(policy, tasks, episodes=3, seed=100)
    r2 = evaluate_suite(policy, tasks, episodes=3, seed=100)
    assert r1["tasks"]["reach-v3"]["per_seed"] == r2["tasks"]["reach-v3"]["per_seed"]
    assert r1["mean_success"] == r2["mean_success"] > 0.6
    lo, hi = r1["pooled_success_ci95"]
    assert 0 <= lo <= r1["mean_success"] <= hi <= 1
    table = suite_table(r1)
    assert "reach-v3" in table and "mean over tasks" in table


def test_sim_demos_cli_writes_a_suite(tmp_path, capsys):
    # two tasks of the suite via --tasks; the whole suite is the same code with more tasks
    rc = main(
        [
            "data",
            "sim-demos",
            "--suite",
            "metaworld-mt10",
            "--tasks",
            "reach-v3,window-close-v3",
            "--episodes",
            "1",
            "--image-size",
            "0",
            "--out",
            str(tmp_path / "d"),
            "--quiet",
        ]
    )
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["episodes"] == 2 and set(out["per_task"]) == {"reach-v3", "window-close-v3"}
