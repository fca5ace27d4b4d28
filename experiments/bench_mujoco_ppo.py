"""PPO on Gymnasium's MuJoCo manipulation tasks (Reacher-v5, Pusher-v5), several seeds, one results table.

Trains this framework's PPO with the task's preset (``vla-train experiment=<task>_ppo``) and, with ``--sb3``, Stable-Baselines3's PPO with
its default settings on the same tasks, seeds and env-step budget, side by side in one run. Both final policies
are evaluated the same way: deterministic actions, 20 episodes on fixed seeds 100000..100019, success as defined
in envs/gym_tasks.py. Also reported: the mean return of the last 100 training episodes (SB3's ``ep_rew_mean``).

    python experiments/bench_mujoco_ppo.py --steps 320000 --seeds 0 1 2 --sb3 --jobs 2

Writes experiments/results/bench_mujoco_ppo.md (and .json). SB3 is not a dependency of the framework:
``pip install -e .[bench]`` brings it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "experiments" / "results"
TASKS = {"reacher": "Reacher-v5", "pusher": "Pusher-v5"}
EVAL_SEED, EVAL_EPISODES = 100_000, 20


def run_ours(task: str, seed: int, steps: int, out: Path) -> dict:
    run_dir = out / f"vla_{task}_s{seed}"
    start = time.time()
    cmd = [str(Path(sys.executable).parent / "vla-train"), f"experiment={task}_ppo", f"seed={seed}",
           f"total_env_steps={steps}", f"eval.episodes={EVAL_EPISODES}", "torch_threads=1", "progress=false",
           f"hydra.run.dir={run_dir}"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.time() - start
    report = json.loads((run_dir / "eval" / "final" / "report.json").read_text())
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    returns = [e.value for e in events.Scalars("train/episode_return")]
    counts = [e.value for e in events.Scalars("train/episodes")]
    # mean over (about) the last 100 training episodes, weighting each update by its episode count
    tail_returns, tail_counts, total = [], [], 0.0
    for ret, count in zip(reversed(returns), reversed(counts)):
        tail_returns.append(ret)
        tail_counts.append(count)
        total += count
        if total >= 100:
            break
    train_return = float(np.average(tail_returns, weights=tail_counts))
    return {"framework": "vla-rl", "task": task, "seed": seed, "steps": report["checkpoint"]["global_step"],
            "wall_s": wall, "eval_return": report["episode_return_mean"], "eval_success": report["success_rate"],
            "train_return_last100": train_return}


def run_sb3(task: str, seed: int, steps: int) -> dict:
    """Stable-Baselines3 PPO, default hyperparameters (MlpPolicy, n_steps 2048, batch 64, 10 epochs)."""
    import gymnasium as gym
    import torch
    from omegaconf import OmegaConf
    from stable_baselines3 import PPO
    from stable_baselines3.common.monitor import Monitor

    from envs.gym_tasks import SUCCESS_DISTANCES

    torch.set_num_threads(1)
    env_cfg = OmegaConf.load(REPO / "conf" / "env" / f"{task}.yaml")
    start = time.time()
    env = Monitor(gym.make(TASKS[task]))
    model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
    model.learn(total_timesteps=steps)
    wall = time.time() - start
    train_return = float(np.mean(env.get_episode_rewards()[-100:]))

    eval_env = gym.make(TASKS[task])
    distance = SUCCESS_DISTANCES[env_cfg.success]
    returns, successes = [], []
    for episode in range(EVAL_EPISODES):
        obs, _ = eval_env.reset(seed=EVAL_SEED + episode)
        total, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = eval_env.step(action)
            total += reward
            done = terminated or truncated
        returns.append(total)
        successes.append(distance(eval_env) < env_cfg.success_threshold)
    return {"framework": "sb3", "task": task, "seed": seed, "steps": steps, "wall_s": wall,
            "eval_return": float(np.mean(returns)), "eval_success": float(np.mean(successes)),
            "train_return_last100": train_return}


def sb3_in_subprocess(task: str, seed: int, steps: int, out: Path) -> dict:
    result_file = out / f"sb3_{task}_s{seed}.json"
    subprocess.run([sys.executable, __file__, "--sb3-worker", task, str(seed), str(steps), str(result_file)],
                   check=True, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result_file.read_text())


def table(results: list) -> str:
    lines = ["| framework | task | seeds | env steps | eval return (mean ± std) | eval success | "
             "train return, last 100 ep. | wall time per run (s) |",
             "|---|---|---|---|---|---|---|---|"]
    groups = {}
    for r in results:
        groups.setdefault((r["task"], r["framework"]), []).append(r)
    for (task, framework), rows in sorted(groups.items()):
        ev = np.array([r["eval_return"] for r in rows])
        sc = np.array([r["eval_success"] for r in rows])
        tr = np.array([r["train_return_last100"] for r in rows])
        wall = np.array([r["wall_s"] for r in rows])
        lines.append(f"| {framework} | {TASKS[task]} | {len(rows)} | {rows[0]['steps']:,} | "
                     f"{ev.mean():.2f} ± {ev.std():.2f} | {sc.mean():.0%} ± {sc.std():.0%} | "
                     f"{tr.mean():.2f} ± {tr.std():.2f} | {wall.mean():.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=320_000)
    parser.add_argument("--sb3", action="store_true", help="also train Stable-Baselines3 PPO (defaults)")
    parser.add_argument("--jobs", type=int, default=2, help="runs in parallel (one core each)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench_mujoco_ppo"))
    parser.add_argument("--sb3-worker", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.sb3_worker:
        task, seed, steps, result_file = args.sb3_worker
        Path(result_file).write_text(json.dumps(run_sb3(task, int(seed), int(steps))))
        return

    args.out.mkdir(parents=True, exist_ok=True)
    jobs = [(run_ours, t, s) for t in args.tasks for s in args.seeds]
    if args.sb3:
        jobs += [(sb3_in_subprocess, t, s) for t in args.tasks for s in args.seeds]
    start = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = [pool.submit(fn, task, seed, args.steps, args.out) for fn, task, seed in jobs]
        results = []
        for future in futures:
            results.append(future.result())
            r = results[-1]
            print(f"{r['framework']:7s} {r['task']:8s} seed {r['seed']}: eval return {r['eval_return']:.2f}, "
                  f"success {r['eval_success']:.0%}, train return {r['train_return_last100']:.2f}, "
                  f"{r['wall_s']:.0f}s", flush=True)
    text = table(results)
    command = "python experiments/bench_mujoco_ppo.py " + " ".join(sys.argv[1:])
    print(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_mujoco_ppo.md").write_text(
        f"Command: `{command}` ({time.time() - start:.0f} s total, {args.jobs} parallel jobs, 2-core CPU)\n\n"
        + text + "\n")
    (RESULTS / "bench_mujoco_ppo.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
