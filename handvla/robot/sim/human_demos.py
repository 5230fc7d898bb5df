"""Robot demonstrations from human hand motion: human pick-and-carry episodes of an episode store, retargeted
to the Adroit hand (``handvla.robot.retarget``) and replayed in the simulator, written as Adroit relocate
demonstrations (the same LeRobot v3 features as the scripted expert's, so a post-training run takes them as
another dataset: ``data.extra_datasets``, an embodiment of their own).

One episode, step by step:
1. **What the human did** (``relocate_plan``): an episode whose ground truth names the grasped object and
   its track (HandWorld's ``pick_up`` and ``move``): the acting hand's joints in the world frame (a left
   hand mirrored to a right one, x -> -x), the window from the first reach to the end of the carry (the last
   ``move`` segment, else ``lift``), and the object's position at its start and end. Stores without that
   ground truth (real captures) have no object to hand to the robot and are skipped, with the reason.
2. **Where it happens**: the simulator's episode of ``seed`` places the ball; the human scene is moved so
   the object's start is the ball's, and the relocate target is put where the human's object ended (moved
   the same way). HandWorld's world and Adroit's share their axes (z up, the hand reaching along +y).
3. **Retarget** the window's hand (grasp centre exact, fingertips through the Adroit kinematics) and
4. **replay** it: a lead-in from the robot's start pose, then the window at the human's speed (faster when
   it is longer than ``play_seconds``), then the last pose held. The arm follows with the scripted expert's
   law (PD plus gravity compensation, ``expert.arm_command``), the fingers with their position servos.
   The reach is raised by ``clearance`` (fading out just before the grasp): HandWorld's hands reach at
   table height and hold objects without contact, and such a reach sweeps a real ball away (60 HandWorld
   carries of seed 1: 7 % lifted the ball without it, 35 % with 0.1 m; 450 carries of seed 2 with the
   defaults: 31 % relocated it). What the simulator does with the ball decides the
   episode; ``only_successful`` keeps the replays that relocated it (the task's success rule, and the ball
   lifted at least ``MIN_LIFT_M``), as ``collect_demos`` keeps the expert's successes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from handvla.atomic import atomic_write_json
from handvla.data.lerobot import video_key
from handvla.errors import ConfigError
from handvla.robot.lerobot_format import RobotDatasetWriter
from handvla.robot.retarget import AdroitRetargeter, RetargetResult
from handvla.robot.sim.adroit import AdroitSim, rollout
from handvla.robot.sim.expert import arm_command, demo_features

#: HandWorld's carry tasks; a plan needs a grasp and one of the carry primitives
CARRY_PRIMITIVES = ("move", "lift")
HUMAN_SEED_FROM = 50_000  # simulator placements of human replays: apart from demos (0..) and evaluation (10000..)
#: a replay counts as a relocation when it meets the task's success rule AND lifted the ball this much: a
#: human carry can end within the rule's 0.1 m of where the ball lies, which the rule alone would pass
MIN_LIFT_M = 0.03


def ball_lift_m(states: np.ndarray) -> float:
    """Highest rise of the ball above its first height in a relocate episode's states (metres): the rise of
    ``ball - target`` (state 38, its z), the target not moving within an episode."""
    z = np.asarray(states, np.float64)[:, 38]
    return float(z.max() - z[0])


@dataclass
class HumanPlan:
    """A human pick-and-carry, ready to retarget: right-hand joints (T, 21, 3) in the world frame (metres),
    the frames [start, stop) from the reach to the end of the carry, the object's start and end."""

    key: str
    joints_world: np.ndarray
    start: int
    stop: int
    object_start: np.ndarray
    object_end: np.ndarray
    fps: float
    mirrored: bool
    task: str
    grip: np.ndarray | None = None  # (T,) bool: the human's grip is closed (holding the object)

    @property
    def seconds(self) -> float:
        return (self.stop - self.start) / self.fps


def relocate_plan(ep) -> tuple[HumanPlan | None, str]:
    """The pick-and-carry of a stored episode (``handvla.data.schema.Episode`` with joints), or None and
    why not."""
    gt = ep.ground_truth
    if not gt or not gt.get("targets") or not gt.get("object_tracks"):
        return None, "no ground truth of a grasped object"
    acting = gt.get("acting_hands") or []
    if len(acting) != 1:
        return None, f"{len(acting)} acting hands (one-hand carries only)"
    side = acting[0]
    segs = gt.get("primitives", {}).get(side, [])
    names = [g["name"] for g in segs]
    if "grasp" not in names or not any(c in names for c in CARRY_PRIMITIVES):
        return None, f"task {gt.get('task')!r} has no grasp and carry"
    target = next((t for t in gt["targets"] if t["hand"] == side), None)
    track = None if target is None else gt["object_tracks"].get(str(target["object_id"]))
    if track is None:
        return None, "the grasped object's track is missing"
    if side not in ep.joints:
        return None, "the store has no joints for the acting hand"
    start = next((g["start"] for g in segs if g["name"] in ("reach", "grasp")), 0)
    carry = next(c for c in CARRY_PRIMITIVES if c in names)
    stop = max(g["stop"] for g in segs if g["name"] == carry)
    joints = ep.camera.camera_to_world(np.asarray(ep.joints[side], np.float64))
    obj = np.asarray(track["position_world"], np.float64)
    mirrored = side == "left"
    if mirrored:  # a left hand mirrored into a right one (and its scene with it)
        joints[..., 0] *= -1.0
        obj[:, 0] *= -1.0
    valid = np.asarray(ep.hands[side].valid, bool)[start:stop]
    if not valid.all() or not np.isfinite(joints[start:stop]).all():
        return None, "the acting hand is missing in some frames of the carry"
    grip = np.asarray(gt.get("grip_closed", {}).get(side, np.zeros(len(joints))), bool)
    return HumanPlan(ep.key, joints, int(start), int(stop), obj[start], obj[stop - 1], ep.fps, mirrored,
                     gt.get("task", ""), grip), ""  # fmt: skip


class HumanReplay:
    """A controller (``reset(sim)``, ``act(obs)``) that replays a `HumanPlan` retargeted onto the Adroit
    hand in the relocate episode it is reset into (module docstring, steps 2-4)."""

    moves_scene = True  # its reset moves the target: the rollout observes again

    def __init__(self, plan: HumanPlan, retargeter: AdroitRetargeter | None = None, play_seconds: float = 1.5,
                 lead_in_seconds: float = 0.15, clearance: float = 0.1, settle_frames: int = 3,
                 kp: float = 2.0, kd: float = 40.0):  # fmt: skip
        self.plan, self.retargeter = plan, retargeter
        self.clearance, self.settle_frames = float(clearance), int(settle_frames)
        self.play_seconds, self.lead_in_seconds = float(play_seconds), float(lead_in_seconds)
        self.kp, self.kd = float(kp), float(kd)
        self.result: RetargetResult | None = None
        self.speed = 1.0

    def reset(self, sim: AdroitSim) -> None:
        if sim.spec.name != "relocate":
            raise ConfigError(f"HumanReplay replays carries into relocate, not {sim.spec.name!r}")
        self.sim = sim
        if self.retargeter is None:
            self.retargeter = AdroitRetargeter(sim.model)
        p = self.plan
        ball = sim.privileged()["obj_pos"]
        offset = ball - p.object_start
        sim.set_target(p.object_end + offset)
        q0 = sim.data.qpos[:30].copy()
        joints = p.joints_world[p.start : p.stop].copy()
        if self.clearance and p.grip is not None and p.grip[p.start : p.stop].any():
            # come in from above: the reach is raised by ``clearance``, fading out ``settle_frames`` before
            # the grasp closes (a human reach at table height sweeps a real ball away)
            g = max(1, int(np.argmax(p.grip[p.start : p.stop])) - self.settle_frames)
            u = np.clip(1.0 - np.arange(len(joints)) / g, 0.0, 1.0)
            joints[..., 2] += self.clearance * (u * u * (3 - 2 * u))[:, None]
        self.result = self.retargeter.retarget(joints, offset, q_start=q0)
        qs = self.result.qpos
        # the reference per control step: lead-in, the window (sped up to fit), the last pose held
        fps = sim.fps
        self.speed = max(1.0, p.seconds / self.play_seconds)
        n_play = max(2, int(round(p.seconds / self.speed * fps)))
        src_t = np.linspace(0.0, len(qs) - 1, n_play)
        i0 = np.floor(src_t).astype(int)
        i1 = np.minimum(i0 + 1, len(qs) - 1)
        f = (src_t - i0)[:, None]
        play = (1 - f) * qs[i0] + f * qs[i1]
        n_lead = max(1, int(round(self.lead_in_seconds * fps)))
        lead = q0 + np.linspace(0.0, 1.0, n_lead + 1)[1:, None] * (play[0] - q0)
        self.reference = np.concatenate([lead, play])
        self._act_mean, self._act_rng = sim.env.act_mean.copy(), sim.env.act_rng.copy()

    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        q_des = self.reference[min(self.sim.t, len(self.reference) - 1)]
        ctrl = q_des.copy()  # the hand's actuators are position servos: command = joint target
        ctrl[:6] = arm_command(self.sim.data, q_des, self.kp, self.kd)
        return np.clip((ctrl - self._act_mean) / self._act_rng, -1.0, 1.0).astype(np.float32)

    def quality(self) -> dict[str, float]:
        """Retargeting errors of the last reset (millimetres)."""
        r = self.result
        return {
            "centre_mm": float(r.centre_error_m().mean() * 1e3),
            "keypoint_mm": float(r.errors_m().mean() * 1e3),
            "shape_mm": float(r.shape_error_m.mean() * 1e3),
            "scale": float(r.scale),
            "speed": float(self.speed),
        }


def collect_human_demos(
    store: str | Path,
    out_dir: str | Path,
    max_episodes: int | None = None,
    seed: int = HUMAN_SEED_FROM,
    image_size: int | tuple[int, int] | None = 64,
    camera: str | None = None,
    only_successful: bool = True,
    play_seconds: float = 1.5,
    clearance: float = 0.1,
    episodes_per_file: int = 50,
    progress: bool = True,
) -> dict[str, Any]:
    """Replay the pick-and-carry episodes of the episode store ``store`` on the Adroit hand (module
    docstring) and write them as relocate demonstrations to a LeRobot v3 dataset at ``out_dir`` (the
    scripted expert's features). Episode ``i`` of the store plays in the simulator placement of ``seed +
    i``. ``max_episodes``: stop after writing this many. Returns (and writes to ``out_dir/human_demos.json``)
    a summary: episodes read, planned, replayed, written, success rate of the replays, the skipped
    episodes' reasons, retargeting errors."""
    from handvla.data.store import EpisodeStore

    st = EpisodeStore(store)
    if st.with_joints is False:
        raise ConfigError(f"{store}: the store has no hand joints to retarget")
    t0 = time.perf_counter()
    sim = AdroitSim("relocate", image_size=image_size, **({"camera": camera} if camera else {}))
    blind = AdroitSim("relocate") if sim.image_hw is not None else sim
    key = video_key(sim.camera or "main")
    writer = RobotDatasetWriter(out_dir, sim.fps, demo_features(sim, sim.image_hw, key),
                                robot_type=sim.spec.robot_type, episodes_per_file=episodes_per_file)  # fmt: skip
    retargeter = AdroitRetargeter(blind.model)
    skipped: dict[str, int] = {}
    rows: list[dict[str, Any]] = []
    written = read = 0
    bar = tqdm(total=len(st), desc="human replays", unit="ep") if progress else None
    try:
        for k in range(len(st)):
            if max_episodes is not None and written >= max_episodes:
                break
            if bar is not None:
                bar.update(1)
            plan, why = relocate_plan(st.load_episode(k, with_video=False))
            read += 1
            if plan is None:
                skipped[why] = skipped.get(why, 0) + 1
                continue
            ctl = HumanReplay(plan, retargeter, play_seconds=play_seconds, clearance=clearance)
            ro = rollout(blind, ctl, seed + k)  # judged without rendering; kept episodes are rendered below
            lift = ball_lift_m(ro.states)
            row = {"episode": k, "key": plan.key, "task": plan.task, "seed": seed + k, "mirrored": plan.mirrored,
                   "success": bool(ro.success), "ball_lift_m": round(lift, 4),
                   "relocated": bool(ro.success and lift >= MIN_LIFT_M), **ctl.quality()}  # fmt: skip
            rows.append(row)
            if only_successful and not row["relocated"]:
                continue
            if sim.image_hw is not None:  # the same episode again (deterministic), now with its camera
                ro = rollout(sim, ctl, seed + k, record_images=True)
            writer.add_episode(ro.frames(key), sim.instruction)
            written += 1
    except BaseException:
        writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        sim.close()
        if blind is not sim:
            blind.close()
    if written == 0:
        writer.abort()
        raise ConfigError(
            f"{store}: no human demonstration written ({len(rows)} replays, {sum(r['relocated'] for r in rows)} "
            f"relocated the ball; skipped: {skipped or 'none'})"
        )
    writer.close()
    summary = {
        "store": str(store),
        "out_dir": str(out_dir),
        "episodes_read": read,
        "replayed": len(rows),
        "relocated_rate": float(np.mean([r["relocated"] for r in rows])) if rows else 0.0,
        "success_rule_rate": float(np.mean([r["success"] for r in rows])) if rows else 0.0,
        "written": written,
        "only_successful": bool(only_successful),
        "skipped": skipped,
        "retarget_mm": {
            m: float(np.mean([r[m] for r in rows])) for m in ("centre_mm", "keypoint_mm", "shape_mm")
        },
        "seconds": round(time.perf_counter() - t0, 1),
        "per_episode": rows,
    }
    atomic_write_json(Path(out_dir) / "human_demos.json", summary, indent=2)
    return summary
