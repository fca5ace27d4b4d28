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
import math
import sys
from pathlib import Path

import numpy as np


def load_report(path: str) -> dict:
    report = Path(path)
    if report.is_dir():
        report = report / "report.json"
    if not report.is_file():
        sys.exit(f"{path}: no report.json (give a vla-eval output directory or its report.json)")
    loaded = json.loads(report.read_text())
    if not loaded.get("episode_rows"):
        sys.exit(f"{report} has no episode_rows: evaluate again with this version of vla-eval")
    return loaded


def episode_rows(section: dict) -> dict:
    """A report's (or its held-out section's) episodes by seed."""
    return {row["seed"]: row for row in section["episode_rows"]}


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the probability of a split at least this uneven if each discordant episode
    were a fair coin."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def compare(first: dict, second: dict) -> str:
    seeds = sorted(set(first) & set(second))
    if not seeds:
        return "no seed in common: evaluate both with the same eval.seed and episodes"
    both = [s for s in seeds if first[s]["success"] and second[s]["success"]]
    only_first = sum(first[s]["success"] and not second[s]["success"] for s in seeds)
    only_second = sum(second[s]["success"] and not first[s]["success"] for s in seeds)
    line = (f"{len(seeds)} common seeds: success {np.mean([first[s]['success'] for s in seeds]):.1%} -> "
            f"{np.mean([second[s]['success'] for s in seeds]):.1%}; solved only by the first {only_first}, "
            f"only by the second {only_second} (sign test p = {sign_test(only_first, only_second):.2g})")
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
    first, second = load_report(sys.argv[1]), load_report(sys.argv[2])
    print(compare(episode_rows(first), episode_rows(second)))
    if first.get("heldout", {}).get("episode_rows") and second.get("heldout", {}).get("episode_rows"):
        print("held-out split: " + compare(episode_rows(first["heldout"]), episode_rows(second["heldout"])))
