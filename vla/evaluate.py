"""Sim evaluation: N episodes on a fixed, reproducible list of seeds, in parallel envs, with a report.

Episode ``i`` always starts from ``env.reset(seed=seed + i)``, whatever ``num_envs`` is, so two evaluations of
the same checkpoint with the same settings see the same initial states (and, deterministic by default, give
the same report). With ``heldout``, the same seeds run again on the env's held-out split (``env.split=heldout``)
and the report gets a separate ``heldout`` section.
"""

from __future__ import annotations

import copy
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from tqdm import tqdm

from envs import make_env, make_vector_env
from envs.registry import batch_instructions, reset_to_next_episodes
from envs.wrappers import chunk_stats
from vla import checkpoint as ckpt
from vla.actor_critic import ActorCritic, PolicyEnsemble
from vla.config import complete_saved_config
from vla.errors import ConfigError
from vla.video import caption, log_video, write_video


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> Tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and n successes, small n)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


# What env.split=heldout holds out, per env kind (the report's held-out section says it).
HELDOUT_DESCRIPTIONS = {
    "tabletop": "the named object in a held-out colour, the instruction a held-out paraphrase",
    "robosuite": "a smaller cube (15-18 mm half-size instead of 20-22 mm), the instruction a held-out paraphrase",
}


def split_env_config(env_cfg, split: str):
    """``env_cfg`` on generalization split ``split`` (``env.split``); ConfigError for an env without splits."""
    from envs.robosuite_env import HELDOUT_INSTRUCTIONS

    name = env_cfg.get("id") or env_cfg.get("task") or env_cfg.get("kind")
    if env_cfg.get("kind") not in HELDOUT_DESCRIPTIONS or \
            (env_cfg.get("kind") == "robosuite" and name not in HELDOUT_INSTRUCTIONS):
        raise ConfigError(f"held-out evaluation needs an env with generalization splits (env.split: tabletop "
                          f"envs, robosuite Lift); env {name!r} has none. Set eval.heldout=false (vla-eval: "
                          f"heldout=false)")
    env_cfg = copy.deepcopy(env_cfg)
    with open_dict(env_cfg):
        env_cfg.split = split
    return env_cfg


def run_episodes(model: ActorCritic, env_cfg, episodes: int, seed: int, num_envs: int, deterministic: bool,
                 progress: bool = False, record: int = 0) -> Tuple[List[Dict[str, Any]], Dict[int, List[np.ndarray]]]:
    """Roll out ``episodes`` episodes; returns one row per episode (ordered by episode index) and the display
    camera frames of the first ``record`` episodes (rendered at the env's video size)."""
    num_envs = max(1, min(num_envs, episodes))
    envs = make_vector_env(env_cfg, num_envs, render_mode="rgb_array" if record else None, autoreset=False,
                           action_chunk=model.actions_per_decision)
    rows: List[Optional[Dict[str, Any]]] = [None] * episodes
    videos: Dict[int, List[np.ndarray]] = defaultdict(list)

    def render_recorded(only: Optional[np.ndarray] = None, step_info: Optional[Dict[str, Any]] = None) -> None:
        wanted = [i for i, episode in enumerate(assigned) if episode < record and (only is None or only[i])]
        if wanted:
            frames = envs.call("render")
            for i in wanted:
                if step_info is not None and step_info.get("_chunk_frames", np.zeros(num_envs, bool))[i]:
                    videos[assigned[i]].extend(step_info["chunk_frames"][i])  # the steps inside an action chunk
                videos[assigned[i]].append(frames[i])

    try:
        obs, info = envs.reset(seed=[seed + i for i in range(num_envs)])
        assigned = list(range(num_envs))  # episode index each env is running (>= episodes: a throwaway)
        next_episode = num_envs
        returns, lengths = np.zeros(num_envs), np.zeros(num_envs, dtype=np.int64)
        # Env steps to the first step with info["success"] (-1: none yet): the time a task that does not end
        # on success (robosuite Lift holding the cube up to the horizon) took to get there.
        first_success = np.full(num_envs, -1, dtype=np.int64)
        instructions = batch_instructions(obs, num_envs)
        tasks, objects = _episode_labels(info, env_cfg, num_envs)
        bar = tqdm(total=episodes, desc="eval", unit="ep", disable=not progress, dynamic_ncols=True)
        was_training = model.training
        model.eval()
        render_recorded()
        while any(row is None for row in rows):
            out = model.act(model.to_tensors(obs), deterministic=deterministic)
            obs, reward, terminated, truncated, info = envs.step(out.action.cpu().numpy())
            render_recorded(step_info=info)
            steps, reward = chunk_stats(info, reward)  # an action chunk: its env steps and undiscounted reward
            returns += reward
            lengths += steps
            success = np.asarray(info.get("success", np.zeros(num_envs, dtype=bool)), dtype=bool)
            reached = success & (first_success < 0)
            first_success[reached] = lengths[reached]
            done = terminated | truncated
            if not done.any():
                continue
            for i in np.flatnonzero(done):
                episode = assigned[i]
                if episode < episodes:
                    rows[episode] = {
                        "episode": episode, "seed": seed + episode, "success": bool(success[i]),
                        "length": int(lengths[i]), "return": float(returns[i]),
                        "first_success_step": int(first_success[i]) if first_success[i] >= 0 else None,
                        "terminated": bool(terminated[i]), "task": tasks[i], "instruction": instructions[i],
                        "object": objects[i],
                    }
                    bar.update(1)
                returns[i], lengths[i], first_success[i] = 0.0, 0, -1
            obs, info, next_episode = reset_to_next_episodes(envs, done, assigned, next_episode, seed)
            new_instructions = batch_instructions(obs, num_envs)
            new_tasks, new_objects = _episode_labels(info, env_cfg, num_envs)
            for i in np.flatnonzero(done):
                instructions[i], tasks[i], objects[i] = new_instructions[i], new_tasks[i], new_objects[i]
            render_recorded(only=done)
        bar.close()
        model.train(was_training)
    finally:
        envs.close()
    return rows, dict(videos)  # type: ignore[return-value]


def write_videos(rows: List[Dict[str, Any]], videos: Dict[int, List[np.ndarray]], out_dir: Path, fps: int,
                 writer=None, step: int = 0) -> List[str]:
    """Captioned videos of the recorded episodes (successes and failures alike), as files and in tensorboard."""
    paths = []
    for episode, frames in sorted(videos.items()):
        row = rows[episode]
        outcome = "success" if row["success"] else "failure"
        text = f"{row['task']} | {row['instruction'] or ''} | {outcome} in {row['length']} steps"
        frames = [caption(frame, text) for frame in frames]
        paths.append(str(write_video(frames, out_dir / f"episode_{episode:03d}_{outcome}.mp4", fps)))
        if writer is not None:
            log_video(writer, f"eval/video_{outcome}_{episode:03d}", frames, step, fps)
    return paths


def _episode_labels(info: Dict[str, Any], env_cfg, num_envs: int) -> Tuple[List[str], List[Optional[str]]]:
    """Per env of a vector env's ``info``: the task (the env id where the env does not say) and the named
    object's kind (tabletop: its shape; None where the env does not say)."""
    default_task = str(env_cfg.get("id", env_cfg.kind))
    tasks = [task or default_task for task in _info_strings(info, "task", num_envs)]
    return tasks, _info_strings(info, "object", num_envs)


def _info_strings(info: Dict[str, Any], key: str, num_envs: int) -> List[Optional[str]]:
    """``info[key]`` per env as a string, None for the envs that did not report it."""
    if key not in info:
        return [None] * num_envs
    present = info.get(f"_{key}", [True] * num_envs)
    return [str(value) if reported else None for value, reported in zip(info[key], present)]


def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Success rate (with Wilson 95% interval), lengths and returns of a list of episode rows."""
    n = len(rows)
    successes = sum(r["success"] for r in rows)
    successful_lengths = [r["length"] for r in rows if r["success"]]
    # Of the successful episodes: the step success was first reached (their length, when success ends them).
    first_success = [r["first_success_step"] for r in rows
                     if r["success"] and r.get("first_success_step") is not None]
    # Episodes in which success held at some step, whether or not at the end (robomimic's rollout success, which
    # stops at the first success): apart from success_rate only in envs that do not end on success.
    reached = sum(r.get("first_success_step") is not None for r in rows)
    low, high = wilson_interval(successes, n)
    return {
        "episodes": n,
        "success_rate": successes / n if n else 0.0,
        "success_ci95": [low, high],
        "reached_success_rate": reached / n if n else 0.0,
        "reached_success_ci95": list(wilson_interval(reached, n)),
        "episode_length_mean": float(np.mean([r["length"] for r in rows])) if n else 0.0,
        "episode_length_success_mean": float(np.mean(successful_lengths)) if successful_lengths else None,
        "first_success_step_mean": float(np.mean(first_success)) if first_success else None,
        "episode_return_mean": float(np.mean([r["return"] for r in rows])) if n else 0.0,
        "episode_return_std": float(np.std([r["return"] for r in rows])) if n else 0.0,
    }


def breakdown(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The summary of ``rows``, per task, per named object and per instruction, and the rows themselves."""
    per_task, per_object, per_instruction = defaultdict(list), defaultdict(list), defaultdict(list)
    for row in rows:
        per_task[row["task"]].append(row)
        if row.get("object") is not None:
            per_object[row["object"]].append(row)
        if row["instruction"] is not None:
            per_instruction[row["instruction"]].append(row)
    return {
        **summarize(rows),
        "per_task": [{"task": task, **summarize(group)} for task, group in sorted(per_task.items())],
        "per_object": [{"object": name, **summarize(group)} for name, group in sorted(per_object.items())],
        "per_instruction": [{"instruction": text, **summarize(group)}
                            for text, group in sorted(per_instruction.items())],
        "episode_rows": rows,
    }


def build_report(rows: List[Dict[str, Any]], *, checkpoint: Dict[str, Any], config: Dict[str, Any],
                 deterministic: bool, seed: int, split: Optional[str] = None,
                 heldout_rows: Optional[List[Dict[str, Any]]] = None, holds_out: str = "") -> Dict[str, Any]:
    """The report of ``rows`` (on env split ``split``, None for envs without splits) and, given
    ``heldout_rows``, a ``heldout`` section with the same fields for the held-out split (``holds_out``: what
    that split changes)."""
    report = {
        **breakdown(rows),
        "deterministic": deterministic,
        "seeds": [seed, seed + len(rows) - 1],
        "split": split,
        "checkpoint": checkpoint,
        "config": config,
    }
    if heldout_rows is not None:
        report["heldout"] = {"split": "heldout", "holds_out": holds_out, **breakdown(heldout_rows)}
    return report


def report_scalars(report: Dict[str, Any]) -> Dict[str, Optional[float]]:
    """Tensorboard scalars of a report: ``eval/*``, and ``eval_heldout/*`` for its held-out section."""
    sections = [("eval", report)] + ([("eval_heldout", report["heldout"])] if "heldout" in report else [])
    scalars: Dict[str, Optional[float]] = {}
    for prefix, section in sections:
        scalars.update({
            f"{prefix}/success_rate": section["success_rate"],
            f"{prefix}/success_ci95_low": section["success_ci95"][0],
            f"{prefix}/success_ci95_high": section["success_ci95"][1],
            f"{prefix}/reached_success_rate": section.get("reached_success_rate"),
            f"{prefix}/episode_length": section["episode_length_mean"],
            f"{prefix}/episode_length_success": section["episode_length_success_mean"],
            f"{prefix}/first_success_step": section["first_success_step_mean"],
            f"{prefix}/episode_return": section["episode_return_mean"],
        })
    return scalars


def _section_markdown(section: Dict[str, Any]) -> List[str]:
    """Success rate, length and return lines, then the per-task and per-instruction tables."""
    low, high = section["success_ci95"]
    length_success = section["episode_length_success_mean"]
    first_success = section.get("first_success_step_mean")
    lines = [
        f"- **success rate: {section['success_rate']:.1%}** (95% Wilson interval {low:.1%} to {high:.1%})",
    ]
    reached = section.get("reached_success_rate")
    if reached is not None and reached != section["success_rate"]:
        reached_low, reached_high = section["reached_success_ci95"]
        lines.append(f"- success reached at some step (not necessarily held to the end): {reached:.1%} (95% "
                     f"Wilson interval {reached_low:.1%} to {reached_high:.1%})")
    lines += [
        f"- episode length: {section['episode_length_mean']:.1f} mean"
        + (f", {length_success:.1f} over successful episodes" if length_success is not None else "")
        + (f"; success first reached at step {first_success:.1f} (successful episodes, mean)"
           if first_success is not None else ""),
        f"- episode return: {section['episode_return_mean']:.2f} mean (std {section['episode_return_std']:.2f})",
        "",
        "| task | episodes | success rate | 95% CI | length | return |",
        "|---|---|---|---|---|---|",
    ]
    for row in section["per_task"]:
        lines.append(f"| {row['task']} | {row['episodes']} | {row['success_rate']:.1%} | "
                     f"{row['success_ci95'][0]:.1%}-{row['success_ci95'][1]:.1%} | "
                     f"{row['episode_length_mean']:.1f} | {row['episode_return_mean']:.2f} |")
    if section.get("per_object"):
        lines += ["", "| named object | episodes | success rate | 95% CI | length over successes |",
                  "|---|---|---|---|---|"]
        for row in section["per_object"]:
            length = row["episode_length_success_mean"]
            lines.append(f"| {row['object']} | {row['episodes']} | {row['success_rate']:.1%} | "
                         f"{row['success_ci95'][0]:.1%}-{row['success_ci95'][1]:.1%} | "
                         f"{'-' if length is None else f'{length:.1f}'} |")
    if section["per_instruction"]:
        lines += ["", "| instruction | episodes | success rate |", "|---|---|---|"]
        for row in section["per_instruction"]:
            lines.append(f"| {row['instruction']} | {row['episodes']} | {row['success_rate']:.1%} |")
    return lines


def report_markdown(report: Dict[str, Any]) -> str:
    lines = [
        "# Evaluation report",
        "",
        f"- checkpoint: `{report['checkpoint'].get('path')}` (env step {report['checkpoint'].get('global_step')})",
        f"- episodes: {report['episodes']} (seeds {report['seeds'][0]}..{report['seeds'][1]}, "
        f"{'deterministic mean action' if report['deterministic'] else 'sampled actions'})",
    ]
    if report.get("split") is not None:
        lines.append(f"- env split: {report['split']}")
    lines += _section_markdown(report)
    if "heldout" in report:
        lines += ["", "## Held-out split", "",
                  f"The same seeds with env.split=heldout: {report['heldout'].get('holds_out', '')}.", ""]
        lines += _section_markdown(report["heldout"])
    return "\n".join(lines) + "\n"


def write_report(report: Dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt.write_text_atomic(out_dir / "report.json", json.dumps(report, indent=2))
    ckpt.write_text_atomic(out_dir / "report.md", report_markdown(report))
    return out_dir / "report.json"


def evaluate_policy(model: ActorCritic, env_cfg, out_dir: Path, *, episodes: int, seed: int, num_envs: int,
                    deterministic: bool, checkpoint: Dict[str, Any], config: Dict[str, Any], record: int = 0,
                    fps: int = 20, writer=None, step: int = 0, progress: bool = False,
                    heldout: bool = False) -> Dict[str, Any]:
    """Run the episodes (and with ``heldout`` the same seeds on the held-out split), write the captioned videos
    of the first ``record`` of them (also to tensorboard when a ``writer`` is given) and ``report.json`` /
    ``report.md`` into ``out_dir``; returns the report."""
    heldout_cfg = split_env_config(env_cfg, "heldout") if heldout else None  # refuse before any episode runs
    rows, videos = run_episodes(model, env_cfg, episodes, seed, num_envs, deterministic, progress=progress,
                                record=record)
    heldout_rows = None
    if heldout_cfg is not None:
        heldout_rows, _ = run_episodes(model, heldout_cfg, episodes, seed, num_envs, deterministic,
                                       progress=progress)
    report = build_report(rows, checkpoint=checkpoint, config=config, deterministic=deterministic, seed=seed,
                          split=env_cfg.get("split"), heldout_rows=heldout_rows,
                          holds_out=HELDOUT_DESCRIPTIONS.get(env_cfg.get("kind"), ""))
    if videos:
        report["videos"] = write_videos(rows, videos, out_dir / "videos", fps, writer=writer, step=step)
    write_report(report, out_dir)
    return report


def load_policy(checkpoint_path: str, device: torch.device, env_cfg=None
                ) -> Tuple[ActorCritic, DictConfig, Dict[str, Any]]:
    """Rebuild the actor-critic a checkpoint was trained with and load its weights, for evaluation on
    ``env_cfg`` (None: the env it was trained on); refuses a checkpoint whose backbone, state size or action
    size does not fit, naming the difference."""
    loaded = ckpt.load_checkpoint(checkpoint_path)
    train_cfg = complete_saved_config(OmegaConf.create(loaded["config_yaml"]))
    probe = make_env(env_cfg if env_cfg is not None else train_cfg.env)
    obs_space, action_space = probe.observation_space, probe.action_space
    probe.close()
    model = ActorCritic.from_config(train_cfg, obs_space, action_space)
    ckpt.check_compatible(loaded["state"], backbone_identity=model.backbone.identity(),
                          state_dim=int(obs_space["state"].shape[0]),
                          action_dim=int(np.prod(action_space.shape)), path=loaded["path"])
    model.load_trainable_state_dict(loaded["weights"], str(loaded["path"]))
    identity = {"path": str(loaded["path"]), "global_step": loaded["state"]["global_step"],
                "update": loaded["state"]["update_index"], "backbone": loaded["state"]["backbone"]}
    return model.to(device), train_cfg, identity


def load_ensemble(checkpoint_path: str, ensemble: List[str], device: torch.device, env_cfg=None,
                  deterministic: bool = True) -> Tuple[torch.nn.Module, DictConfig, Dict[str, Any]]:
    """``load_policy`` for ``checkpoint_path`` alone (``ensemble`` empty), or a ``PolicyEnsemble`` of it and
    the ``ensemble`` checkpoints, all on ``env_cfg`` (None: the env ``checkpoint_path`` was trained on); the
    identity names every member under ``ensemble``. An ensemble that is to sample (``deterministic`` false) is
    refused before anything loads."""
    if ensemble and not deterministic:
        raise ConfigError("an ensemble acts with the average of its policies' mean actions; drop "
                          "deterministic=false or the ensemble")
    model, train_cfg, identity = load_policy(checkpoint_path, device, env_cfg)
    if not ensemble:
        return model, train_cfg, identity
    members, identities = [model], []
    for path in ensemble:
        member, _, member_identity = load_policy(path, device, env_cfg if env_cfg is not None else train_cfg.env)
        members.append(member)
        identities.append(member_identity)
    return PolicyEnsemble(members).to(device), train_cfg, {**identity, "ensemble": identities}
