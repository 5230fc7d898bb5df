"""A scripted expert for Adroit Relocate, and demonstrations from it written as a LeRobot v3 dataset.

The expert is a controller on privileged simulator state (palm grasp site, ball and target positions,
joint positions and velocities), in phases:

    approach  move the palm site above the ball (``above`` metres), fingers slightly pre-shaped
    descend   lower it to the grasp point (``grasp_offset`` from the ball centre)
    close     close the fingers and thumb to the grasp pose over ``close_steps`` steps, then settle
    carry     move so that the ball (as held: ball = palm + the grip offset seen after closing) reaches
              the target; the reference slows down near it
    hold      (carry within 2 cm of the target) keep the ball there
    regrasp   the ball got away from the palm (> ``drop_distance``): open the hand, rise, start over

Arm control, in the joint space of the arm's first four joints (slides ARTx ARTy ARTz and the pitch ARRx;
the roll and yaw are held at 0): a reference point moves toward each phase's goal at most ``speed``;
damped least-squares inverse kinematics of the palm site (on a scratch copy of the MuJoCo data, joint
limits respected; ARTy only reaches 0..0.2 m, so the arm pitches to reach the table) gives joint targets;
the actuator command is chosen so the actuator force (``500 ctrl - 200 q``, the XML's affine position
actuator) equals a PD law plus gravity compensation (``qfrc_bias``). Finger actuators are position servos:
their commands are the grasp pose scaled by the closing fraction. The expert's action is that command
mapped back to [-1, 1] (``(ctrl - act_mean) / act_rng``), i.e. exactly what the environment applies.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, model_validator
from tqdm import tqdm

from handvla.config import ConfigModel
from handvla.data.lerobot import vector_feature, video_feature, video_key
from handvla.errors import ConfigError
from handvla.robot.lerobot_format import RobotDatasetWriter
from handvla.robot.sim.adroit import AdroitSim, Rollout, rollout
from handvla.robot.sim.metaworld import EVAL_SEEDS_FROM, MT10, MetaWorldExpert, placement_key
from handvla.robot.sim.suites import make_sim, task_spec

# Closed-hand joint targets (rad), found during development by a random search over grasp poses (40 poses,
# each scored by relocate success on 16 seeds, the best ones re-checked on 60 others); the success they
# give is measured by benchmarks/sim_expert.py.
DEFAULT_GRASP: dict[str, float] = {
    **{f"{f}J2": 0.901 for f in ("FF", "MF", "RF", "LF")},  # MCP flexion
    **{f"{f}J1": 0.967 for f in ("FF", "MF", "RF", "LF")},  # PIP
    **{f"{f}J0": 0.579 for f in ("FF", "MF", "RF", "LF")},  # DIP
    "LFJ4": 0.55,  # little finger CMC
    "THJ4": 0.365,
    "THJ3": 0.937,
    "THJ2": 0.257,
    "THJ1": -0.327,
    "THJ0": -0.01,
}
PHASES = ("approach", "descend", "close", "carry", "hold", "regrasp")
SLIDE_STIFFNESS = 200.0  # N/m and N m/rad: the arm actuators' bias (biasprm -200) ...
ARM_GAIN = 500.0  # ... and gain (gainprm 500): force = 500 ctrl - 200 q


def arm_command(data, q_des: np.ndarray, kp: float, kd: float) -> np.ndarray:
    """Commands (6,) for the Adroit arm's affine actuators (force ``500 ctrl - 200 q``) that make the force
    a PD law towards the joint targets ``q_des`` (stiffness ``kp`` x 200, damping ``kd`` on the three
    slides) plus gravity compensation (``qfrc_bias``)."""
    q, qd = data.qpos[:6], data.qvel[:6]
    force = SLIDE_STIFFNESS * kp * (np.asarray(q_des)[:6] - q) + data.qfrc_bias[:6]
    force[:3] -= kd * qd[:3]
    return (force + SLIDE_STIFFNESS * q) / ARM_GAIN


class RelocateExpertConfig(ConfigModel):
    """Gains, speeds, heights and the grasp pose of the scripted relocate expert."""

    kp: float = 2.0  # extra arm stiffness, in multiples of the actuators' own 200 N/m
    kd: float = 40.0  # N s/m of damping added on the three slide joints
    speed: float = 1.2  # m/s: fastest motion of the palm reference
    descend_speed: float = 0.8  # m/s
    carry_slowdown: float = 10.0  # 1/s: near the goal the reference moves at most this x distance per second
    above: float = 0.07  # m: pre-grasp height of the palm site above the ball centre
    grasp_offset: tuple[float, float, float] = (0.0, -0.04, -0.007)  # m: palm site - ball centre at grasp
    preshape: float = 0.2  # closing fraction while approaching
    close_steps: int = 10
    settle_steps: int = 4
    rot_weight: float = 0.3  # IK preference for the slides over the pitch joint (smaller = pitch less)
    drop_distance: float = 0.08  # m: ball this far from where the grip holds it = lost, regrasp
    hold_radius: float = 0.02  # m: carry within this of the target is reported as "hold"
    grasp: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GRASP))

    @model_validator(mode="after")
    def _check(self) -> RelocateExpertConfig:
        if self.speed <= 0 or self.descend_speed <= 0:
            raise ConfigError("expert speeds must be positive")
        if self.close_steps < 1:
            raise ConfigError("close_steps must be >= 1")
        return self


class RelocateExpert:
    """The scripted relocate controller (see the module docstring). ``reset(sim)`` then ``act(obs)``."""

    def __init__(self, config: RelocateExpertConfig | None = None):
        self.cfg = config or RelocateExpertConfig()
        self.sim: AdroitSim | None = None
        self.phase = "approach"
        self.phase_log: list[str] = []

    def reset(self, sim: AdroitSim) -> None:
        import mujoco

        if sim.spec.name != "relocate":
            raise ConfigError(f"RelocateExpert drives the relocate task, not {sim.spec.name!r}")
        self.sim, self._mj = sim, mujoco
        m = sim.model
        self._scratch = mujoco.MjData(m)
        names = sim.action_names()
        self._act = {n[2:]: i for i, n in enumerate(names)}  # "A_FFJ2" -> index
        unknown = [j for j in self.cfg.grasp if j not in self._act]
        if unknown:
            raise ConfigError(f"grasp pose names unknown joints {unknown}")
        self._arm = np.arange(4)  # ARTx ARTy ARTz ARRx (qpos / dof / actuator 0..3 in this model)
        self._lo, self._hi = m.jnt_range[self._arm, 0], m.jnt_range[self._arm, 1]
        self._act_mean, self._act_rng = sim.env.act_mean.copy(), sim.env.act_rng.copy()
        self._site = sim.env.S_grasp_site_id
        self._jac = np.zeros((3, m.nv))
        p = sim.privileged()
        self._ref = p["palm_pos"].copy()
        self._q_guess = sim.data.qpos[:6].copy()
        self._grip = np.zeros(3)
        self._close = 0.0
        self.phase, self._t, self._t_phase = "approach", 0, 0
        self.phase_log = []

    # -- helpers ------------------------------------------------------------------------------------------
    def _ik(self, target: np.ndarray) -> np.ndarray:
        """Joint targets (6,) placing the palm site at ``target`` (damped least squares, limits clamped)."""
        mj, m, s = self._mj, self.sim.model, self._scratch
        s.qpos[:] = self.sim.data.qpos
        s.qpos[:6] = self._q_guess
        s.qpos[4:6] = 0.0  # yaw and roll held at 0
        w = np.array([1.0, 1.0, 1.0, self.cfg.rot_weight])
        for _ in range(10):
            mj.mj_kinematics(m, s)
            mj.mj_comPos(m, s)
            err = target - s.site_xpos[self._site]
            if err @ err < 4e-8:  # 0.2 mm
                break
            mj.mj_jacSite(m, s, self._jac, None, self._site)
            jw = self._jac[:, self._arm] * w
            dq = w * (jw.T @ np.linalg.solve(jw @ jw.T + 1e-4 * np.eye(3), err))
            s.qpos[self._arm] = np.clip(s.qpos[self._arm] + dq, self._lo, self._hi)
        self._q_guess = s.qpos[:6].copy()
        return self._q_guess

    def _set_phase(self, phase: str) -> None:
        self.phase, self._t_phase = phase, self._t

    # -- control ------------------------------------------------------------------------------------------
    def act(self, obs: dict[str, np.ndarray] | None = None) -> np.ndarray:
        if self.sim is None:
            raise ConfigError("RelocateExpert.act before reset(sim)")
        cfg, d = self.cfg, self.sim.data
        p = self.sim.privileged()
        palm, ball, target = p["palm_pos"], p["obj_pos"], p["target_pos"]
        grasp_point = ball + np.asarray(cfg.grasp_offset)
        dt = 1.0 / self.sim.fps
        vmax = cfg.speed * dt
        since = self._t - self._t_phase

        if self.phase in ("carry", "hold") and np.linalg.norm(ball - (palm + self._grip)) > cfg.drop_distance:
            self._set_phase("regrasp")
            since = 0
        if self.phase == "approach":
            goal = grasp_point + np.array([0.0, 0.0, cfg.above - cfg.grasp_offset[2]])
            self._close = cfg.preshape * min(1.0, self._t / 10)
            if np.linalg.norm((palm - goal)[:2]) < 0.02 and abs(palm[2] - goal[2]) < 0.03:
                self._set_phase("descend")
        elif self.phase == "descend":
            goal, vmax = grasp_point, cfg.descend_speed * dt
            if np.linalg.norm(palm - goal) < 0.012 or since > 30:
                self._set_phase("close")
        elif self.phase == "close":
            goal = grasp_point  # keep the hand on the ball while the fingers close
            frac = min(1.0, since / cfg.close_steps)
            self._close = cfg.preshape + (1.0 - cfg.preshape) * frac
            if since >= cfg.close_steps + cfg.settle_steps:
                self._grip = ball - palm
                self._set_phase("carry")
        elif self.phase == "regrasp":
            goal = palm + np.array([0.0, 0.0, 0.05])
            self._close = 0.0
            if since >= 15:
                self._set_phase("approach")
        if self.phase in ("carry", "hold"):
            goal = target - self._grip
            dist = np.linalg.norm(goal - palm)
            # slow down near the goal: an abrupt stop throws the ball out of the weak finger grip
            vmax = min(vmax, max(0.002, cfg.carry_slowdown * dt * dist))
            held_dist = np.linalg.norm(palm + self._grip - target)
            self.phase = "hold" if held_dist < cfg.hold_radius else "carry"

        step = goal - self._ref
        n = np.linalg.norm(step)
        self._ref = self._ref + (step if n <= vmax else step * (vmax / n))
        ctrl = self._act_mean.copy()
        ctrl[:6] = arm_command(d, self._ik(self._ref), cfg.kp, cfg.kd)
        for joint, closed in cfg.grasp.items():
            ctrl[self._act[joint]] = closed * self._close
        self._t += 1
        self.phase_log.append(self.phase)
        return np.clip((ctrl - self._act_mean) / self._act_rng, -1.0, 1.0).astype(np.float32)


class ExpertPolicy:
    """The scripted expert behind the ``Policy`` protocol (chunk size 1), to test evaluators and servers.

    It reads privileged state from the sim it is bound to, so it works only in the process of that sim
    (also when served: the server thread calls ``infer`` while the evaluator waits). It restarts itself
    on the first step of every episode (``sim.t == 0``)."""

    def __init__(self, sim: AdroitSim, config: Any = None):
        self.sim = sim
        self.expert = make_expert(sim.spec.name, config)

    def metadata(self) -> dict[str, Any]:
        return {
            "chunk_size": 1,
            "action_dim": self.sim.action_dim,
            "observation": self.sim.observation_spec(),
        }

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        if self.sim.t == 0 or self.expert.sim is None:
            self.expert.reset(self.sim)
        return self.expert.act(obs)[None]


def make_expert(task: str, config: Any = None):
    """The scripted expert of ``task``: relocate (`RelocateExpert`) and the Meta-World MT10 tasks (the
    metaworld package's scripted policies). Adroit door, hammer and pen have none."""
    task_spec(task)
    if task == "relocate":
        return RelocateExpert(config)
    if task in MT10:
        return MetaWorldExpert(task)
    raise ConfigError(f"no scripted expert for task {task!r} (have: relocate and the Meta-World MT10 tasks)")


# ---------------------------------------------------------------------------------------------------------
# demonstrations
# ---------------------------------------------------------------------------------------------------------


def demo_features(sim: AdroitSim, image_size: tuple[int, int] | None, camera_key: str) -> dict[str, Any]:

    feats = {
        "observation.state": vector_feature(sim.state_dim, sim.state_names()),
        "action": vector_feature(sim.action_dim, sim.action_names()),
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.success": {"dtype": "bool", "shape": [1], "names": None},
    }
    if image_size is not None:
        feats[camera_key] = video_feature(image_size[0], image_size[1], sim.fps)
    return feats


def collect_demos(
    task: str | Sequence[str],
    n_episodes: int,
    out_dir: str | Path,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = 128,
    camera: str | None = None,
    only_successful: bool = True,
    max_attempts: int | None = None,
    episodes_per_file: int = 50,
    expert_config: Any = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the scripted expert on seeds ``seed, seed+1, ...`` and write ``n_episodes`` demonstrations to a
    LeRobot v3 dataset at ``out_dir``: ``observation.state`` (the sim state), ``action``, ``next.reward``,
    ``next.success`` and, unless ``image_size`` is None, the video ``observation.images.<camera>``; task
    text = the task's instruction. ``task`` may be several tasks (a suite's, with one state and action
    size): ``n_episodes`` each, in one multi-task dataset. ``only_successful``: keep only episodes the
    expert solved (by the episode success rule), trying at most ``max_attempts`` seeds per task (default
    3 x n_episodes). Returns a summary: episodes written, seeds used and the expert's success rate per
    task, seconds.
    """
    if int(n_episodes) < 1:
        raise ConfigError(f"n_episodes must be >= 1, got {n_episodes}")
    tasks = [task] if isinstance(task, str) else list(task)
    specs = [task_spec(t) for t in tasks]
    experts = [make_expert(t, expert_config) for t in tasks]  # fails before any work for a task without one
    max_attempts = int(max_attempts or 3 * n_episodes)
    if any(t in MT10 for t in tasks) and int(seed) + max_attempts > EVAL_SEEDS_FROM:
        raise ConfigError(
            f"Meta-World demonstrations: seeds {seed}..{int(seed) + max_attempts - 1} reach the evaluation "
            f"seeds ({EVAL_SEEDS_FROM} and up, whose placements no demonstration may use); start lower"
        )
    t0 = time.perf_counter()
    per_task: dict[str, dict[str, Any]] = {}
    bar = tqdm(total=int(n_episodes) * len(tasks), desc="demos", unit="ep") if progress else None
    writer = None
    first = None
    try:
        for spec, expert in zip(specs, experts):
            sim = make_sim(spec.name, image_size=image_size, camera=camera)
            try:
                key = video_key(getattr(sim, "camera", None) or "main")
                feats = demo_features(sim, sim.image_hw, key)
                if writer is None:
                    first = (spec.name, feats)
                    writer = RobotDatasetWriter(
                        out_dir, sim.fps, feats, robot_type=spec.robot_type, episodes_per_file=episodes_per_file
                    )
                elif feats != first[1]:
                    raise ConfigError(
                        f"tasks {first[0]!r} and {spec.name!r} have different state/action/camera features; "
                        "a multi-task demo dataset needs one set"
                    )
                written, attempts, kept, results = 0, 0, [], []
                while written < n_episodes and attempts < max_attempts:
                    s = int(seed) + attempts
                    attempts += 1
                    ro = rollout(sim, expert, s, record_images=sim.image_hw is not None)
                    results.append(ro.success)
                    if only_successful and not ro.success:
                        continue
                    writer.add_episode(ro.frames(key), spec.instruction)
                    kept.append(s)
                    written += 1
                    if bar is not None:
                        bar.update(1)
                per_task[spec.name] = {
                    "episodes": written,
                    "seeds": kept,
                    "attempts": attempts,
                    "expert_success_rate": float(np.mean(results)) if results else 0.0,
                }
                if spec.name in MT10:
                    per_task[spec.name]["distinct_placements"] = len({placement_key(k) for k in kept})
                if written < n_episodes:
                    raise ConfigError(
                        f"{spec.name}: only {written} of {n_episodes} successful demonstrations in {attempts} "
                        f"attempts (raise max_attempts or set only_successful=False)"
                    )
                fps, hw = sim.fps, sim.image_hw
            finally:
                sim.close()
        writer.close()
    except ConfigError:
        if writer is not None:
            writer.close()  # too few successes: the episodes written so far stay, as a valid dataset
        raise
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
    out = {
        "task": task if isinstance(task, str) else list(tasks),
        "out_dir": str(out_dir),
        "episodes": sum(v["episodes"] for v in per_task.values()),
        "image_size": list(hw) if hw else None,
        "fps": fps,
        "seconds": time.perf_counter() - t0,
    }
    if isinstance(task, str):
        return out | {k: per_task[task][k] for k in ("seeds", "attempts", "expert_success_rate")}
    return out | {"per_task": per_task}


def expert_rollouts(task: str, seeds: Sequence[int], config: Any = None) -> list[Rollout]:
    """The expert's episodes on ``seeds`` without rendering (for tests and benchmarks)."""
    sim = make_sim(task)
    expert = make_expert(task, config)
    try:
        return [rollout(sim, expert, int(s)) for s in seeds]
    finally:
        sim.close()
