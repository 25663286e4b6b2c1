"""A small synthetic robot corpus in DROID raw layout (real MP4, trajectory.h5, metadata json).

A camera looks down at a table. The gripper (grey disc with two fingers, and a shadow below it)
follows a smooth random end-effector trajectory at 15 Hz: x/y move it across the image, z
changes its size and its offset from the shadow, yaw turns the fingers, the gripper state
opens and closes them. A red block is pushed along when the lowered gripper runs into it.
Everything the video shows is a function of the states (and the block's pushes), so a world
model has something learnable. Deterministic by seed.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

WIDTH, HEIGHT = 320, 180  # 16:9 like DROID's 1280x720, so the crop rule applies
HZ = 15
SERIAL = "20000001"
X_RANGE, Y_RANGE, Z_RANGE = (0.35, 0.65), (-0.2, 0.2), (0.02, 0.25)  # metres, robot base frame
BLOCK_HALF = 0.03  # block half-size, m
PUSH_HEIGHT = 0.07  # the gripper pushes the block when lower than this
TASKS = ("push the red block", "move the gripper over the table", "touch the block and lift")


def to_pixels(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Table point -> (u, v) pixels. +y (robot's left) goes to image left, +x (away) to image top."""
    u = WIDTH / 2 - (y / 0.2) * 100  # the workspace spans the centre 200 px, inside the crop
    v = HEIGHT - 20 - (x - X_RANGE[0]) / (X_RANGE[1] - X_RANGE[0]) * (HEIGHT - 40)
    return u, v


class Renderer:
    def __init__(self, rng: np.random.Generator):
        self.vv, self.uu = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
        table = np.array([150, 120, 90], np.float32)
        # a fixed wood-like texture and grid lines, so different places on the table look different
        noise = rng.normal(0, 6, (HEIGHT, WIDTH, 1)).astype(np.float32)
        grain = 8 * np.sin(self.vv[..., None] / 3.0 + np.sin(self.uu[..., None] / 25.0))
        self.background = table + noise + grain
        self.background[(self.uu.astype(int) % 40) < 2] *= 0.8
        self.background[(self.vv.astype(int) % 40) < 2] *= 0.8

    def frame(self, state: np.ndarray, block: np.ndarray) -> np.ndarray:
        img = self.background.copy()
        uu, vv = self.uu, self.vv
        bu, bv = to_pixels(block[0], block[1])
        half = BLOCK_HALF / 0.2 * 100
        img[(abs(uu - bu) < half) & (abs(vv - bv) < half)] = (200, 30, 30)
        x, y, z, _, _, yaw, grip = state
        u, v = to_pixels(x, y)
        scale = 1.0 + 2.0 * z  # higher = closer to the camera = larger
        shadow = (uu - u) ** 2 + (vv - v) ** 2 < (13 * scale) ** 2
        img[shadow] *= 0.55
        gu, gv = u, v - 60 * z  # lifted: drawn above its shadow
        r = 12 * scale
        img[(uu - gu) ** 2 + (vv - gv) ** 2 < r**2] = (90, 90, 100)
        spread = (1.0 - grip) * 9 * scale + 5  # open gripper = fingers apart
        c, s = np.cos(yaw), np.sin(yaw)
        for side in (-1, 1):
            fu, fv = gu + side * spread * c, gv + side * spread * s
            du, dv = uu - fu, vv - fv
            along, across = du * c + dv * s, -du * s + dv * c
            img[(abs(along) < 3 * scale) & (abs(across) < 9 * scale)] = (230, 230, 240)
        return np.clip(img, 0, 255).astype(np.uint8)


def trajectory(rng: np.random.Generator, steps: int) -> np.ndarray:
    """[steps, 7] states: smooth moves between random waypoints, gripper opening and closing."""
    n_way = rng.integers(3, 6)
    way = np.stack([rng.uniform(*X_RANGE, n_way), rng.uniform(*Y_RANGE, n_way),
                    rng.uniform(*Z_RANGE, n_way), rng.uniform(-0.6, 0.6, n_way)], axis=1)
    t = np.linspace(0, n_way - 1, steps)
    i = np.minimum(t.astype(int), n_way - 2)
    ease = 0.5 - 0.5 * np.cos(np.pi * (t - i))
    pos = way[i] * (1 - ease[:, None]) + way[i + 1] * ease[:, None]
    grip = np.zeros(steps)
    toggles = np.sort(rng.choice(np.arange(5, steps - 5), size=rng.integers(1, 4), replace=False))
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


def write_mp4(path: Path, frames: list[np.ndarray], fps: int = HZ) -> None:
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps, options={"crf": "18", "preset": "fast"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())


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
    frames = [renderer.frame(s, b) for s, b in zip(states, block)]
    if index % 5 == 4:
        frames = frames[:-1]  # like DROID, some MP4s hold one frame fewer than trajectory.h5
    write_mp4(folder / "recordings" / "MP4" / f"{SERIAL}.mp4", frames)
    with h5py.File(folder / "trajectory.h5", "w") as f:
        f.create_dataset("observation/robot_state/cartesian_position", data=states[:, :6])
        f.create_dataset("observation/robot_state/gripper_position", data=states[:, 6])
        f.create_dataset("observation/timestamp/control/step_start", data=(np.arange(steps) * 1000 // HZ))
    task = TASKS[index % len(TASKS)]
    uuid = f"DEMO+00000000+{date}-00h-{index // 60:02d}m-{index % 60:02d}s"
    meta = {
        "uuid": uuid, "lab": "DEMO", "success": success, "current_task": task,
        "trajectory_length": steps, "ext1_cam_serial": SERIAL,
        "left_mp4_path": (rel / "recordings" / "MP4" / f"{SERIAL}.mp4").as_posix(),
    }
    (folder / f"metadata_{uuid}.json").write_text(json.dumps(meta, indent=1))
    return folder


def make_demo_corpus(out: Path, episodes: int = 64, seed: int = 0, progress=None) -> Path:
    """Write the demo corpus under `out`; returns `out`."""
    out = Path(out)
    renderer = Renderer(np.random.default_rng(seed + 1))
    for i in range(episodes):
        write_episode(out, i, np.random.default_rng([seed, i]), renderer)
        if progress:
            progress(i)
    return out
