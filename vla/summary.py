"""``vla-summary SWEEP_DIR``: one table and one learning-curve plot for the runs of a sweep.

    vla-train -m seed=0,1,2
    vla-summary runs/multirun/2026-11-22/10-00-00

Reads every run directory under SWEEP_DIR (a directory with ``tb/``): the final evaluation report
(``eval/final/report.json``) and the tensorboard curves. Writes ``summary.md``, ``summary.json`` and
``learning_curve.png`` (success rate against env steps: mean over runs with a min-max band) into SWEEP_DIR.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np


def find_runs(root: Path) -> List[Path]:
    return sorted(p.parent for p in root.rglob("tb") if p.is_dir() and (p.parent / "checkpoints").is_dir())


def read_curve(run: Path, tag: str) -> Optional[np.ndarray]:
    """(N, 2) array of (step, value) for a scalar tag, or None when the run never logged it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0})
    events.Reload()
    if tag not in events.Tags()["scalars"]:
        return None
    return np.array([(e.step, e.value) for e in events.Scalars(tag)], dtype=np.float64)


def summarize_runs(runs: List[Path]) -> Dict:
    rows = []
    for run in runs:
        report_path = run / "eval" / "final" / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else None
        rows.append({
            "run": str(run),
            "eval_success_rate": report["success_rate"] if report else None,
            "eval_episode_length": report["episode_length_mean"] if report else None,
            "eval_episode_return": report["episode_return_mean"] if report else None,
            "env_steps": report["checkpoint"]["global_step"] if report else None,
        })
    summary = {"runs": rows}
    for key in ("eval_success_rate", "eval_episode_length", "eval_episode_return"):
        values = [r[key] for r in rows if r[key] is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                            "min": float(np.min(values)), "max": float(np.max(values)), "n": len(values)}
    return summary


def markdown(summary: Dict) -> str:
    lines = ["| run | env steps | eval success rate | eval episode length | eval return |", "|---|---|---|---|---|"]
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in summary["runs"]:
        lines.append(f"| {Path(r['run']).name} | {fmt(r['env_steps'], ',')} | {fmt(r['eval_success_rate'], '.1%')} | "
                     f"{fmt(r['eval_episode_length'], '.1f')} | {fmt(r['eval_episode_return'], '.2f')} |")
    if "eval_success_rate" in summary:
        s, n = summary["eval_success_rate"], summary["eval_episode_length"]
        ret = summary["eval_episode_return"]
        lines.append(f"| **mean ± std ({s['n']} runs)** | | **{s['mean']:.1%} ± {s['std']:.1%}** | "
                     f"{n['mean']:.1f} ± {n['std']:.1f} | {ret['mean']:.2f} ± {ret['std']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(runs: List[Path], out: Path, tag: str = "train/success_rate") -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [c for c in (read_curve(run, tag) for run in runs) if c is not None and len(c)]
    if not curves:
        return None
    grid = np.linspace(0, min(c[-1, 0] for c in curves), 200)
    values = np.stack([np.interp(grid, c[:, 0], c[:, 1]) for c in curves])
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.plot(grid, values.mean(0), color="tab:blue", label=f"mean of {len(curves)} runs")
    ax.fill_between(grid, values.min(0), values.max(0), color="tab:blue", alpha=0.2, label="min-max")
    ax.set_xlabel("env steps")
    ax.set_ylabel(tag.split("/")[-1].replace("_", " "))
    ax.set_title(f"{tag} vs env steps")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="vla-summary", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--tag", default="train/success_rate", help="tensorboard tag to plot against env steps")
    args = parser.parse_args(argv)
    runs = find_runs(args.sweep_dir)
    if not runs:
        print(f"vla-summary: error: no run directories (with tb/ and checkpoints/) under {args.sweep_dir}",
              file=sys.stderr)
        sys.exit(2)
    summary = summarize_runs(runs)
    text = markdown(summary)
    (args.sweep_dir / "summary.md").write_text(text)
    (args.sweep_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    figure = plot(runs, args.sweep_dir / "learning_curve.png", args.tag)
    print(text + (f"\nlearning curve: {figure}" if figure else ""))
