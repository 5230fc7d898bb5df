"""Meta-World MT10 (Sawyer arm, 10 manipulation tasks) behind the same interface as `AdroitSim`: seeded
episodes, small renders, the observation dict the policy server speaks, and the package's own scripted
expert policies.

Facts from Meta-World 3.1 (``metaworld`` on PyPI; its v3 environments):
- state 39: end-effector position (3), gripper opening (1), first object position (3) and quaternion (4),
  second object position (3) and quaternion (4), the same 18 values of the previous frame, goal position
  (3); action 4 in [-1, 1]: end-effector displacement (x, y, z) and gripper effort;
- a control step is 5 MuJoCo steps of 2.5 ms (80 steps per second); episodes last at most 500 steps;
- each task has 50 variations (object and goal placements): the benchmark's ``train_tasks``. A reset
  with another seed does not move them (``reset`` ignores its seed) and the arm starts in the same pose,
  so two episodes on one variation are the same episode. Handvla splits them: demonstration seeds (below
  ``EVAL_SEEDS_FROM`` = 10000, where ``handvla data sim-demos`` starts) 0-24 use variations 0-24,
  evaluation seeds (10000 and up, where ``handvla eval sim`` starts) 10000-10024 variations 25-49, so a
  policy is scored on placements its demonstrations never showed. Every later seed of either range draws
  its own placement from the task's placement space, seeded by the seed (as the benchmark drew its
  variations; `placement_key`), so 100 evaluation episodes of a task are 100 different episodes, not 25
  repeated four times. The benchmark is built with seed 0: the same seed is the same episode on every
  machine;
- success: the environment's ``success`` flag at any step, i.e. ``success_min_steps`` = 1; as in
  Meta-World's own evaluation, an episode ends at its first success (demonstrations end there too);
- scripted policies: ``metaworld.policies.Sawyer<Task>V3Policy`` for every task.

Installing: Meta-World 3.1.1 pins mujoco 3.3.0, while this project pins mujoco 3.11.0 (gymnasium-robotics'
Adroit and shadow-hand tasks need it); its environments run on 3.11.0, so it installs without its
dependencies: ``pip install --no-deps metaworld==3.1.1`` (the README's test command does this).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from typing import Any

import numpy as np

from handvla.errors import ConfigError, InputError, MissingResourceError
from handvla.robot.sim.adroit import (
    DEFAULT_IMAGE_SIZE,
    GymSim,
    OffscreenRenderer,
    StepResult,
    TaskSpec,
)

ROBOT_TYPE = "sawyer"
DEFAULT_CAMERA = "corner2"
VARIATIONS = 50
#: the first evaluation seed (``handvla.robot.evaluate.EVAL_SEED``): its first 25 seeds use the second half
#: of every task's variations, the first 25 seeds below it (demonstrations) the first half; later seeds of
#: either range draw their own placements (`variation_index`)
EVAL_SEEDS_FROM = 10_000


def variation_index(seed: int, variations: int = VARIATIONS) -> int | None:
    """The benchmark variation of episode ``seed``: the first ``variations // 2`` demonstration seeds (from
    0) the first half of the variations, the first evaluation seeds (from ``EVAL_SEEDS_FROM``) the second
    half (disjoint placements); None for every later seed, which draws its own placement."""
    half = variations // 2
    k = seed if seed < EVAL_SEEDS_FROM else seed - EVAL_SEEDS_FROM
    if not 0 <= k < variations - half:
        return None
    return k if seed < EVAL_SEEDS_FROM else half + k


def placement_key(seed: int) -> tuple[str, int]:
    """What decides the placement of episode ``seed``: ("variation", index) or ("drawn", seed). Episodes with
    equal keys are the same episode."""
    v = variation_index(seed)
    return ("drawn", int(seed)) if v is None else ("variation", v)


#: MT10: environment name -> (instruction, the package's scripted policy class)
MT10: dict[str, tuple[str, str]] = {
    "reach-v3": ("reach the goal position", "SawyerReachV3Policy"),
    "push-v3": ("push the puck to the goal", "SawyerPushV3Policy"),
    "pick-place-v3": ("pick up the puck and place it at the goal", "SawyerPickPlaceV3Policy"),
    "door-open-v3": ("open the door", "SawyerDoorOpenV3Policy"),
    "drawer-open-v3": ("open the drawer", "SawyerDrawerOpenV3Policy"),
    "drawer-close-v3": ("close the drawer", "SawyerDrawerCloseV3Policy"),
    "button-press-topdown-v3": ("press the button from the top", "SawyerButtonPressTopdownV3Policy"),
    "peg-insert-side-v3": ("insert the peg into the hole from the side", "SawyerPegInsertionSideV3Policy"),
    "window-open-v3": ("open the window", "SawyerWindowOpenV3Policy"),
    "window-close-v3": ("close the window", "SawyerWindowCloseV3Policy"),
}
TASKS: dict[str, TaskSpec] = {
    name: TaskSpec(name, name, instr, max_steps=500, success_min_steps=1, robot_type=ROBOT_TYPE)
    for name, (instr, _) in MT10.items()
}
_STATE_PARTS = ["hand.x", "hand.y", "hand.z", "gripper"]
_STATE_PARTS += [f"obj1.{a}" for a in ("x", "y", "z", "qw", "qx", "qy", "qz")]
_STATE_PARTS += [f"obj2.{a}" for a in ("x", "y", "z", "qw", "qx", "qy", "qz")]
STATE_NAMES = _STATE_PARTS + [f"prev.{n}" for n in _STATE_PARTS] + ["goal.x", "goal.y", "goal.z"]
ACTION_NAMES = ["dx", "dy", "dz", "gripper"]


def _import_metaworld():
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import metaworld
            import metaworld.policies
    except ImportError as e:
        raise MissingResourceError(
            f"Meta-World tasks need the metaworld package (pip install --no-deps metaworld==3.1.1; see "
            f"handvla/robot/sim/metaworld.py for why --no-deps): {e}"
        ) from None
    return metaworld


_BENCHMARK: dict[str, Any] = {}


def _benchmark():
    """MT10 built once per process with seed 0 (its task variations are then fixed)."""
    if "mt10" not in _BENCHMARK:
        mw = _import_metaworld()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _BENCHMARK["mt10"] = mw.MT10(seed=0)
    return _BENCHMARK["mt10"]


class MetaWorldSim(GymSim):
    """One Meta-World MT10 task with `AdroitSim`'s interface: ``reset(seed)`` -> observation;
    ``step(action)`` -> ``StepResult``. ``image_size``: render ``obs["image"]`` from ``camera`` (one of the
    model's cameras: corner, corner2, corner3, corner4, topview, behindGripper, gripperPOV)."""

    def __init__(
        self,
        task: str,
        image_size: int | tuple[int, int] | None = None,
        camera: str | None = None,
        max_steps: int | None = None,
        shadows: bool = False,
    ):
        if task not in TASKS:
            raise ConfigError(f"unknown Meta-World task {task!r}; MT10 has {sorted(TASKS)}")
        self._episode_settings(TASKS[task], image_size, camera or DEFAULT_CAMERA, max_steps, shadows)
        bench = _benchmark()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.env = bench.train_classes[task]()
        self._variations = [t for t in bench.train_tasks if t.env_name == task]
        self.model, self.data = self.env.model, self.env.data
        import mujoco

        if mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, self.camera) < 0:
            cams = [
                mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)
            ]
            raise ConfigError(f"task {task!r} has no camera {self.camera!r}; cameras: {cams}")

    # -- facts ---------------------------------------------------------------------------------------------
    def state_names(self) -> list[str]:
        return list(STATE_NAMES)

    def action_names(self) -> list[str]:
        return list(ACTION_NAMES)

    # -- episodes ------------------------------------------------------------------------------------------
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start the episode of ``seed``: its benchmark variation (`variation_index`), or a placement drawn
        from the task's placement space with the environment's generator seeded by ``seed``."""
        seed = int(seed)
        v = variation_index(seed, len(self._variations))
        env = self.env
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            env.set_task(self._variations[0 if v is None else v])  # the task's settings (and its placement)
            if v is None:
                # Meta-World 3.1's own way of drawing a placement (how it drew the benchmark's variations):
                # an unfrozen placement vector, drawn at reset from the environment's seeded generator
                env._freeze_rand_vec, env.seeded_rand_vec = False, True
                env.seed(seed)
            try:
                self._obs, _ = env.reset(seed=seed)
            finally:
                env._freeze_rand_vec, env.seeded_rand_vec = True, False
        self.seed, self.t = seed, 0
        return self.observation()

    def step(self, action: np.ndarray) -> StepResult:
        a = self.checked_action(action)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._obs, reward, _, truncated, info = self.env.step(a)
        self.t += 1
        # Meta-World's own evaluation ends an episode at its first success
        done = bool(info["success"]) or self.t >= self.max_steps or bool(truncated)
        return StepResult(self.observation(), float(reward), bool(info["success"]), done)

    def render(self, size: tuple[int, int] | None = None) -> np.ndarray:
        if self._renderer is None:
            self._renderer = OffscreenRenderer(self.model, self.shadows)
        return self._renderer.render(
            self.data, self.camera, size or self.image_hw or (DEFAULT_IMAGE_SIZE,) * 2
        )

    def close(self) -> None:
        self._close_renderer()
        self.env.close()


class MetaWorldExpert:
    """Meta-World's scripted policy for the task (it reads only the 39-d state)."""

    def __init__(self, task: str):
        if task not in MT10:
            raise ConfigError(f"no Meta-World expert for {task!r}; MT10 has {sorted(MT10)}")
        mw = _import_metaworld()
        self._policy = getattr(mw.policies, MT10[task][1])()
        self.sim = None

    def reset(self, sim) -> None:
        self.sim = sim

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "constant(s) may be too high": the env clips to [-1, 1]
            a = self._policy.get_action(np.asarray(obs["state"], np.float64))
        return np.clip(np.asarray(a, np.float32), -1.0, 1.0)


class MetaWorldScriptedPolicy:
    """The scripted experts of all MT10 tasks behind the ``Policy`` protocol (chunk size 1, state only):
    the instruction (``set_task`` or the observation's ``task``) says which expert acts. The suite's
    ceiling in `handvla.robot.evaluate.evaluate_suite` tables, and a real policy for testing evaluators."""

    def __init__(self):
        self._by_instruction = {instr: name for name, (instr, _) in MT10.items()}
        self._experts: dict[str, MetaWorldExpert] = {}
        self.task: str | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "chunk_size": 1,
            "action_dim": len(ACTION_NAMES),
            "observation": {"state": {"shape": [len(STATE_NAMES)], "dtype": "float32"}},
            "policy": "metaworld-scripted",
        }

    def set_task(self, task: str) -> None:
        if task not in self._by_instruction:
            raise InputError(
                "MetaWorldScriptedPolicy", "task", f"one of {sorted(self._by_instruction)}", repr(task)
            )
        self.task = task

    def infer(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        task = obs.get("task") if isinstance(obs.get("task"), str) else self.task
        if task is None:
            raise InputError(
                "MetaWorldScriptedPolicy", "task", "an MT10 instruction (set_task or obs['task'])", "none"
            )
        if task not in self._by_instruction:
            self.set_task(task)  # raises with the known instructions
        name = self._by_instruction[task]
        if name not in self._experts:
            self._experts[name] = MetaWorldExpert(name)
        return self._experts[name].act(obs)[None]
