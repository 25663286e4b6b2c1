"""`sim eval`: model-predictive control with a trained world model in a simulator, next to baselines.

Each episode: reset to a start, render the goal, then until the budget of control steps is spent:
encode the camera frame, plan `horizon` frame-skipped actions with CEM towards the goal's features
(`train.plan.Planner`), execute the first, replan. The random and hold baselines and the oracles (the same
CEM with the simulator itself as the world model, scoring the encoded frame or the task's own score of the
state) run the same starts and goals.
Success is judged on the final simulator state.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from common.device import pick_device
from common.errors import UserError
from common.files import output_dir
from model.checkpoint import ModelMeta, load_trained
from model.encoders import store_encoder
from store.format import COLUMN, POSE_DELTA, STATE_DELTA
from train.config import CEMConfig
from train.plan import Planner, cem

from .config import SimEvalConfig
from .envs import PUSH_GOAL_STEPS, make_sim
from .report import summarize, write_grid, write_video


def frame_skip(meta: ModelMeta, sim) -> int:
    """Control steps per planned action, checked against the simulator's action and state spaces."""
    fps = meta.encoder["fps"]
    stride = math.ceil(sim.hz / fps - 1e-9)
    if sim.name == "demo":
        fits = meta.actions == POSE_DELTA and meta.state_dim == 7
        want = "7-D pose-delta actions and 7-D states"
    else:
        fits = meta.state_dim == 2 and ((meta.actions == STATE_DELTA and meta.action_dim == 2) or
                                        (meta.actions.startswith(COLUMN) and meta.action_dim == 2 * stride))
        want = (f"2-D states and {2 * stride}-D column actions ({stride} targets of 2-D at {fps:g} fps) "
                "or 2-D state-delta actions")
    if not fits:
        raise UserError(f"this checkpoint's model takes {meta.action_dim}-D {meta.actions} actions and "
                        f"{meta.state_dim}-D states; --env {sim.name} needs {want}")
    return stride


def make_tasks(sim, task: str, n: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(start, goal) simulator states of n episodes; push goals come from a scripted episode."""
    out = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        start = sim.random_start(rng)
        if task == "reach":
            goal = sim.reach_goal(start, rng)
        else:
            sim.reset(start)
            for control in sim.explore(rng, PUSH_GOAL_STEPS):
                sim.step(control)
            goal = sim.sim_state()
        out.append((start, goal))
    return out


def distance(sim, task: str, state: np.ndarray, goal: np.ndarray) -> float:
    """reach: the agent's xy to the goal's; push: agent and block xy together (the peers' criterion)."""
    if task == "reach":
        return float(np.linalg.norm(state[:2] - goal[:2]))
    return float(np.linalg.norm(sim.positions(state) - sim.positions(goal)))


def angle_error(sim, state: np.ndarray, goal: np.ndarray) -> float:
    """The block's angle to the goal's, in radians of -pi..pi."""
    return (sim.block_angle(state) - sim.block_angle(goal) + np.pi) % (2 * np.pi) - np.pi


def succeeded(sim, task: str, state: np.ndarray, goal: np.ndarray) -> bool:
    if distance(sim, task, state, goal) >= sim.reach_tolerance:
        return False
    if task == "push" and sim.angle_tolerance is not None:
        return abs(angle_error(sim, state, goal)) < sim.angle_tolerance
    return True


def task_energy(sim, task: str, state: np.ndarray, goal: np.ndarray) -> float:
    """The task's own score as an energy: the distance, and for push the block's angle error weighted so that its
    tolerance weighs as much as the distance's (the state oracle's energy)."""
    energy = distance(sim, task, state, goal)
    if task == "push" and sim.angle_tolerance is not None:
        energy += abs(angle_error(sim, state, goal)) * sim.reach_tolerance / sim.angle_tolerance
    return energy


def run_episode(sim, task: str, policy: Callable[[np.ndarray, np.ndarray], np.ndarray], start: np.ndarray,
                goal: np.ndarray, budget: int, stride: int) -> dict:
    """Closed loop until `budget` control steps are spent; returns the outcome and the frames seen."""
    sim.reset(start)
    frames, steps, first, seconds = [sim.image()], 0, None, []
    while steps < budget:
        t = time.perf_counter()
        action = policy(frames[-1], sim.agent())
        seconds.append(time.perf_counter() - t)
        for control in sim.controls(action, stride)[:budget - steps]:
            sim.step(control)
            steps += 1
            if first is None and succeeded(sim, task, sim.sim_state(), goal):
                first = steps
        frames.append(sim.image())
    final = sim.sim_state()
    return {"success": succeeded(sim, task, final, goal), "distance": distance(sim, task, final, goal),
            "first_success_step": first, "seconds_per_plan": float(np.mean(seconds)), "frames": frames}


def oracle_policy(sim, twin, planner: Planner, horizon: int, stride: int, look: Callable,
                  energy: Callable[[list], torch.Tensor]) -> Callable:
    """CEM whose energies come from the simulator: each candidate sequence played on `twin` from `sim`'s current
    state (PushT: at rest), `look(twin)` taken where it ends (with CEM's `energy` all, after each action) and
    the looks scored by `energy` (one value each), averaged per candidate."""
    every = planner.cfg.energy == "all"

    def act(image: np.ndarray, state: np.ndarray) -> np.ndarray:
        now = sim.sim_state()

        def energies(actions: torch.Tensor) -> torch.Tensor:  # [S, H, A] -> [S]
            looks = []
            for sequence in actions.numpy():
                twin.reset(now)
                for k, action in enumerate(sequence):
                    for control in twin.controls(action, stride):
                        twin.step(control)
                    if every or k == len(sequence) - 1:
                        looks.append(look(twin))
            return energy(looks).view(len(actions), -1).mean(1)

        return cem(energies, planner.space(torch.as_tensor(state)), planner.cfg, horizon).actions[0].numpy()

    return act


def feature_oracle(sim, twin, planner: Planner, goal_image: np.ndarray, horizon: int, stride: int) -> Callable:
    """The oracle: a candidate's energy is the L1 distance of its frame's features to the goal image's."""
    goal = planner.encode([goal_image])[0]

    def energy(frames: list[np.ndarray]) -> torch.Tensor:
        z = torch.cat([planner.encode(frames[i:i + 64]) for i in range(0, len(frames), 64)])
        return (z - goal).abs().mean((1, 2))

    return oracle_policy(sim, twin, planner, horizon, stride, lambda t: t.image(), energy)


def state_oracle(sim, twin, planner: Planner, task: str, goal: np.ndarray, horizon: int, stride: int) -> Callable:
    """The state oracle: a candidate's energy is the task's own score of the state it ends in (no frame rendered)."""
    return oracle_policy(sim, twin, planner, horizon, stride, lambda t: t.sim_state(),
                         lambda ends: torch.tensor([task_energy(sim, task, s, goal) for s in ends]))


def policy_names(cfg: SimEvalConfig) -> list[str]:
    """The policies a run plays, in order; the first one's episodes are drawn (grid.png, videos)."""
    return (["model"] * cfg.model + ["random", "hold"] * cfg.baselines + ["oracle"] * cfg.sim.oracle
            + ["state-oracle"] * cfg.sim.state_oracle)


@dataclass
class SimEvalResult:
    report: dict  # what report.json holds
    out: Path  # report.json, grid.png, episode_*.mp4


def run_sim_eval(cfg: SimEvalConfig, on_episode: Callable[[str, int], None] | None = None) -> SimEvalResult:
    t = cfg.sim
    device = pick_device(t.device)
    model, meta, ckpt = load_trained(cfg.checkpoint)
    if not meta.encoder:
        raise UserError(f"{cfg.checkpoint} records no store (its encoder and frame rate); train it with this version")

    def new_sim():  # the store's camera, driven by the model's actions
        return make_sim(t.env, camera=meta.encoder["camera"], size=t.size, actions=meta.actions)

    sim = new_sim()
    stride = frame_skip(meta, sim)
    if cfg.cem.state_from_action not in (CEMConfig.state_from_action, sim.state_rule):  # given, and not the sim's
        raise UserError(f"--state-from-action {cfg.cem.state_from_action}: the {t.env} simulator moves its state by "
                        f"its own rule ({sim.state_rule})")
    cem_cfg = replace(cfg.cem, state_from_action=sim.state_rule)
    planner = Planner(model, meta, cem_cfg, device, encoder=store_encoder(meta.encoder, t.encoder_checkpoint, ckpt))
    tasks = make_tasks(sim, t.task, t.episodes, t.task_seed)
    goals, goal_states = [], []
    for _, goal in tasks:
        sim.reset(goal)
        goals.append(sim.image())
        goal_states.append(sim.agent())
    rng = torch.Generator().manual_seed(t.task_seed)

    def random_action(image, state):
        space = planner.space(torch.as_tensor(state))
        a = space.mean.clone()
        a[space.dims] = space.low[space.dims] + (space.high - space.low)[space.dims] * torch.rand(len(space.dims),
                                                                                                 generator=rng)
        return a.numpy()

    twin = new_sim() if t.oracle or t.state_oracle else None  # the oracles' imagination
    policies = {  # name -> episode i -> policy
        "model": lambda i: lambda now, state: planner.act(now, state, goals[i], t.horizon, goal_states[i]),
        "random": lambda i: random_action,
        "hold": lambda i: lambda now, state: planner.space(torch.as_tensor(state)).mean.numpy(),
        "oracle": lambda i: feature_oracle(sim, twin, planner, goals[i], t.horizon, stride),
        "state-oracle": lambda i: state_oracle(sim, twin, planner, t.task, tasks[i][1], t.horizon, stride)}
    out = output_dir(cfg.out or Path(cfg.checkpoint).parent / f"sim-{t.env}-{t.task}", "--out")
    results, finals, names = {}, [], policy_names(cfg)
    for name in names:
        outcomes = []
        for i, ((start, goal), goal_image) in enumerate(zip(tasks, goals)):
            outcome = run_episode(sim, t.task, policies[name](i), start, goal, t.budget, stride)
            frames = outcome.pop("frames")
            if name == names[0]:
                finals.append((frames[0], goal_image, frames[-1]))
                if i < cfg.videos:
                    write_video(out / f"episode_{i:03d}.mp4", frames, goal_image)
            outcomes.append(outcome)
            if on_episode:
                on_episode(name, i)
        results[name] = {**summarize(outcomes), "per_episode": outcomes}
    write_grid(out / "grid.png", finals, names[0])
    cem_keys = ("samples", "iterations", "elites", "pick", "energy", "state_weight", "state_from_action")
    report = {"env": t.env, "task": t.task, "episodes": t.episodes, "budget": t.budget,
              "horizon": t.horizon, "frame_skip": stride, "tolerance": sim.reach_tolerance, "unit": sim.unit,
              "checkpoint": str(cfg.checkpoint), "cem": {k: getattr(cem_cfg, k) for k in cem_keys},
              "device": str(device), "policies": results}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    return SimEvalResult(report, out)
