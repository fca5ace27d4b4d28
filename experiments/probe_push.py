"""What a tabletop push policy does near the object: per deterministic episode, whether it succeeded, how far
the named object moved, how close the hand came to the spot behind the object, and how many steps the hand
spent behind it (on the object's line to the zone, low) — a policy that parks there without pushing shows as
many steps behind and an object that never moved — and how often the hand moved at the action bound (2 cm per
step on some axis: an episode cannot get much shorter when nearly every step is there).

    python experiments/probe_push.py runs/<push run> [episodes=20] [seed=100000] [position_error=0.03]
        [position_noise=0.01] [expert=true]

Reads the checkpoint's own env config (state or camera policies alike); evaluation seeds by default.
``expert=true`` drives the scripted expert (``envs/tabletop/expert.py``, the demonstrations' source) on that
env instead of the checkpoint's policy.

For a policy with an auxiliary position head (``algo.privileged_aux_coef``; camera policies), the probe also
reports that head's error in placing the named object and its goal along the episodes: on the policy's own
states, or with ``expert=true`` on the expert's, the states its demonstrations show.

For a policy trained from privileged state (``env.privileged_state=true``), ``position_error=E`` shifts the named
object's and its goal's x-y positions in the policy's state by an offset drawn once per episode (each point its
own, RMS length E metres), and ``position_noise=E`` by a fresh offset every step: how much success a localization
error of a pixel policy's size costs a policy that is otherwise the same. The env itself is untouched.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")  # camera policies render offscreen; before mujoco is imported

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from envs import make_env  # noqa: E402
from envs.tabletop.tasks import PUSH_APPROACH_OFFSET, push_geometry  # noqa: E402
from vla.evaluate import load_policy  # noqa: E402
from vla.trainer import stack_obs  # noqa: E402

UNMOVED = 0.001  # metres: an object that moved less than this was never pushed
AT_BOUND = 0.975  # a normalized hand action at least this large on some axis moves at the action bound


# Where a privileged-state observation holds the named object's and its goal's x and y: its last six entries
# are object xyz, goal xyz (envs/tabletop/env.py).
POSITION_XY = np.array([-6, -5, -3, -2])


def probe_episode(model, env, seed: int, position_error: float = 0.0, position_noise: float = 0.0,
                  expert: bool = False):
    """One deterministic episode of ``model`` (or, with ``expert``, of the scripted expert: ``env`` made with
    ``make_env(..., expert=True)``)."""
    base = env.unwrapped
    obs, info = env.reset(seed=seed)
    expert_action = env.get_wrapper_attr("expert_action") if expert else None
    rng = np.random.default_rng(seed)
    bias = rng.normal(0.0, position_error / np.sqrt(2.0), len(POSITION_XY))  # 2-D RMS length position_error
    start = base.measures().target.copy()
    closest, behind_steps, steps, bound_steps = np.inf, 0, 0, 0
    reads_aux = model.privileged_aux is not None and "privileged" in obs
    aux_errors = []
    done = False
    while not done:
        if position_error or position_noise:
            state = obs["state"].copy()
            state[POSITION_XY] += bias + rng.normal(0.0, position_noise / np.sqrt(2.0), len(POSITION_XY))
            obs = dict(obs, state=state)
        with torch.no_grad():
            tensors = model.to_tensors(stack_obs([obs]))
            if reads_aux:
                aux_errors.append(aux_position_errors(model, tensors, obs["privileged"]))
            if expert_action is not None:
                action = expert_action()
                if action is None:  # the object is off the table: the expert has nothing left to do
                    break
            else:
                action = model.act(tensors, deterministic=True).action[0].cpu().numpy()
        bound_steps += bool(np.abs(action[:3]).max() >= AT_BOUND)
        obs, _, terminated, truncated, info = env.step(action)
        steps += 1
        done = terminated or truncated
        measures = base.measures()
        geometry = push_geometry(measures)
        approach = geometry.hand_target(measures, PUSH_APPROACH_OFFSET)
        closest = min(closest, float(np.linalg.norm(measures.hand - approach)))
        behind_steps += geometry.behind
    end = base.measures().target
    return {"success": bool(info["success"]), "object": info["object"], "steps": steps,
            "moved": float(np.linalg.norm(end[:2] - start[:2])),
            "closest": closest, "behind_steps": behind_steps, "off_table": bool(end[2] < 0.0),
            "at_bound": bound_steps / steps, "aux_errors": aux_errors}


def outcomes_by_object(rows) -> list:
    """Per named-object shape: episodes, successes, and the failures by kind (knocked off the table, never
    moved, moved but not into the zone). A ball knocked off its line keeps rolling (the objects have no rolling
    friction), so knock-offs gather on balls."""
    cells = []
    for shape in sorted({r["object"] for r in rows}):
        mine = [r for r in rows if r["object"] == shape]
        failed = [r for r in mine if not r["success"]]
        off = sum(r["off_table"] for r in failed)
        unmoved = sum(r["moved"] < UNMOVED and not r["off_table"] for r in failed)
        cells.append(f"{shape} {len(mine) - len(failed)}/{len(mine)} (failures: {off} knocked off, {unmoved} never "
                     f"moved, {len(failed) - off - unmoved} moved short or wide)")
    return cells


def aux_position_errors(model, tensors, privileged: np.ndarray):
    """(named object's, goal's x-y error in metres, object on the table) of the policy's auxiliary head, which
    reads the actor's own features: where the policy 'thinks' things are, on the states it visits (or, with
    ``expert=true``, on the scripted expert's: the demonstrations' states)."""
    error = model.predict_privileged(tensors)[0].cpu().numpy() - privileged
    return float(np.linalg.norm(error[:2])), float(np.linalg.norm(error[3:5])), bool(privileged[2] >= 0.0)


def main(argv) -> None:
    if not argv:
        sys.exit(__doc__)
    options = dict(arg.split("=", 1) for arg in argv[1:])
    episodes, seed = int(options.get("episodes", 20)), int(options.get("seed", 100000))
    position_error, position_noise = (float(options.get(key, 0.0)) for key in ("position_error", "position_noise"))
    model, cfg, identity = load_policy(argv[0], torch.device("cpu"))
    if cfg.env.get("task") != "push":
        sys.exit(f"{argv[0]} was trained on env.task={cfg.env.get('task')!r}; this probe reads push runs")
    if (position_error or position_noise) and not cfg.env.get("privileged_state"):
        sys.exit(f"position_error / position_noise perturb the positions in a privileged state; {argv[0]} was "
                 "trained without env.privileged_state")
    use_expert = options.get("expert", "false").lower() == "true"
    model.eval()
    env = make_env(cfg.env, expert=use_expert)
    print(f"{'the scripted expert on the env of ' if use_expert else ''}checkpoint {identity['path']} at "
          f"{identity['global_step']} env steps")
    rows, aux_errors = [], []
    try:
        for episode in range(episodes):
            row = probe_episode(model, env, seed + episode, position_error, position_noise,
                                expert=use_expert)
            rows.append(row)
            aux_errors += row.pop("aux_errors")
            knocked_off = ", knocked off the table" if row["off_table"] else ""
            print(f"seed {seed + episode}: {row['object']}, success {int(row['success'])}, {row['steps']} steps, "
                  f"object moved {100 * row['moved']:.1f} cm, hand's closest to the approach point "
                  f"{100 * row['closest']:.1f} cm, {row['behind_steps']} steps behind the object, "
                  f"{row['at_bound']:.0%} of steps at the action bound{knocked_off}")
    finally:
        env.close()
    successes = sum(r["success"] for r in rows)
    unmoved = sum(r["moved"] < UNMOVED for r in rows)
    near = sum(r["closest"] < 0.03 for r in rows)
    off_table = sum(r["off_table"] for r in rows)
    print(f"{successes}/{episodes} successes; object never moved in {unmoved}, knocked off the table in {off_table}; "
          f"hand within 3 cm of the approach point in {near}; mean steps behind the object "
          f"{np.mean([r['behind_steps'] for r in rows]):.1f}")
    print("by named object: " + "; ".join(outcomes_by_object(rows)))
    if aux_errors:
        errors = np.array(aux_errors)
        on_table = errors[:, 2].astype(bool)
        cells = [f"{name} RMS {100 * np.sqrt(np.mean(e ** 2)):.2f} (median {100 * np.median(e):.2f}, 90th "
                 f"percentile {100 * np.percentile(e, 90):.2f})" for name, e in
                 (("object", errors[on_table, 0]), ("goal", errors[on_table, 1]))]
        print(f"the policy's auxiliary head along these episodes, {on_table.sum()} steps with the object on the "
              f"table ({(~on_table).sum()} off it), cm: {'; '.join(cells)}")
    solved = [r for r in rows if r["success"]]
    if solved:
        print(f"successful episodes: {np.mean([r['steps'] for r in solved]):.1f} steps on average, the hand at the "
              f"action bound in {np.mean([r['at_bound'] for r in solved]):.0%} of their steps")


if __name__ == "__main__":
    main(sys.argv[1:])
