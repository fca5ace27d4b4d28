"""Env throughput: steps/s of each env suite with and without cameras, in 1 and 2 worker processes, and the
speed-up of robosuite's fast rendering over its default rendering.

    python experiments/bench_envs.py [--steps-scale 1.0]

Prints a markdown table and writes it to experiments/results/bench_envs.md. Envs come from the shipped presets
(conf/env/*.yaml) through make_vector_env, exactly as training builds them; actions are uniform in [-1, 1] and
finished episodes reset automatically, so reset costs are included.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Tuple

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from envs import make_vector_env  # noqa: E402
from vla.config import register_configs  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results" / "bench_envs.md"

# (label, preset, overrides, steps per worker): robosuite steps cost about 100x more than tabletop steps.
SUITES: List[Tuple[str, str, List[str], int]] = [
    ("tabletop reach, state only", "tabletop_reach", ["env.use_camera=false"], 3000),
    ("tabletop reach, front camera 64x64", "tabletop_reach", [], 1500),
    ("tabletop lift, front + wrist 64x64", "tabletop_lift", [], 1000),
    ("robosuite Lift, state only", "robosuite_lift_state", [], 150),
    ("robosuite Lift, agentview 84x84", "robosuite_lift", [], 100),
]
WORKER_COUNTS = (1, 2)


def env_config(preset: str, overrides: List[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=[f"env={preset}", *overrides]).env


def steps_per_second(cfg, num_envs: int, steps: int, warmup: int = 5) -> float:
    """Env steps per second (all workers together) over ``steps`` vector steps, after a short warm-up."""
    envs = make_vector_env(cfg, num_envs)
    try:
        rng = np.random.default_rng(0)
        shape = envs.action_space.shape
        envs.reset(seed=list(range(num_envs)))
        for _ in range(warmup):
            envs.step(rng.uniform(-1, 1, size=shape).astype(np.float32))
        start = time.perf_counter()
        for _ in range(steps):
            envs.step(rng.uniform(-1, 1, size=shape).astype(np.float32))
        return steps * num_envs / (time.perf_counter() - start)
    finally:
        envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every measurement's length")
    args = parser.parse_args()
    register_configs()
    started = time.perf_counter()
    load_before = os.getloadavg()[0]

    throughput: Dict[str, Dict[int, float]] = {}
    for label, preset, overrides, steps in SUITES:
        cfg = env_config(preset, [*overrides, "env.vector_mode=async"])
        throughput[label] = {n: steps_per_second(cfg, n, max(10, int(steps * args.steps_scale)))
                             for n in WORKER_COUNTS}
        print(f"{label}: " + ", ".join(f"{n} worker(s) {v:,.0f}/s" for n, v in throughput[label].items()),
              flush=True)

    render_steps = max(10, int(60 * args.steps_scale))
    render = {fast: steps_per_second(env_config("robosuite_lift", [f"env.fast_render={str(fast).lower()}"]), 1,
                                     render_steps)
              for fast in (False, True)}

    lines = [
        "# Env throughput",
        "",
        f"`python experiments/bench_envs.py` on {os.cpu_count()} CPU cores ({platform.machine()}),"
        f" offscreen rendering via MUJOCO_GL={os.environ['MUJOCO_GL']}. Env steps per second, all workers together;"
        " async workers start with forkserver. Random actions, automatic resets included.",
        "",
        "| suite | 1 worker | 2 workers (async) | 2 vs 1 |",
        "|---|---:|---:|---:|",
    ]
    for label, by_workers in throughput.items():
        one, two = by_workers[1], by_workers[2]
        lines.append(f"| {label} | {one:,.0f} | {two:,.0f} | {two / one:.2f}x |")
    lines += [
        "",
        "robosuite Lift with one 84x84 agentview camera, 1 worker: default rendering (shadows, reflections,"
        " skybox, multisampling) against `fast_render: true` (all off, the presets' default).",
        "",
        "| rendering | steps/s | speed-up |",
        "|---|---:|---:|",
        f"| default | {render[False]:,.1f} | 1.00x |",
        f"| fast | {render[True]:,.1f} | {render[True] / render[False]:.2f}x |",
        "",
        f"Total benchmark time: {time.perf_counter() - started:.0f} s. One-minute load average {load_before:.1f}"
        f" before and {os.getloadavg()[0]:.1f} after: other processes sharing the cores (load above"
        f" {os.cpu_count()}) lower the numbers, the 2-worker ones most.",
    ]
    report = "\n".join(lines) + "\n"
    print(report)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(report)


if __name__ == "__main__":
    main()
