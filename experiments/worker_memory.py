"""Memory of one env worker: what a fresh process holds after building an env exactly as a vector-env worker
does, before and after ``envs.registry.release_build_memory`` (which every worker now calls), and after stepping.

    python experiments/worker_memory.py [--experiments robosuite_lift_towers_from_bc tabletop_push_towers_from_bc]

Each experiment's env is built in its own fresh process (forkserver, as AsyncVectorEnv starts its workers);
the numbers are that process's anonymous resident memory (RssAnon), the part that does not share with other
processes. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

REPO = Path(__file__).resolve().parent.parent


def rss_anon_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def measure(experiment: str, steps: int, queue) -> None:
    from hydra import compose, initialize_config_dir

    from envs.registry import make_env, release_build_memory
    from vla.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="config", overrides=[f"experiment={experiment}"])
    before = rss_anon_mb()
    env = make_env(cfg.env)
    env.reset(seed=0)
    built = rss_anon_mb()
    release_build_memory()
    released = rss_anon_mb()
    for step in range(steps):
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset(seed=step)
    queue.put((experiment, before, built, released, rss_anon_mb()))
    env.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiments", nargs="+", default=["robosuite_lift_towers_from_bc", "robosuite_lift_state",
                                                             "tabletop_push_towers_from_bc"])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    context = multiprocessing.get_context("forkserver")
    print("| experiment's env | process before the env | built and reset | after release_build_memory | "
          f"after {args.steps} more steps | released |")
    print("|---|---:|---:|---:|---:|---:|")
    for experiment in args.experiments:
        queue = context.Queue()
        worker = context.Process(target=measure, args=(experiment, args.steps, queue))
        worker.start()
        name, before, built, released, stepped = queue.get()
        worker.join()
        print(f"| {name} | {before:.0f} MB | {built:.0f} MB | {released:.0f} MB | {stepped:.0f} MB | "
              f"{built - released:.0f} MB ({(built - released) / built:.0%}) |")


if __name__ == "__main__":
    main()
