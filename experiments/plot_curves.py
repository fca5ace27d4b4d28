"""One learning-curve figure from the tensorboard logs of several runs (one line per run).

    python experiments/plot_curves.py runs/a runs/b --tags eval/success_rate train/success_rate \\
        --title "tabletop reach from pixels" --out experiments/results/pixel_reach.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vla.summary import read_curve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (each with tb/)")
    parser.add_argument("--tags", nargs="+", default=["eval/success_rate", "train/success_rate"])
    parser.add_argument("--labels", nargs="+", help="one per run (default: the directory names)")
    parser.add_argument("--title", default="")
    parser.add_argument("--xlabel", default="env steps", help="BC runs log against gradient steps")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = args.labels or [run.name for run in args.runs]
    fig, axes = plt.subplots(1, len(args.tags), figsize=(5 * len(args.tags), 3.6), squeeze=False)
    for ax, tag in zip(axes[0], args.tags):
        for run, label in zip(args.runs, labels):
            curve = read_curve(run, tag)
            if curve is not None:
                ax.plot(curve[:, 0], curve[:, 1], marker="o" if len(curve) < 30 else None, label=label)
        ax.set_xlabel(args.xlabel)
        ax.set_ylabel(tag)
        if "success" in tag:
            ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(args.title)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
