"""How a robosuite Lift policy fails: per deterministic episode, whether the cube was lifted at some step and
still up at the horizon (robosuite's success: the cube more than 4 cm above the table), and each time a lift
was lost (the cube back below 4 cm), how:

- ``lowered``: the gripper still grasps the cube (robosuite's own ``_check_grasp``) when it goes below 4 cm:
  the arm brought the held cube back down;
- ``dropped``: the cube left the fingers (it slid out while the arm moved, or the gripper opened).

Where the time to the first lift goes: the step the gripper first grasps the cube, and the steps from there to
the lift (the scripted expert closes its fingers for 10 steps before it rises).

It also reports the cube's highest point, the share of steps with the arm's action at its bound (OSC_POSE: a
5 cm step) and how often the gripper command changes sign after the first lift (robosuite's Panda gripper moves
its fingers by a fixed amount in the direction of the action's sign: a command that flips every step holds a
loose grip).

    python experiments/probe_lift.py runs/<lift run>/checkpoints/best [episodes=20] [seed=100000]

Reads the checkpoint's own env config; evaluation seeds by default.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs import make_env  # noqa: E402
from vla.evaluate import load_policy  # noqa: E402
from vla.trainer import stack_obs  # noqa: E402

AT_BOUND = 0.975  # a normalized arm action at least this large on some axis moves at the controller's bound


def probe_episode(model, env, seed: int) -> dict:
    """One deterministic episode of ``model`` on a robosuite Lift ``env``."""
    task = env.unwrapped._env  # robosuite's Lift
    table_z = task.model.mujoco_arena.table_offset[2]
    obs, info = env.reset(seed=seed)
    heights, successes, grasped, grips, bound = [], [], [], [], []
    done = False
    while not done:
        with torch.no_grad():
            action = model.act(model.to_tensors(stack_obs([obs])), deterministic=True).action[0].cpu().numpy()
        obs, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        heights.append(float(task.sim.data.body_xpos[task.cube_body_id][2] - table_z))
        successes.append(bool(info["success"]))
        grasped.append(bool(task._check_grasp(gripper=task.robots[0].gripper, object_geoms=task.cube)))
        grips.append(float(action[-1]))
        bound.append(bool(np.abs(action[:-1]).max() >= AT_BOUND))
    successes = np.array(successes)
    row = {"success": bool(successes[-1]), "lifted": bool(successes.any()), "max_height": max(heights),
           "at_bound": float(np.mean(bound)), "first_lift": None, "sign_flips": None, "losses": [],
           "first_grasp": int(np.argmax(grasped)) + 1 if any(grasped) else None}
    if row["lifted"]:
        first = int(np.argmax(successes))
        row["first_lift"] = first + 1
        signs = np.sign(grips[first:])
        row["sign_flips"] = float(np.mean(signs[1:] != signs[:-1])) if len(signs) > 1 else 0.0
        # Every step where the lift was lost: (step, how).
        for step in np.flatnonzero(successes[:-1] & ~successes[1:]) + 1:
            row["losses"].append((int(step) + 1, "lowered" if grasped[step] else "dropped"))
    return row


def main(argv) -> None:
    if not argv:
        sys.exit(__doc__)
    options = dict(arg.split("=", 1) for arg in argv[1:])
    episodes, seed = int(options.get("episodes", 20)), int(options.get("seed", 100000))
    model, cfg, identity = load_policy(argv[0], torch.device("cpu"))
    if cfg.env.get("kind") != "robosuite" or cfg.env.get("task") != "Lift":
        sys.exit(f"{argv[0]} was trained on env.kind={cfg.env.get('kind')!r} task={cfg.env.get('task')!r}; this "
                 "probe reads robosuite Lift runs")
    model.eval()
    env = make_env(cfg.env)
    print(f"checkpoint {identity['path']} at {identity['global_step']} env steps")
    rows = []
    try:
        for episode in range(episodes):
            row = probe_episode(model, env, seed + episode)
            rows.append(row)
            grasp = f"first grasp at step {row['first_grasp']}, " if row["first_grasp"] else "never grasped, "
            lift = (f"first lift at step {row['first_lift']}, gripper sign flips on {row['sign_flips']:.0%} of later "
                    f"steps" if row["lifted"] else "never lifted")
            losses = "".join(f", {how} at step {step}" for step, how in row["losses"])
            print(f"seed {seed + episode}: success {int(row['success'])}, {grasp}{lift}{losses}, cube up to "
                  f"{100 * row['max_height']:.0f} cm, arm at the action bound in {row['at_bound']:.0%} of steps")
    finally:
        env.close()
    lifted = [r for r in rows if r["lifted"]]
    failed = [r for r in lifted if not r["success"]]
    last = [r["losses"][-1][1] for r in failed]
    print(f"{sum(r['success'] for r in rows)}/{episodes} successes; lifted at some step in {len(lifted)}; "
          f"{len(failed)} of those end without success, their last loss by lowering the held cube in "
          f"{last.count('lowered')} and by dropping it in {last.count('dropped')}; "
          f"{sum(len(r['losses']) for r in lifted)} losses in all (some regained)")
    if lifted:
        print(f"lifted episodes: cube up to {100 * np.median([r['max_height'] for r in lifted]):.0f} cm (median), "
              f"gripper sign flips on {np.mean([r['sign_flips'] for r in lifted]):.0%} of steps after the lift, "
              f"arm at the action bound in {np.mean([r['at_bound'] for r in lifted]):.0%} of steps")
        grasped_first = [r for r in lifted if r["first_grasp"] and r["first_grasp"] <= r["first_lift"]]
        timing = (f"; in the {len(grasped_first)} that grasped before they lifted, first grasp at step "
                  f"{np.mean([r['first_grasp'] for r in grasped_first]):.1f} and "
                  f"{np.mean([r['first_lift'] - r['first_grasp'] for r in grasped_first]):.1f} steps from there to "
                  "the lift" if grasped_first else "; none grasped before it lifted")
        print(f"lifted episodes: first lift at step {np.mean([r['first_lift'] for r in lifted]):.1f} (mean){timing}")


if __name__ == "__main__":
    main(sys.argv[1:])
