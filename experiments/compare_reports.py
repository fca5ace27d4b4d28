"""Compare two ``vla-eval`` reports episode by episode, on the seeds both ran.

The mean episode length of successful episodes compares different episodes when the two policies solve
different ones (a fine-tuned policy that adds the hard episodes looks slower even if it is faster on every
episode both solve). This script pairs the episodes by seed and reports, on the episodes both policies solve,
the mean step of the first success for each and the paired difference with its 95% interval, plus how many
episodes only one of them solves.

    python experiments/compare_reports.py runs/eval_clone runs/eval_ppo

Each argument is a ``vla-eval`` output directory (or its ``report.json``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def episode_rows(path: str) -> dict:
    report = Path(path)
    if report.is_dir():
        report = report / "report.json"
    if not report.is_file():
        sys.exit(f"{path}: no report.json (give a vla-eval output directory or its report.json)")
    rows = json.loads(report.read_text()).get("episode_rows")
    if not rows:
        sys.exit(f"{report} has no episode_rows: evaluate again with this version of vla-eval")
    return {row["seed"]: row for row in rows}


def compare(first: dict, second: dict) -> str:
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return "no seed in common: evaluate both with the same eval.seed and episodes"
    both = [s for s in seeds if first[s]["success"] and second[s]["success"]]
    only_first = sum(first[s]["success"] and not second[s]["success"] for s in seeds)
    only_second = sum(second[s]["success"] and not first[s]["success"] for s in seeds)
    line = (f"{len(seeds)} common seeds: success {np.mean([first[s]['success'] for s in seeds]):.1%} -> "
            f"{np.mean([second[s]['success'] for s in seeds]):.1%}; solved only by the first {only_first}, "
            f"only by the second {only_second}")
    if len(both) < 2:
        return line + f"; {len(both)} solved by both, too few to compare lengths"
    steps_first = np.array([first[s]["first_success_step"] for s in both], dtype=float)
    steps_second = np.array([second[s]["first_success_step"] for s in both], dtype=float)
    change = steps_second - steps_first
    half_width = 1.96 * change.std(ddof=1) / np.sqrt(len(change))
    return (line + f"\n{len(both)} solved by both: first success at step {steps_first.mean():.1f} -> "
            f"{steps_second.mean():.1f}, paired change {change.mean():+.1f} (95% CI +- {half_width:.1f}, median "
            f"{np.median(change):+.0f}); sooner in {int((change < 0).sum())}, later in {int((change > 0).sum())}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    print(compare(episode_rows(sys.argv[1]), episode_rows(sys.argv[2])))
