"""Evaluation: Wilson intervals, reports that match the env, videos, best checkpoint, collapse warnings, paired
comparison of two reports."""

import json
import math

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from envs import make_env
from envs.tabletop.scene import SHAPE_NOUNS, SHAPES
from tests.conftest import load_experiment, train_config
from vla.actor_critic import ActOutput
from vla.evaluate import _section_markdown, build_report, run_episodes, summarize, wilson_interval
from vla.trainer import Trainer


@pytest.mark.parametrize("successes,n,low,high", [
    (0, 10, 0.0, 0.2775), (10, 10, 0.7225, 1.0), (5, 10, 0.2366, 0.7634), (81, 100, 0.7222, 0.8749),
])
def test_wilson_interval_known_values(successes, n, low, high):
    lo, hi = wilson_interval(successes, n)
    assert math.isclose(lo, low, abs_tol=1e-4) and math.isclose(hi, high, abs_tol=1e-4)


def test_wilson_interval_empty():
    assert wilson_interval(0, 0) == (0.0, 1.0)


class ScriptedReacher(torch.nn.Module):
    """Privileged proportional controller for Reacher: reads the fingertip-to-target vector from the state."""

    actions_per_decision = 1

    def to_tensors(self, obs, update_stats=False):
        return {"state": torch.as_tensor(obs["state"])}

    def act(self, obs, deterministic=True):
        state = obs["state"]
        cos, sin = state[:, :2], state[:, 2:4]
        angles = torch.atan2(sin, cos)
        # Jacobian-transpose step toward the target (link lengths 0.1 and 0.11)
        delta = -state[:, 8:10]  # target - fingertip
        a1, a12 = angles[:, 0], angles[:, 0] + angles[:, 1]
        j = torch.stack([
            torch.stack([-0.1 * torch.sin(a1) - 0.11 * torch.sin(a12), -0.11 * torch.sin(a12)], -1),
            torch.stack([0.1 * torch.cos(a1) + 0.11 * torch.cos(a12), 0.11 * torch.cos(a12)], -1)], -2)
        torque = 40 * torch.einsum("bji,bj->bi", j, delta) - 0.3 * state[:, 6:8]
        action = torque.clamp(-1, 1)
        zeros = torch.zeros(len(action))
        return ActOutput(action, zeros, zeros, {})


def test_report_of_a_scripted_policy_matches_the_env():
    cfg = train_config("env=reacher").env
    rows, _ = run_episodes(ScriptedReacher(), cfg, episodes=6, seed=123, num_envs=3, deterministic=True)
    assert [r["episode"] for r in rows] == list(range(6))
    for row in rows:  # replay each episode by hand in a fresh env with the same seed
        env = make_env(cfg)
        obs, info = env.reset(seed=123 + row["episode"])
        policy, total, steps, done, first_success = ScriptedReacher(), 0.0, 0, False, None
        while not done:
            action = policy.act(policy.to_tensors({"state": obs["state"][None]})).action[0].numpy()
            obs, reward, terminated, truncated, info = env.step(action)
            total, steps, done = total + reward, steps + 1, terminated or truncated
            if info["success"] and first_success is None:
                first_success = steps
        assert row["length"] == steps and math.isclose(row["return"], total, rel_tol=1e-6)
        assert row["success"] == info["success"]
        # Reacher runs to its time limit: success is first reached well before the episode ends.
        assert row["first_success_step"] == first_success and (first_success is None or first_success < steps)
    report = build_report(rows, checkpoint={}, config={}, deterministic=True, seed=123)
    assert report["success_rate"] == np.mean([r["success"] for r in rows])
    assert report["success_rate"] > 0.5  # the scripted controller reaches the target: success is reachable
    assert report["first_success_step_mean"] == np.mean([r["first_success_step"] for r in rows if r["success"]])
    assert report["per_task"][0]["task"] == "Reacher-v5" and report["per_task"][0]["episodes"] == 6


def test_report_counts_success_reached_but_not_held_apart():
    """An episode that reaches success and loses it (a cube lifted, then dropped before the horizon) fails in
    success_rate and counts in reached_success_rate, robomimic's rollout success; the report says so."""
    rows = [{"success": True, "first_success_step": 40, "length": 200, "return": 1.0},
            {"success": False, "first_success_step": 55, "length": 200, "return": 1.0},
            {"success": False, "first_success_step": None, "length": 200, "return": 0.0},
            {"success": False, "first_success_step": None, "length": 200, "return": 0.0}]
    summary = summarize(rows)
    assert summary["success_rate"] == 0.25 and summary["reached_success_rate"] == 0.5
    assert summary["first_success_step_mean"] == 40  # of the successful episodes only
    lines = "\n".join(_section_markdown({**summary, "per_task": [], "per_instruction": []}))
    assert "success reached at some step" in lines and "50.0%" in lines
    held = summarize(rows[:1] + rows[2:])
    assert held["reached_success_rate"] == held["success_rate"]
    assert "reached at some step" not in "\n".join(_section_markdown({**held, "per_task": [], "per_instruction": []}))


class RandomPolicy(torch.nn.Module):
    """Uniform random actions (seeded), for reports whose contents do not depend on the policy."""

    actions_per_decision = 1

    def __init__(self, action_size: int):
        super().__init__()
        self.action_size, self.generator = action_size, torch.Generator().manual_seed(0)

    def to_tensors(self, obs, update_stats=False):
        return {"state": torch.as_tensor(obs["state"])}

    def act(self, obs, deterministic=True):
        action = torch.rand(len(obs["state"]), self.action_size, generator=self.generator) * 2 - 1
        zeros = torch.zeros(len(action))
        return ActOutput(action, zeros, zeros, {})


def test_tabletop_report_breaks_success_down_by_the_named_objects_shape():
    cfg = train_config("env=tabletop_reach_state", "env.max_episode_steps=5").env
    rows, _ = run_episodes(RandomPolicy(4), cfg, episodes=9, seed=7, num_envs=2, deterministic=True)
    env = make_env(cfg)
    for row in rows:  # each row names the shape of the object its episode's instruction names
        env.reset(seed=7 + row["episode"])
        _, _, _, _, info = env.step(np.zeros(4, dtype=np.float32))
        assert row["object"] == info["object"] and info["object"] in SHAPES
        assert any(noun in row["instruction"] for noun in SHAPE_NOUNS[row["object"]])
    report = build_report(rows, checkpoint={}, config={}, deterministic=True, seed=7)
    per_object = {group["object"]: group["episodes"] for group in report["per_object"]}
    assert per_object == {name: sum(r["object"] == name for r in rows) for name in per_object}
    assert sum(per_object.values()) == 9 and len(per_object) >= 2


def test_collapsed_policy_triggers_the_warning_once(tmp_path, small_train_overrides, capsys):
    trainer = Trainer(train_config(*small_train_overrides, "watch.min_action_std=10.0"), tmp_path)
    trainer.train()
    out = capsys.readouterr().out
    assert out.count("action std collapse") == 1
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert "alerts/action_std_collapse" in events.Tags()["scalars"]


def test_periodic_eval_logs_and_keeps_best_checkpoint_and_videos(tmp_path, small_train_overrides):
    trainer = Trainer(train_config(*small_train_overrides, "eval.every_updates=2", "eval.episodes=2",
                                   "eval.video_episodes=1"), tmp_path)
    trainer.train()
    assert (tmp_path / "checkpoints" / "best" / "manifest.json").is_file()
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "update_000004"
    assert (tmp_path / "eval" / "update_000002" / "report.json").is_file()
    videos = list((tmp_path / "eval" / "final" / "videos").iterdir())
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    # The periodic evaluations (the last update's too) choose the best on seeds apart from the final (test) ones.
    periodic = [json.loads((tmp_path / "eval" / name / "report.json").read_text())
                for name in ("update_000002", "update_000004")]
    final = json.loads((tmp_path / "eval" / "final" / "report.json").read_text())
    assert [report["seeds"] for report in periodic] == [[200000, 200001]] * 2 and final["seeds"] == [100000, 100001]
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("eval/success_rate")] == [128, 256, 256]


def test_compare_reports_pairs_episodes_by_seed(tmp_path):
    """experiments/compare_reports.py compares lengths only on the episodes both policies solve."""
    compare_reports = load_experiment("compare_reports")

    def report(name, rows):
        rows = [{"seed": seed, "success": step is not None, "first_success_step": step} for seed, step in rows]
        (tmp_path / name).mkdir()
        (tmp_path / name / "report.json").write_text(json.dumps({"episode_rows": rows}))
        return compare_reports.episode_rows(compare_reports.load_report(str(tmp_path / name)))

    # Seed 3 is solved only by the second policy (late: it must not count against it), seed 4 only by the first.
    first = report("a", [(0, 30), (1, 40), (2, 50), (3, None), (4, 20)])
    second = report("b", [(0, 20), (1, 30), (2, 40), (3, 140), (4, None)])
    text = compare_reports.compare(first, second)
    assert "solved only by the first 1, only by the second 1 (sign test p = 1)" in text
    assert "3 solved by both: first success at step 40.0 -> 30.0, paired change -10.0" in text
    assert "sooner in 3, later in 0" in text
    # Exact two-sided sign test: 15 against 0 discordant episodes is p = 2 / 2**15; 9 against 8 is p = 1.
    assert compare_reports.sign_test(0, 15) == 2 / 2 ** 15
    assert compare_reports.sign_test(9, 8) == 1.0 and compare_reports.sign_test(0, 0) == 1.0
    assert round(compare_reports.sign_test(4, 16), 4) == 0.0118
