"""A thin wrapper around gymnasium-robotics' Adroit hand tasks: seeded episodes, small fast renders, and
the observation dict the policy server speaks (``{"state": float32 (39,), "image": uint8 (H, W, 3)}``).

Facts from the environments' source (gymnasium-robotics 1.4, ``envs/adroit_hand``):
- ``relocate`` (``AdroitHandRelocate-v1``): state 39 = 30 hand/arm joint positions (ARTx ARTy ARTz ARRx
  ARRy ARRz, wrist, fingers, thumb), palm - ball, palm - target, ball - target (metres, world frame);
  action 30 in [-1, 1], mapped to position-actuator targets ``act_mean + a * act_rng``; a step is 5
  MuJoCo steps of 2 ms (100 control steps per second); the ball starts uniformly in x [-0.15, 0.15],
  y [-0.15, 0.3] on the table and the target in x, y [-0.2, 0.2], z [0.15, 0.35]. A step "achieves the
  goal" when the ball centre is within 0.1 m of the target.
- ``door`` (``AdroitHandDoor-v1``): state 39 (27 joint positions, latch, door hinge angle, palm and handle
  positions, palm - handle, door open flag), action 28; goal achieved when the hinge is at >= 1.35 rad.
- ``hammer`` (``AdroitHandHammer-v1``, action 26) and ``pen`` (``AdroitHandPen-v1``, action 24, 100 steps):
  no scripted expert here (they need a learned or planned one); they run for evaluation.
- relocate, door and hammer are registered with 200 steps per episode.

Episode success follows the convention of the papers that introduced these tasks (DAPG, D4RL:
``evaluate_success`` counts an episode as solved when the goal was achieved on MORE than 25 of its steps);
``success_at_end`` (achieved on the last step) is reported beside it.

The installed gymnasium-robotics (1.4.2) prints on import that the v1 dense rewards changed across its
versions without a version bump (its relocate reward adds +0.1 x palm-ball distance where D4RL
subtracted it): returns are only comparable within one installation; success is comparable. The
wrapper drops that notice from stderr.

Rendering uses its own ``mujoco.Renderer`` with shadows and reflections off: under software EGL (no GPU)
that makes a 128x128 frame ~0.03 s instead of ~0.24 s. ``MUJOCO_GL`` defaults to ``egl`` when there is no
display (set it before anything imports mujoco to choose otherwise).
"""

from __future__ import annotations

import atexit
import contextlib
import io
import os
import sys
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from handvla.errors import ConfigError, InputError, MissingResourceError

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless: MuJoCo's offscreen GL; must be set before mujoco imports


@dataclass(frozen=True)
class TaskSpec:
    name: str
    env_id: str
    instruction: str
    max_steps: int = 200
    success_min_steps: int = 26  # "more than 25 steps with the goal achieved" (DAPG / D4RL)
    robot_type: str = "adroit_hand"


TASKS: dict[str, TaskSpec] = {
    "relocate": TaskSpec("relocate", "AdroitHandRelocate-v1", "relocate the ball to the target"),
    "door": TaskSpec("door", "AdroitHandDoor-v1", "open the door"),
    "hammer": TaskSpec("hammer", "AdroitHandHammer-v1", "hammer the nail into the board"),
    "pen": TaskSpec("pen", "AdroitHandPen-v1", "rotate the pen to the target orientation", max_steps=100),
}
#: cameras defined here (free cameras: look-at point in metres, distance, azimuth and elevation in degrees)
#: besides the XML's "fixed" and "vil_camera"; "front" frames the whole workspace of both tasks (ball,
#: target up to 0.35 m high, door) larger than "vil_camera" does
FREE_CAMERAS: dict[str, dict[str, Any]] = {
    "front": {"lookat": (0.0, 0.02, 0.15), "distance": 1.1, "azimuth": 90.0, "elevation": -35.0},
}
DEFAULT_CAMERA = "front"
DEFAULT_IMAGE_SIZE = 128


def task_spec(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ConfigError(f"unknown sim task {task!r}; choose one of {sorted(TASKS)}")
    return TASKS[task]


def _import_gym():
    buf = io.StringIO()
    try:
        # gymnasium-robotics prints a notice on import that the v1 *dense reward* changed across its
        # versions (recorded in this module's docstring: returns are not comparable across versions,
        # success is); other output passes through
        with warnings.catch_warnings(), contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            import gymnasium as gym
            import gymnasium_robotics
    except ImportError as e:
        raise MissingResourceError(
            f"the Adroit simulator needs gymnasium and gymnasium-robotics (pip install gymnasium-robotics "
            f"mujoco==3.11.0): {e}"
        ) from None
    finally:
        rest = "".join(
            line for line in buf.getvalue().splitlines(True) if "reward functions were updated" not in line
        )
        if rest:
            sys.stderr.write(rest)
    gym.register_envs(gymnasium_robotics)
    return gym


def _image_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if not (isinstance(h, int) and isinstance(w, int) and 8 <= h <= 2048 and 8 <= w <= 2048):
        raise ConfigError(f"image_size must be an int or (height, width) between 8 and 2048, got {size!r}")
    return h, w


@dataclass
class StepResult:
    obs: dict[str, np.ndarray]
    reward: float
    goal_achieved: bool  # this step
    done: bool  # the episode reached its step limit


class GymSim:
    """What every simulator wrapper shares (`AdroitSim`, `handvla.robot.sim.metaworld.MetaWorldSim`): sizes
    and rate from the wrapped environment ``self.env``, the task's instruction, the observation spec and
    dict (``state`` and, when ``image_hw`` is set, a rendered ``image``), action checks, closing. Subclasses
    set ``spec``, ``env``, ``image_hw``, ``_obs``, ``_renderer`` and implement ``reset``, ``step``,
    ``render`` and ``close``."""

    spec: TaskSpec
    image_hw: tuple[int, int] | None

    def _episode_settings(
        self, spec: TaskSpec, image_size, camera, max_steps: int | None, shadows: bool
    ) -> None:
        """The settings every wrapper checks the same way: task, frame size, camera, episode length."""
        self.spec = spec
        self.image_hw = _image_size(image_size)
        self.camera, self.shadows = camera, bool(shadows)
        self.max_steps = int(max_steps or spec.max_steps)
        if self.max_steps < 1:
            raise ConfigError(f"max_steps must be >= 1, got {max_steps}")
        self._renderer: OffscreenRenderer | None = None
        self.t = 0
        self.seed: int | None = None
        self._obs: np.ndarray | None = None

    @property
    def action_dim(self) -> int:
        return int(self.env.action_space.shape[0])

    @property
    def state_dim(self) -> int:
        return int(self.env.observation_space.shape[0])

    @property
    def fps(self) -> float:
        """Control steps per second (1 / the environment's control period)."""
        return 1.0 / float(self.env.dt)

    @property
    def instruction(self) -> str:
        return self.spec.instruction

    def observation_spec(self) -> dict[str, dict[str, Any]]:
        """The ``observation`` block of a ``Policy.metadata()`` for this sim."""
        spec: dict[str, dict[str, Any]] = {"state": {"shape": [self.state_dim], "dtype": "float32"}}
        if self.image_hw is not None:
            spec["image"] = {"shape": [*self.image_hw, 3], "dtype": "uint8"}
        return spec

    def observation(self) -> dict[str, np.ndarray]:
        obs = {"state": np.asarray(self._obs, np.float32)}
        if self.image_hw is not None:
            obs["image"] = self.render()
        return obs

    def checked_action(self, action: np.ndarray) -> np.ndarray:
        """``action`` as float64 (action_dim,), or InputError naming the sim."""
        if self._obs is None:
            raise ConfigError(f"{type(self).__name__}.step before reset")
        a = np.asarray(action, np.float64).reshape(-1)
        if a.shape != (self.action_dim,) or not np.isfinite(a).all():
            raise InputError(
                f"sim {self.spec.name}",
                "action",
                f"{self.action_dim} finite values in [-1, 1]",
                str(np.shape(action)),
            )
        return a

    def _close_renderer(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class AdroitSim(GymSim):
    """One Adroit task. ``reset(seed)`` -> observation; ``step(action)`` -> ``StepResult``.

    ``image_size``: render ``obs["image"]`` (uint8 (H, W, 3)) from ``camera`` at this size; None = no
    image (fastest). ``max_steps``: episode length (default: the task's, 200).
    """

    def __init__(
        self,
        task: str = "relocate",
        image_size: int | tuple[int, int] | None = None,
        camera: str = DEFAULT_CAMERA,
        max_steps: int | None = None,
        shadows: bool = False,
    ):
        self._episode_settings(task_spec(task), image_size, camera, max_steps, shadows)
        gym = _import_gym()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._env = gym.make(self.spec.env_id, disable_env_checker=True)
        # step the raw environment: the step limit is ours, and the wrappers only add overhead
        self.env = self._env.unwrapped
        self.model, self.data = self.env.model, self.env.data
        import mujoco

        self._mujoco = mujoco
        if camera in FREE_CAMERAS:
            cam = mujoco.MjvCamera()
            cam.type = mujoco.mjtCamera.mjCAMERA_FREE
            c = FREE_CAMERAS[camera]
            cam.lookat[:], cam.distance = c["lookat"], c["distance"]
            cam.azimuth, cam.elevation = c["azimuth"], c["elevation"]
            self._camera: Any = cam
        elif mujoco.mj_name2id(self.model, mujoco.mjtObj.mjOBJ_CAMERA, camera) >= 0:
            self._camera = camera
        else:
            cams = [
                mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_CAMERA, i) for i in range(self.model.ncam)
            ]
            raise ConfigError(
                f"task {task!r} has no camera {camera!r}; cameras: {sorted(FREE_CAMERAS) + cams}"
            )

    # -- facts -------------------------------------------------------------------------------------------
    def joint_names(self) -> list[str]:
        m, mj = self.model, self._mujoco
        return [mj.mj_id2name(m, mj.mjtObj.mjOBJ_JOINT, j) for j in range(m.njnt)]

    def state_names(self) -> list[str]:
        joints = self.joint_names()
        xyz = lambda p: [f"{p}.{a}" for a in "xyz"]  # noqa: E731
        if self.spec.name == "relocate":
            return joints[:30] + xyz("palm_minus_ball") + xyz("palm_minus_target") + xyz("ball_minus_target")
        if self.spec.name != "door":
            return [f"state_{i}" for i in range(self.state_dim)]
        # door: qpos[1:-2] (all joints but the first arm slide, the door hinge and the latch), then these
        names = (
            joints[1:-2] + ["latch", "door_hinge"] + xyz("palm") + xyz("handle") + xyz("palm_minus_handle")
        )
        return names + ["door_open"]

    def action_names(self) -> list[str]:
        m, mj = self.model, self._mujoco
        return [mj.mj_id2name(m, mj.mjtObj.mjOBJ_ACTUATOR, a) for a in range(m.nu)]

    # -- episodes ------------------------------------------------------------------------------------------
    def reset(self, seed: int) -> dict[str, np.ndarray]:
        """Start the episode of ``seed`` (same seed, same ball / target / door placement)."""
        self._obs, _ = self.env.reset(seed=int(seed))
        self.seed, self.t = int(seed), 0
        return self.observation()

    def step(self, action: np.ndarray) -> StepResult:
        a = self.checked_action(action)
        self._obs, reward, _, _, info = self.env.step(a)
        self.t += 1
        return StepResult(self.observation(), float(reward), bool(info["success"]), self.t >= self.max_steps)

    def render(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W, 3) uint8 from ``camera`` (shadows/reflections off unless ``shadows``)."""
        if self._renderer is None:
            self._renderer = OffscreenRenderer(self.model, self.shadows)
        hw = size or self.image_hw or (DEFAULT_IMAGE_SIZE, DEFAULT_IMAGE_SIZE)
        return self._renderer.render(self.data, self._camera, hw)

    def set_target(self, position: np.ndarray) -> None:
        """relocate: move the target (world frame, metres) after ``reset``; the observation follows."""
        if self.spec.name != "relocate" or self._obs is None:
            raise ConfigError(f"set_target: a relocate episode after reset (task {self.spec.name!r})")
        p = np.asarray(position, np.float64).reshape(-1)
        if p.shape != (3,) or not np.isfinite(p).all():
            raise InputError("set_target", "position", "3 finite values (metres)", str(p))
        self.model.site_pos[self.env.target_obj_site_id] = p
        self._mujoco.mj_forward(self.model, self.data)
        self._obs = self.env._get_obs()

    def privileged(self) -> dict[str, np.ndarray]:
        """Simulator state a scripted expert may use (world frame, metres): joint positions/velocities, the
        palm grasp site, and the task's object / target / handle positions."""
        e, d = self.env, self.data
        out = {"qpos": d.qpos.copy(), "qvel": d.qvel.copy()}
        if self.spec.name == "relocate":
            out |= {
                "palm_pos": d.site_xpos[e.S_grasp_site_id].copy(),
                "obj_pos": d.xpos[e.obj_body_id].copy(),
                "target_pos": d.site_xpos[e.target_obj_site_id].copy(),
            }
        elif self.spec.name == "door":
            out |= {
                "palm_pos": d.site_xpos[e.grasp_site_id].copy(),
                "handle_pos": d.site_xpos[e.handle_site_id].copy(),
                "door_angle": np.array([d.qpos[e.door_hinge_addrs]]),
            }
        return out

    def close(self) -> None:
        self._close_renderer()
        self._env.close()


class OffscreenRenderer:
    """A ``mujoco.Renderer`` per frame size for one model, shadows and reflections off unless asked for,
    closed at interpreter exit (a renderer left to the garbage collector fails noisily in EGL teardown)."""

    def __init__(self, model, shadows: bool = False):
        import mujoco

        self._mj, self.model, self.shadows = mujoco, model, bool(shadows)
        self._renderer = None
        atexit.register(_close_renderer, weakref.ref(self))

    def render(self, data, camera: Any, hw: tuple[int, int]) -> np.ndarray:
        mj = self._mj
        h, w = hw
        if self._renderer is None or (self._renderer.height, self._renderer.width) != (h, w):
            self.close()
            # the model's offscreen buffer bounds the render size
            self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, w)
            self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, h)
            try:
                self._renderer = mj.Renderer(self.model, h, w)
            except mj.FatalError as e:
                raise MissingResourceError(
                    f"no OpenGL context for rendering ({e}); on a machine without a display set MUJOCO_GL=egl "
                    f"(or osmesa) before anything imports mujoco (it is now {os.environ.get('MUJOCO_GL')!r}; "
                    "importing handvla.robot.sim first sets egl)"
                ) from None
            self._renderer.scene.flags[mj.mjtRndFlag.mjRND_SHADOW] = self.shadows
            self._renderer.scene.flags[mj.mjtRndFlag.mjRND_REFLECTION] = self.shadows
        self._renderer.update_scene(data, camera=camera)
        return self._renderer.render().copy()

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None


def _close_renderer(ref: weakref.ref) -> None:
    r = ref()
    if r is not None:
        r.close()


# ---------------------------------------------------------------------------------------------------------
# rollouts
# ---------------------------------------------------------------------------------------------------------


class Controller(Protocol):
    """Anything that acts in the sim: ``reset(sim)`` at the start of an episode, ``act(obs)`` per step."""

    def reset(self, sim: GymSim) -> None: ...

    def act(self, obs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass
class Rollout:
    """One episode: per step the observation the controller saw and the action it took."""

    seed: int
    states: np.ndarray  # (T, state_dim) float32, the state before each action
    actions: np.ndarray  # (T, action_dim) float32, clipped to [-1, 1] as the sim applied them
    rewards: np.ndarray  # (T,) float32
    goal_achieved: np.ndarray  # (T,) bool, after each action
    images: np.ndarray | None = None  # (T, H, W, 3) uint8, before each action
    success_min_steps: int = 26
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.actions)

    @property
    def success_steps(self) -> int:
        return int(self.goal_achieved.sum())

    @property
    def success(self) -> bool:
        return self.success_steps >= self.success_min_steps

    @property
    def success_at_end(self) -> bool:
        return bool(self.goal_achieved[-1]) if len(self.goal_achieved) else False

    @property
    def total_return(self) -> float:
        return float(self.rewards.sum())

    @property
    def first_success_step(self) -> int | None:
        hit = np.flatnonzero(self.goal_achieved)
        return int(hit[0]) if len(hit) else None

    def frames(self, image_key: str) -> dict[str, np.ndarray]:
        """The episode as a demonstration dataset's columns (``demo_features``): state, action, reward,
        success, and the images under ``image_key`` when recorded."""
        out = {"observation.state": self.states, "action": self.actions, "next.reward": self.rewards,
               "next.success": self.goal_achieved}  # fmt: skip
        if self.images is not None:
            out[image_key] = self.images
        return out

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "success": self.success,
            "success_at_end": self.success_at_end,
            "success_steps": self.success_steps,
            "first_success_step": self.first_success_step,
            "return": self.total_return,
            "length": self.length,
        }


def rollout(
    sim: GymSim,
    controller: Controller,
    seed: int,
    record_images: bool = False,
    on_step: Callable[[int, dict[str, np.ndarray], np.ndarray], None] | None = None,
) -> Rollout:
    """Run one episode of ``sim.max_steps`` steps with ``controller`` from the placement of ``seed``."""
    obs = sim.reset(seed)
    controller.reset(sim)
    if getattr(controller, "moves_scene", False):  # its reset placed things (e.g. the target): observe again
        obs = sim.observation()
    states, actions, rewards, achieved, images = [], [], [], [], []
    done = False
    while not done:
        action = np.asarray(controller.act(obs), np.float32).reshape(-1)
        if action.shape != (sim.action_dim,):
            raise InputError("controller", "action", f"{sim.action_dim} values", str(action.shape))
        if not np.isfinite(action).all():
            raise InputError("controller", "action", "finite values", "NaN/inf")
        action = np.clip(action, -1.0, 1.0)  # what the environment applies
        states.append(obs["state"])
        if record_images:
            images.append(obs["image"] if "image" in obs else sim.render())
        if on_step is not None:
            on_step(sim.t, obs, action)
        res = sim.step(action)
        actions.append(action)
        rewards.append(res.reward)
        achieved.append(res.goal_achieved)
        obs, done = res.obs, res.done
    return Rollout(
        seed=int(seed),
        states=np.stack(states).astype(np.float32),
        actions=np.stack(actions).astype(np.float32),
        rewards=np.asarray(rewards, np.float32),
        goal_achieved=np.asarray(achieved, bool),
        images=np.stack(images) if record_images else None,
        success_min_steps=sim.spec.success_min_steps,
    )
