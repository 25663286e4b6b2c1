"""A small synthetic robot corpus in DROID raw layout (real MP4s, trajectory.h5, metadata json).

A gripper moves over a table along smooth random end-effector trajectories at 15 Hz, opens
and closes, and pushes a red block along when it runs into it low enough. Two cameras film it:
- exterior ("left"): looks down at the table; x/y move the gripper across the image, z changes
  its size and its offset from its shadow, yaw turns the fingers, the gripper state spreads them;
- wrist: looks down from the gripper; the table (wood waves, a 10 cm grid, coloured discs, lit
  unevenly) and the block move under it with every x/y/yaw action, z zooms and darkens it (the
  gripper's shadow), the fingers open and close in view.
Everything the videos show is a function of the states (and the block's pushes), so a world
model has something learnable. Deterministic by seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from common.files import output_dir
from common.media import write_mp4

WIDTH, HEIGHT = 320, 180  # 16:9 like DROID's 1280x720, so the crop rule applies
HZ = 15
TABLE_SEED = 1  # the table every demo corpus is filmed on (a corpus's seed varies its episodes): the world of
# `sim eval --env demo`
EXT_SERIAL, WRIST_SERIAL = "20000001", "10000001"
X_RANGE, Y_RANGE, Z_RANGE = (0.35, 0.65), (-0.2, 0.2), (0.02, 0.12)  # metres, robot base frame
BLOCK_HALF = 0.03  # block half-size, m
PUSH_HEIGHT = 0.07  # the gripper pushes the block when lower than this
TASKS = ("push the red block", "move the gripper over the table", "touch the block and lift")


def to_pixels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exterior camera: table point -> (u, v) pixels. +y (robot's left) to image left, +x to image top."""
    u = WIDTH / 2 - (y / 0.2) * 100  # the workspace spans the centre 200 px, inside the crop
    v = HEIGHT - 20 - (x - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]) * (HEIGHT - 40)
    return u, v


def from_pixels(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of to_pixels."""
    y = (WIDTH / 2 - u) / 100 * 0.2
    x = X_RANGE[0] + (HEIGHT - 20 - v) / (HEIGHT - 40) * (X_RANGE[1] - X_RANGE[0])
    return x, y


class Table:
    """The table top, rasterised once at 1.5 mm: wood-coloured waves across x and y, a 10 cm
    grid and small coloured discs at fixed places, so that every part of it looks different."""

    RES, X0, Y0, SIZE_X, SIZE_Y = 0.0015, -0.1, -0.8, 1.2, 1.6  # metres

    def __init__(self, rng: np.random.Generator, marks: int = 40):
        nx, ny = int(self.SIZE_X / self.RES), int(self.SIZE_Y / self.RES)
        x, y = np.meshgrid(self.X0 + np.arange(nx) * self.RES, self.Y0 + np.arange(ny) * self.RES, indexing="ij")
        img = np.empty((nx, ny, 3), np.float32)
        img[:] = (150, 120, 90)
        img += 14 * np.sin(x / 0.021 + 1.3)[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
        img += 14 * np.sin(y / 0.021)[..., None] * np.array([0.5, 0.7, 1.0], np.float32)
        # lit unevenly: the hue drifts across x (redder) and y (bluer) at constant brightness, so an x/y
        # move tints the whole wrist view in proportion to it (and a z move darkens it, see wrist()):
        # cues the small demo model learns within its short run, unlike the texture's shift alone
        img += ((x - 0.5) / 0.3 * 80)[..., None] * np.array([1.0, -0.5, -0.5], np.float32)
        img += (y / 0.4 * 80)[..., None] * np.array([-0.5, -0.5, 1.0], np.float32)
        img[(np.abs((x / 0.1) % 1 - 0.5) > 0.47) | (np.abs((y / 0.1) % 1 - 0.5) > 0.47)] *= 0.7
        for mx, my, r in zip(rng.uniform(0.1, 0.9, marks), rng.uniform(-0.5, 0.5, marks), rng.uniform(0.01, 0.025, marks)):
            img[(x - mx) ** 2 + (y - my) ** 2 < r * r] = rng.uniform(30, 230, 3)
        self.raster = img

    def color(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Colour [..., 3] at table points (nearest raster cell; outside the table: the edge)."""
        i = np.clip(((x - self.X0) / self.RES).astype(np.int64), 0, self.raster.shape[0] - 1)
        j = np.clip(((y - self.Y0) / self.RES).astype(np.int64), 0, self.raster.shape[1] - 1)
        return self.raster[i, j]


class Renderer:
    """The two cameras of the demo robot: an exterior one (DROID's "left") and a wrist one."""

    def __init__(self, rng: np.random.Generator):
        self.table = Table(rng)
        self.vv, self.uu = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        self.exterior_table = self.table.color(*from_pixels(self.uu, self.vv))

    def near(self, img: np.ndarray, u: float, v: float, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pixel coordinates (uu, vv) and the view of `img` of a window holding every pixel within r of
        (u, v): a shape is drawn by testing only these pixels (the same test on fewer: the same image, faster)."""
        rows = slice(max(0, int(v - r) - 1), max(0, int(v + r) + 2))
        cols = slice(max(0, int(u - r) - 1), max(0, int(u + r) + 2))
        return self.uu[rows, cols], self.vv[rows, cols], img[rows, cols]

    def exterior(self, state: np.ndarray, block: np.ndarray) -> np.ndarray:
        img = self.exterior_table.copy()
        bu, bv = to_pixels(block[0], block[1])
        half = BLOCK_HALF / 0.2 * 100
        uu, vv, part = self.near(img, bu, bv, half)
        part[(abs(uu - bu) < half) & (abs(vv - bv) < half)] = (200, 30, 30)
        x, y, z, _, _, yaw, grip = state
        u, v = to_pixels(x, y)
        scale = 1.0 + 2.0 * z  # higher = closer to the camera = larger
        uu, vv, part = self.near(img, u, v, 13 * scale)
        part[(uu - u) ** 2 + (vv - v) ** 2 < (13 * scale) ** 2] *= 0.55  # shadow
        gu, gv = u, v - 60 * z  # lifted: drawn above its shadow
        uu, vv, part = self.near(img, gu, gv, 12 * scale)
        part[(uu - gu) ** 2 + (vv - gv) ** 2 < (12 * scale) ** 2] = (90, 90, 100)
        spread = (1.0 - grip) * 9 * scale + 5  # open gripper = fingers apart
        c, s = np.cos(yaw), np.sin(yaw)
        for side in (-1, 1):
            fu, fv = gu + side * spread * c, gv + side * spread * s
            uu, vv, part = self.near(img, fu, fv, 10 * scale)  # a finger is 6 x 18 (x scale), turned by yaw
            du, dv = uu - fu, vv - fv
            along, across = du * c + dv * s, -du * s + dv * c
            part[(abs(along) < 3 * scale) & (abs(across) < 9 * scale)] = (230, 230, 240)
        return np.clip(img, 0, 255).astype(np.uint8)

    def wrist(self, state: np.ndarray, block: np.ndarray) -> np.ndarray:
        """Looking down from the gripper: the table moves under it, the fingers stay in view."""
        x, y, z, _, _, yaw, grip = state
        metres = (z + 0.1) * 0.004  # per pixel: higher sees more of the table
        du, dv = (self.uu - WIDTH / 2) * metres, (self.vv - HEIGHT / 2) * metres
        c, s = np.cos(yaw), np.sin(yaw)
        tx = x - (dv * c - du * s)  # image up = +x, image left = +y, turned by yaw
        ty = y - (du * c + dv * s)
        img = self.table.color(tx, ty)
        img[(np.abs(tx - block[0]) < BLOCK_HALF) & (np.abs(ty - block[1]) < BLOCK_HALF)] = (200, 30, 30)
        img *= min(1.0, 0.5 + 4.0 * z)  # the lower the gripper, the darker its shadow on the table
        spread = 20 + 45 * (1.0 - grip)
        for side in (-1, 1):
            uu, vv, part = self.near(img, WIDTH / 2 + side * spread, HEIGHT, 55)
            part[(np.abs(uu - WIDTH / 2 - side * spread) < 9) & (vv > HEIGHT - 55)] = (230, 230, 240)
        return np.clip(img, 0, 255).astype(np.uint8)


def trajectory(rng: np.random.Generator, steps: int) -> np.ndarray:
    """[steps, 7] states: smooth moves between random waypoints, gripper opening and closing."""
    n_way = rng.integers(3, 6)
    way = np.stack([rng.uniform(*X_RANGE, n_way), rng.uniform(*Y_RANGE, n_way),
                    rng.uniform(*Z_RANGE, n_way), rng.uniform(-0.15, 0.15, n_way)], axis=1)
    t = np.linspace(0, n_way - 1, steps)
    i = np.minimum(t.astype(int), n_way - 2)
    ease = 0.5 - 0.5 * np.cos(np.pi * (t - i))
    pos = way[i] * (1 - ease[:, None]) + way[i + 1] * ease[:, None]
    grip = np.zeros(steps)
    moments = np.arange(5, steps - 5)  # (a short episode has fewer moments than toggles drawn, or none)
    toggles = np.sort(rng.choice(moments, size=min(int(rng.integers(1, 4)), len(moments)), replace=False))
    level = float(rng.integers(0, 2))
    last = 0
    for k in list(toggles) + [steps]:
        grip[last:k] = level
        level = 1.0 - level
        last = k
    grip = np.convolve(np.pad(grip, 3, mode="edge"), np.ones(7) / 7, mode="valid")  # ~0.5 s to open/close
    roll = np.full(steps, np.pi)  # pointing down
    pitch = np.zeros(steps)
    return np.stack([pos[:, 0], pos[:, 1], pos[:, 2], roll, pitch, pos[:, 3], grip], axis=1)


def push_block(states: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Block centre per step: a lowered gripper inside the block's footprint pushes it out of the way."""
    block = start.copy()
    out = np.empty((len(states), 2))
    for t, s in enumerate(states):
        if s[2] < PUSH_HEIGHT:
            d = block - s[:2]
            reach = BLOCK_HALF + 0.02
            if np.abs(d).max() < reach:
                axis = int(np.argmax(np.abs(d)))
                block[axis] = s[axis] + np.sign(d[axis] or 1.0) * reach
        out[t] = block
    return out


def write_episode(root: Path, index: int, rng: np.random.Generator, renderer: Renderer) -> Path:
    steps = int(rng.integers(60, 121))
    states = trajectory(rng, steps)
    block = push_block(states, np.array([rng.uniform(0.42, 0.58), rng.uniform(-0.12, 0.12)]))
    success = bool(rng.random() < 0.9)
    date = f"2026-01-{1 + index % 28:02d}"
    folder_name = f"Thu_Jan_{1 + index % 28:2d}_{index // 60:02d}:{index % 60:02d}:00_2026".replace(" ", "_")
    rel = Path("success" if success else "failure") / date / folder_name
    folder = root / "DEMO" / rel
    (folder / "recordings" / "MP4").mkdir(parents=True, exist_ok=True)
    short = index % 5 == 4  # like DROID, some MP4s hold one frame fewer than trajectory.h5
    for serial, view in ((EXT_SERIAL, renderer.exterior), (WRIST_SERIAL, renderer.wrist)):
        frames = [view(s, b) for s, b in zip(states, block)]
        write_mp4(folder / "recordings" / "MP4" / f"{serial}.mp4", frames[:-1] if short else frames, HZ)
    with h5py.File(folder / "trajectory.h5", "w") as f:
        f.create_dataset("observation/robot_state/cartesian_position", data=states[:, :6])
        f.create_dataset("observation/robot_state/gripper_position", data=states[:, 6])
        f.create_dataset("observation/timestamp/control/step_start", data=(np.arange(steps) * 1000 // HZ))
    task = TASKS[index % len(TASKS)]
    uuid = f"DEMO+00000000+{date}-00h-{index // 60:02d}m-{index % 60:02d}s"
    meta = {
        "uuid": uuid, "lab": "DEMO", "success": success, "current_task": task,
        "trajectory_length": steps, "ext1_cam_serial": EXT_SERIAL, "wrist_cam_serial": WRIST_SERIAL,
        "left_mp4_path": (rel / "recordings" / "MP4" / f"{EXT_SERIAL}.mp4").as_posix(),
        "ext1_mp4_path": (rel / "recordings" / "MP4" / f"{EXT_SERIAL}.mp4").as_posix(),
        "wrist_mp4_path": (rel / "recordings" / "MP4" / f"{WRIST_SERIAL}.mp4").as_posix(),
    }
    (folder / f"metadata_{uuid}.json").write_text(json.dumps(meta, indent=1))
    return folder


def make_demo_corpus(out: Path, episodes: int = 64, seed: int = 0, progress=None) -> Path:
    """Write the demo corpus under `out`; returns `out`."""
    out = output_dir(out, "OUT")
    renderer = Renderer(np.random.default_rng(TABLE_SEED))
    for i in range(episodes):
        write_episode(out, i, np.random.default_rng([seed, i]), renderer)
        if progress:
            progress(i)
    return out
