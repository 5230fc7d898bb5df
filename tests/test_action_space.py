"""The unified 200-d action space: the published slot layout, per-dataset maps that fail clearly when they
do not fit, exact round trips, and a policy post-trained in the unified space that still speaks the robot's
own state and action vectors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from test_posttrain import base_config, write_dataset

from handvla.errors import ConfigError
from handvla.policy import HandVLAPolicy
from handvla.policy.action_space import SLOTS, UNIFIED_DIM, EmbodimentMap
from handvla.policy.modeling import masked_action_errors
from handvla.robot.posttrain import load_posttrain_config, run_posttrain


def test_slot_layout_is_the_published_one():
    assert UNIFIED_DIM == 200
    assert SLOTS["eef_position"] == (0, 3) and SLOTS["gripper_position"] == (18, 19)
    assert SLOTS["dexhand_position"] == (20, 26) and SLOTS["arm_joint_position"] == (50, 57)
    assert SLOTS["base_position"] == (70, 73)
    assert (
        SLOTS["right_beta"] == (90, 100)
        and SLOTS["right_theta"] == (110, 155)
        and SLOTS["left_theta"] == (155, 200)
    )
    used = np.zeros(UNIFIED_DIM, int)
    for lo, hi in SLOTS.values():
        used[lo:hi] += 1
    assert used.max() == 1  # no two slots overlap


def _map(action, state=None):
    return EmbodimentMap.model_validate({"name": "test", "state": state or [], "action": action})


def test_maps_round_trip_and_fail_clearly():
    m = _map(
        [
            {"slot": "eef_position", "index": [2, 0, 1]},
            {"slot": "gripper_position", "index": "3:4"},
            {"slot": "76:78", "index": [4]},
        ],
        [{"slot": "arm_joint_position", "index": "0:7"}],
    ).resolve(9, 5)  # state dims 7 and 8 are left out (privileged values)
    x = np.random.default_rng(0).normal(size=(4, 5)).astype(np.float32)
    u = m.action_to_unified(x)
    assert u.shape == (4, 200) and np.count_nonzero(u[0]) == 5
    np.testing.assert_array_equal(u[:, 0], x[:, 2])
    np.testing.assert_array_equal(u[:, 76], x[:, 4])
    np.testing.assert_array_equal(m.action_from_unified(u), x)
    t = torch.from_numpy(x)
    assert torch.equal(m.action_to_unified(t), torch.from_numpy(u))
    s = m.state_to_unified(np.arange(9, dtype=np.float32))
    np.testing.assert_array_equal(s[50:57], np.arange(7)) and np.testing.assert_array_equal(
        np.delete(s, range(50, 57)), 0
    )
    assert m.action_mask().sum() == 5

    with pytest.raises(
        ConfigError, match=r"embodiment.action\[0\]: 4 dimensions do not fit slot 'eef_position'"
    ):
        _map([{"slot": "eef_position", "index": "0:4"}]).resolve(3, 4)
    with pytest.raises(ConfigError, match=r"dimensions \[4\] are not mapped"):
        _map([{"slot": "arm_joint_position", "index": "0:4"}]).resolve(3, 5)
    with pytest.raises(ConfigError, match=r"index: \[5\] outside"):
        _map([{"slot": "arm_joint_position", "index": [5]}]).resolve(3, 5)
    with pytest.raises(ConfigError, match="same unified dimensions"):
        _map([{"slot": "eef_position", "index": [0]}, {"slot": "0:1", "index": [1]}]).resolve(3, 2)
    with pytest.raises(ValidationError, match="start:end"):
        _map([{"slot": "elbow", "index": [0]}])


def test_the_loss_counts_only_an_embodiments_slots():
    pred, target = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    pred[..., 3] = 100.0  # an unused slot: its error must not count
    mask = torch.ones(2, 3, 4, dtype=torch.bool)
    mask[..., 3] = False
    mask[1, 2] = False  # a padded step
    l1, mse = masked_action_errors(pred, target, mask)
    assert float(l1) == pytest.approx(1.0) and float(mse) == pytest.approx(1.0)


def test_policy_trains_in_the_unified_space_and_speaks_robot_units(tmp_path):
    ds = write_dataset(tmp_path / "ds", image_hw=None, episodes=3, T=16)  # state 7, action 5
    embodiment = {
        "name": "test_arm",
        "state": [{"slot": "arm_joint_position", "index": "0:7"}],
        "action": [{"slot": "eef_position", "index": "0:3"}, {"slot": "eef_rotation", "index": "3:5"}],
    }
    cfg = base_config(ds, tmp_path / "run", train__max_steps=100)
    cfg["data"]["embodiment"] = embodiment
    summary = run_posttrain(load_posttrain_config(base=cfg), progress=False)
    losses = [
        json.loads(x).get("loss") for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    losses = [x for x in losses if x is not None]
    assert len(losses) == 100 and np.mean(losses[-10:]) < 0.85 * np.mean(losses[:10]), (
        losses[:10],
        losses[-10:],
    )
    saved = json.loads((tmp_path / "run" / "final" / "policy_config.json").read_text())
    assert saved["embodiment"]["name"] == "test_arm" and summary["action_dim"] == 5
    policy = HandVLAPolicy.load(tmp_path / "run" / "final", device="cpu")
    assert policy.model.action_head[2].out_features == 200 and policy.model.proprio[0].in_features == 200
    out = policy.infer({"state": np.zeros(7, np.float32)})
    assert out.shape == (4, 5) and np.isfinite(out).all()
    meta = policy.metadata()
    assert meta["state_dim"] == 7 and meta["action_dim"] == 5
    prev = np.full((3, 5), 4.0, np.float32)
    np.testing.assert_array_equal(
        policy.infer({"state": np.zeros(7, np.float32), "prev_actions": prev, "inference_delay": 2})[:2],
        prev[:2],
    )

    # the map is the data section's; a model section that sets it is refused
    bad = base_config(ds, tmp_path / "bad")
    bad["model"]["embodiment"] = embodiment
    with pytest.raises(ConfigError, match="model.embodiment: set from the dataset"):
        load_posttrain_config(base=bad)
    # a map that does not fit the dataset fails before training
    bad = base_config(ds, tmp_path / "bad2")
    bad["data"]["embodiment"] = {"name": "x", "action": [{"slot": "eef_position", "index": "0:3"}]}
    with pytest.raises(ConfigError, match=r"dimensions \[3, 4\] are not mapped"):
        run_posttrain(load_posttrain_config(base=bad), progress=False)


def test_one_run_trains_two_embodiments(tmp_path):
    """A 7-d-state / 5-d-action arm and a 4-d / 3-d gripper robot in one run: each dataset keeps its own
    statistics (in the checkpoint, the second under its embodiment name), the loss sees both, and the
    deployed policy serves the main embodiment."""
    main_ds = write_dataset(tmp_path / "arm", image_hw=None, episodes=2, T=12)
    other = write_dataset(
        tmp_path / "grip", state_dim=4, action_dim=3, episodes=2, T=12, seed=1, image_hw=None
    )
    cfg = base_config(main_ds, tmp_path / "run", train__max_steps=6)
    cfg["data"]["embodiment"] = {
        "name": "arm",
        "state": [{"slot": "arm_joint_position", "index": "0:7"}],
        "action": [{"slot": "arm_joint_position", "index": "0:5"}],
    }
    cfg["data"]["extra_datasets"] = [
        {
            "dataset": str(other),
            "embodiment": {
                "name": "gripper_bot",
                "state": [
                    {"slot": "eef_position", "index": "0:3"},
                    {"slot": "gripper_position", "index": [3]},
                ],
                "action": [{"slot": "eef_position", "index": "0:3"}],
            },
        }
    ]
    summary = run_posttrain(load_posttrain_config(base=cfg), progress=False)
    assert summary["frames"]["train"] == 48  # 24 frames of each dataset
    assert summary["extra_datasets"] == [
        {"dataset": str(other), "embodiment": "gripper_bot", "episodes": 2, "sample_share": 0.5}
    ]
    assert summary["main_sample_share"] == 0.5
    from handvla.policy import Normalizer

    norm = Normalizer.load(tmp_path / "run" / "final")
    assert {"observation.state", "action", "gripper_bot:observation.state", "gripper_bot:action"} <= set(
        norm.stats
    )
    assert norm.stats["gripper_bot:action"].mean.shape == (3,) and norm.stats["action"].mean.shape == (5,)
    policy = HandVLAPolicy.load(tmp_path / "run" / "final", device="cpu")
    assert policy.infer({"state": np.zeros(7, np.float32)}).shape == (4, 5)

    # a weight sets the extra dataset's share of the samples (the trainer shuffles; the run is the same size)
    cfg["data"]["extra_datasets"][0]["weight"] = 0.25
    cfg["train"]["output_dir"] = str(tmp_path / "run_w")
    summary = run_posttrain(load_posttrain_config(base=cfg), progress=False)
    assert summary["frames"]["train"] == 48
    assert summary["extra_datasets"][0]["sample_share"] == 0.25 and summary["main_sample_share"] == 0.75
    cfg["data"]["extra_datasets"][0]["weight"] = 1.0
    with pytest.raises(ConfigError, match="weight"):
        load_posttrain_config(base=cfg)
    del cfg["data"]["extra_datasets"][0]["weight"]

    # names must differ (the statistics are keyed by them), and the main dataset needs a map too
    cfg["data"]["extra_datasets"][0]["embodiment"]["name"] = "arm"
    with pytest.raises(ConfigError, match="embodiment names must differ"):
        load_posttrain_config(base=cfg)
    del cfg["data"]["embodiment"]
    with pytest.raises(ConfigError, match="needs an embodiment map too"):
        load_posttrain_config(base=cfg)


def test_sample_shares_draw_each_part_as_often_as_asked():
    from handvla.robot.posttrain import ConcatTrainDataset, _sample_shares

    assert _sample_shares([10, 90], [None]) is None
    assert _sample_shares([10, 90, 50], [0.5, None]) == pytest.approx([0.5 * 10 / 60, 0.5, 0.5 * 50 / 60])
    parts = [list(range(10)), list(range(100, 190))]  # a small main part and a large extra one
    data = ConcatTrainDataset(parts, _sample_shares([10, 90], [0.5]))
    items = [data[i] for i in range(len(data))]
    assert len(data) == 100
    main = [x for x in items if x < 100]
    extra = [x for x in items if x >= 100]
    assert len(main) == len(extra) == 50
    assert sorted(set(main)) == list(range(10)) and all(main.count(x) == 5 for x in range(10))  # repeated
    assert len(set(extra)) == 50 and min(extra) == 100 and max(extra) >= 186  # spread over the whole part
    plain = ConcatTrainDataset(parts)
    assert [plain[i] for i in range(len(plain))] == parts[0] + parts[1]


def test_human_hand_episodes_from_the_store_train_beside_a_robot(tmp_path):
    """An episode store (HandWorld here) as an extra embodiment: MANO shape as state (right_beta), the
    hand pose chunk as actions (right_theta), its camera in the robot camera's place."""
    from handvla.data.store import EpisodeWriter
    from handvla.synth.handworld.episodes import HandWorldConfig, make_episode

    store = tmp_path / "hands"
    hw = HandWorldConfig(width=80, height=60, seconds=2.0)
    with EpisodeWriter(store, fps=hw.fps, hand_model="builtin", joints=True) as w:
        for i in range(2):
            w.add_episode(make_episode(i, 3, hw).episode)
    robot = write_dataset(tmp_path / "arm", episodes=2, T=12)  # one 20x20 camera
    cfg = base_config(robot, tmp_path / "run", train__max_steps=4)
    cfg["data"]["embodiment"] = {
        "name": "arm",
        "state": [{"slot": "arm_joint_position", "index": "0:7"}],
        "action": [{"slot": "arm_joint_position", "index": "0:5"}],
    }
    cfg["data"]["extra_datasets"] = [
        {
            "dataset": str(store),
            "state_key": "right_hand.betas",
            "action_key": "right_hand.hand_pose",
            "embodiment": {
                "name": "human_right_hand",
                "state": [{"slot": "right_beta", "index": "0:10"}],
                "action": [{"slot": "right_theta", "index": "0:45"}],
            },
        }
    ]
    summary = run_posttrain(load_posttrain_config(base=cfg), progress=False)
    assert summary["extra_datasets"][0]["embodiment"] == "human_right_hand"
    assert summary["frames"]["train"] > 24  # the robot's 24 frames and the hands'
    assert np.isfinite(summary["train"]["final_loss"])
