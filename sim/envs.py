"""Simulators as the closed loop sees them: reset to a full state, step by one native control, render.

- `demo`: the demo corpus's world (sim.demo) as a simulator: a 7-D end effector (DROID's
  pose convention) over a table with a block it pushes when low; the control is the next native
  pose (15 Hz), the camera the store's (wrist or exterior).
- `pusht`: gym-pusht (the `[sim]` extra), headless: a 2-D agent pushing a T-shaped block; the
  control is the PD controller's target position (10 Hz). Two cameras: `top`, the env's own frame of
  the whole table, and `agent`, one that rides above the agent (the table around it, as a wrist
  camera sees it: every patch moves with the agent, where in `top` 1-4 of 64 patches do). A model
  acts either with the column's targets (DINO-WM's frame-skipped actions) or with state deltas
  (the agent's displacement per stored frame, executed as a target that far from the agent).

The full simulator state (agent and block) sets goals and scores them; the model only sees the
camera and the agent's state, as the store holds them.
"""

from __future__ import annotations

import numpy as np
import torch

from common.errors import UserError
from store.actions import apply_action
from store.format import STATE_DELTA

from . import demo

PUSHT_CAMERAS = ("top", "agent")
WORLD = 512  # PushT's world is 512 px square; gym-pusht draws it one px per unit
FLOOR = 40  # grey of the floor beyond PushT's walls, in the agent camera's view
PUSH_GOAL_STEPS = 30  # push task: the goal is the state this many control steps along a scripted episode


class DemoSim:
    """The demo world: sim state [x, y, z, roll, pitch, yaw, gripper, block_x, block_y] (m, rad)."""

    name, hz, state_dim, state_rule = "demo", demo.HZ, 7, "hold"
    reach_tolerance, unit = 0.02, "m"  # success when the gripper ends this close to the target (xy)
    angle_tolerance = None

    def __init__(self, camera: str = "wrist"):
        if camera not in ("wrist", "left"):
            raise UserError(f"the demo simulator films with the wrist or left camera, not {camera!r} (sim eval: the "
                            f"camera of the model's store; evaluate a model trained on the demo corpus)")
        self.renderer = demo.Renderer(np.random.default_rng(demo.TABLE_SEED))  # every demo corpus's table
        self.camera = camera

    def reset(self, sim_state: np.ndarray) -> None:
        self.pose, self.block = np.array(sim_state[:7], np.float64), np.array(sim_state[7:9], np.float64)

    def step(self, control: np.ndarray) -> None:
        self.pose = np.asarray(control, np.float64).copy()
        self.block = demo.push_block(self.pose[None], self.block)[0]

    def image(self) -> np.ndarray:
        view = self.renderer.wrist if self.camera == "wrist" else self.renderer.exterior
        return view(self.pose, self.block)

    def agent(self) -> np.ndarray:
        return self.pose.astype(np.float32)

    def sim_state(self) -> np.ndarray:
        return np.concatenate([self.pose, self.block])

    def controls(self, action: np.ndarray, stride: int) -> list[np.ndarray]:
        """A pose-delta action as `stride` native poses, evenly along the way to its target."""
        target = apply_action(torch.as_tensor(self.pose, dtype=torch.float64)[None],
                              torch.as_tensor(action, dtype=torch.float64)[None])[0].numpy()
        return [self.pose + (target - self.pose) * (k + 1) / stride for k in range(stride)]

    def random_start(self, rng: np.random.Generator) -> np.ndarray:
        pose = [rng.uniform(*demo.X_RANGE), rng.uniform(*demo.Y_RANGE), rng.uniform(*demo.Z_RANGE), np.pi, 0.0,
                rng.uniform(-0.15, 0.15), float(rng.integers(0, 2))]
        return np.array(pose + [rng.uniform(0.42, 0.58), rng.uniform(-0.12, 0.12)])

    def reach_goal(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The start with the gripper moved to a random point of the workspace 4..12 cm away (xy)."""
        while True:
            xy = np.array([rng.uniform(*demo.X_RANGE), rng.uniform(*demo.Y_RANGE)])
            if 0.04 <= np.linalg.norm(xy - start[:2]) <= 0.12:
                return np.concatenate([xy, start[2:]])

    def explore(self, rng: np.random.Generator, steps: int):
        """The demo corpus's scripted motion from the current pose: controls, one per native step."""
        path = demo.trajectory(rng, steps + 1)
        path[:, 3:5] = self.pose[3:5]
        path += self.pose - path[0]  # start where the gripper is
        path[:, :3] = np.clip(path[:, :3], [demo.X_RANGE[0], demo.Y_RANGE[0], demo.Z_RANGE[0]],
                              [demo.X_RANGE[1], demo.Y_RANGE[1], demo.Z_RANGE[1]])
        path[:, 6] = np.clip(path[:, 6], 0, 1)
        yield from path[1:]

    @staticmethod
    def positions(sim_state: np.ndarray) -> np.ndarray:
        """Agent and block xy, the push task's comparison."""
        return np.concatenate([sim_state[:2], sim_state[7:9]])

    @staticmethod
    def block_angle(sim_state: np.ndarray) -> float:
        return 0.0


def pusht_env_class() -> type:
    """gym-pusht's environment, or the [sim] extra's one-line message."""
    try:
        from gym_pusht.envs import PushTEnv
    except ImportError:
        raise UserError("--env pusht needs the [sim] extra: pip install -e '.[sim]' (gym-pusht)") from None
    return PushTEnv


class PushTSim:
    """gym-pusht: sim state [agent_x, agent_y, block_x, block_y, block_angle] (px of 512, rad)."""

    name, hz, state_dim, state_rule = "pusht", 10, 2, "target"
    reach_tolerance, unit = 20.0, "px"  # of the 512 px world
    angle_tolerance = np.pi / 9  # push task, as the peers score it

    def __init__(self, size: int = 224, actions: str = "column:action", camera: str = "top"):
        camera = "top" if camera == "mp4" else camera  # a store whose corpus named no camera: gym-pusht's own
        if camera not in PUSHT_CAMERAS:
            raise UserError(f"the PushT simulator films with the {' or '.join(PUSHT_CAMERAS)} camera, not {camera!r} "
                            f"(sim eval: the camera of the model's store; evaluate a model trained on a PushT corpus)")
        self.deltas, self.camera, self.size = actions == STATE_DELTA, camera, size
        PushTEnv = pusht_env_class()
        render = WORLD if camera == "agent" else size  # agent: one px per world px, cropped in image()
        # stepped with state observations, so a step is physics only; its pixel observation is rendered when
        # asked (the oracle plays 5 control steps per candidate and looks at the last: 5x fewer renders)
        self.env = PushTEnv(obs_type="state", observation_width=render, observation_height=render)
        # its step's reward, the block's overlap with the env's own goal as a polygon intersection, is never read
        # here (tasks are scored on the state) and took 30% of an oracle plan: skipped
        self.env._get_coverage = lambda: 0.0
        self._pixels: np.ndarray | None = None

    def reset(self, sim_state: np.ndarray) -> None:
        self.env.reset(options={"reset_to_state": np.asarray(sim_state, np.float64)})
        self._pixels = None

    def step(self, control: np.ndarray) -> None:
        self.env.step(np.clip(np.asarray(control, np.float64), 0, WORLD))
        self._pixels = None

    def _frame(self) -> np.ndarray:
        """gym-pusht's pixel observation of the current state (rendered once per state)."""
        if self._pixels is None:
            self.env.obs_type = "pixels"
            try:
                self._pixels = self.env.get_obs()
            finally:
                self.env.obs_type = "state"
        return self._pixels

    def image(self) -> np.ndarray:
        if self.camera == "top":
            return np.ascontiguousarray(self._frame())
        import cv2  # gym-pusht's own dependency

        # the agent camera: a window one world wide centred on the agent, the floor beyond the walls dark
        half = WORLD // 2
        x, y = np.clip(np.round(self.agent()), 0, WORLD - 1).astype(int)  # pixel row = world y
        floor = np.pad(self._frame(), ((half, half), (half, half), (0, 0)), constant_values=FLOOR)
        return cv2.resize(floor[y:y + WORLD, x:x + WORLD], (self.size, self.size), interpolation=cv2.INTER_AREA)

    def agent(self) -> np.ndarray:
        return np.asarray(self.env.agent.position, np.float32)

    def sim_state(self) -> np.ndarray:
        """The state as `reset` takes it. gym-pusht's reset places the block at angle 0, then turns it
        about its centre of gravity, so it takes where the block's origin would be at angle 0 (reading
        `block.position` back would move it by up to 90 px per reset)."""
        agent, block = self.env.agent, self.env.block
        origin = block.local_to_world(block.center_of_gravity) - block.center_of_gravity
        return np.array([*agent.position, *origin, block.angle], np.float64)

    def controls(self, action: np.ndarray, stride: int) -> list[np.ndarray]:
        """A frame-skipped action as `stride` target positions: a column's own [stride x 2], or for a state
        delta [2] the agent's position plus the delta, held (from rest the PD controller covers ~95% of it in
        5 steps and settles there)."""
        if self.deltas:
            return [self.agent() + np.asarray(action, np.float64)] * stride
        return list(np.asarray(action, np.float64).reshape(stride, 2))

    def random_start(self, rng: np.random.Generator) -> np.ndarray:
        return np.array([*rng.uniform(50, 450, 2), *rng.uniform(100, 400, 2), rng.uniform(-np.pi, np.pi)])

    def reach_goal(self, start: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The agent at a random point 60..200 px away that the block does not cover; the block stays."""
        while True:
            xy = rng.uniform(50, 460, 2)
            if 60 <= np.linalg.norm(xy - start[:2]) <= 200 and np.linalg.norm(xy - start[2:4]) > 70:
                return np.concatenate([xy, start[2:]])

    def explore(self, rng: np.random.Generator, steps: int):
        """Smooth moves between random waypoints; half of them aimed through the block, so it moves."""
        target, waypoint, speed = self.agent().astype(np.float64), None, 0.0
        for _ in range(steps):
            if waypoint is None or np.linalg.norm(waypoint - target) < 4:
                block = self.sim_state()[2:4]
                if rng.random() < 0.5:
                    away = block - target
                    waypoint = block + away / max(np.linalg.norm(away), 1e-6) * rng.uniform(30, 90)
                else:
                    waypoint = rng.uniform(40, 470, 2)
                waypoint, speed = np.clip(waypoint, 20, 490), rng.uniform(8, 20)
            move = waypoint - target
            target = target + move * min(1.0, speed / max(np.linalg.norm(move), 1e-6))
            yield target.copy()

    @staticmethod
    def positions(sim_state: np.ndarray) -> np.ndarray:
        return sim_state[:4]

    @staticmethod
    def block_angle(sim_state: np.ndarray) -> float:
        return float(sim_state[4])


def make_sim(env: str, camera: str | None = None, size: int = 224, actions: str = "column:action"):
    """The simulator `env` filming with `camera` (default: the env's first); `actions` is the action space of
    the model that will drive it (pusht: a column of targets or state deltas)."""
    if env == "demo":
        return DemoSim(camera or "wrist")
    if env == "pusht":
        return PushTSim(size, actions, camera or PUSHT_CAMERAS[0])
    raise UserError(f"--env {env!r} is not one of: demo, pusht")
