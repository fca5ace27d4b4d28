"""Training throughput against raw env throughput: how much the framework costs on top of the simulator, and
where the time goes.

    python experiments/bench_throughput.py [--scale 1.0] [--only LABEL_SUBSTRING]

For each configuration (the default ``vla-train`` and the tabletop and robosuite presets, as users launch them),
side by side in one run on the same envs:

- raw env steps/s: ``make_vector_env`` stepped with uniform random actions, measured right before and right
  after the trainer (the mean of the two, so a change in the machine's load during the trainer counts half);
- rollout steps/s: the trainer's rollout phase (policy inference, env stepping, storage, reward scaling);
- training steps/s: the full loop, rollout plus PPO update (``Trainer.train_one_update``);
- where the time goes per update: env stepping, the backbone's frozen stage, everything else of inference
  (observation tensors, trainable projection, action expert and value head), and the PPO update.

Then, side by side: the trainer's torch threads (1 against one per core), one vector env against two env groups
overlapping env stepping with inference (overlap_envs), the frozen towers in float32 against bfloat16
(backbone.dtype), the PPO update eager against compiled (algo.compile), and local rollouts against 1 and 2 Ray
rollout workers
(distributed=ray on a local Ray instance). Prints a markdown report and writes it to
experiments/results/bench_throughput.md; ``--only`` runs print the report without writing it.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench_envs import steps_per_second  # noqa: E402  (experiments/ is sys.path[0] for a script)
from tests.conftest import train_config  # noqa: E402
from vla.backbones.towers import bfloat16_is_native  # noqa: E402
from vla.trainer import Trainer  # noqa: E402

RESULTS = REPO / "experiments" / "results" / "bench_throughput.md"
STATE_TABLETOP = ["env=tabletop_reach", "env.use_camera=false", "env.privileged_state=true",
                  "env.vector_mode=sync"]
# Every run: no console bar, no evaluation, no checkpoints inside the measured updates. One torch thread in the
# trainer process unless a case says otherwise (the thread comparison below shows why on a shared machine).
QUIET = ["progress=false", "eval.at_end=false", "eval.episodes=0", "checkpoint.every_updates=100000",
         "torch_threads=1"]


@dataclass
class Case:
    label: str
    overrides: List[str]
    updates: int  # measured updates, after one warm-up update
    target: Optional[float] = None  # training / raw throughput the issue asks for


# The experiments as users launch them (`vla-train` and the presets of issue 8: their envs, rollout length and
# update), one per backbone and kind of task the issue names: (label, overrides).
DEFAULT = ("state backbone, tabletop reach: the default `vla-train` (8 sync envs)", [])
REACH_TOWERS = ("towers, tabletop reach: `experiment=tabletop_reach_towers` (64x64 camera, 32 async envs)",
                ["experiment=tabletop_reach_towers"])
LIFT_STATE = ("state backbone, robosuite Lift: `experiment=robosuite_lift_state` (8 async envs)",
              ["experiment=robosuite_lift_state"])
LIFT_TOWERS = ("towers, robosuite Lift: `experiment=robosuite_lift_towers` (84x84 camera, 4 async envs)",
               ["experiment=robosuite_lift_towers"])
CASES = [Case(*DEFAULT, updates=3, target=0.9), Case(*REACH_TOWERS, updates=2, target=0.7),
         Case(*LIFT_STATE, updates=2, target=0.9), Case(*LIFT_TOWERS, updates=2, target=0.7)]
# Trainer torch threads: one (the default) against one per core, with the envs stepping in the trainer process.
THREADS = DEFAULT
# Local rollouts against 1 and 2 Ray rollout workers, same 8 envs in all, alternating, twice.
SCALING = [*STATE_TABLETOP, "num_envs=8", "algo.num_steps=128"]


@dataclass
class Comparison:
    """One setting side by side with its default on the same envs: alternating, two runs each."""

    title: str
    key: str  # the override compared
    values: Tuple[str, str]  # (default, candidate)
    configs: Dict[str, List[str]]  # label -> overrides
    note: str


COMPARISONS = [
    Comparison(
        "Env stepping overlapped with inference (`overlap_envs=true`: two env groups half a step apart), side by "
        "side with one vector env", "overlap_envs", ("false", "true"),
        dict([REACH_TOWERS, LIFT_STATE, LIFT_TOWERS]),
        "Overlap can at best hide the shorter of env stepping and inference behind the longer, and only where a "
        "core is free to run both at once: with envs in worker processes and one inference thread, the 2 cores "
        "here bound the gain."),
    Comparison(
        "The frozen towers in bfloat16 (`backbone.dtype=bfloat16`), side by side with float32", "backbone.dtype",
        ("float32", "bfloat16"),
        dict([REACH_TOWERS]),
        "{bfloat16}; the trainable layers, the heads and the update stay float32."),
]
# The PPO update compiled (algo.compile=true) against eager, same envs; alternating, two runs each.
COMPILED = dict([DEFAULT, LIFT_STATE, REACH_TOWERS])
SCALING_SETTINGS = {"local (distributed=none)": [],
                    "ray, 1 worker": ["distributed=ray", "distributed.num_workers=1"],
                    "ray, 2 workers": ["distributed=ray", "distributed.num_workers=2"]}


class FrozenStageTimer:
    """Adds up the time the backbone's frozen stage takes (rollout and bootstrap values alike)."""

    def __init__(self, model):
        self.seconds = 0.0
        encode_frozen = model.encode_frozen

        def timed(obs):
            start = time.perf_counter()
            features = encode_frozen(obs)
            self.seconds += time.perf_counter() - start
            return features

        model.encode_frozen = timed


def measure_trainer(overrides: List[str], updates: int, run_dir: Path) -> Dict[str, float]:
    """Per-update means over ``updates`` updates after a warm-up update."""
    trainer = Trainer(train_config(*QUIET, *overrides), run_dir)
    try:
        start = time.perf_counter()
        trainer.train_one_update()  # warm-up: allocations, first instruction encodings, worker start-up
        warmup = time.perf_counter() - start
        frozen = FrozenStageTimer(trainer.model)
        rows = []
        for _ in range(updates):
            frozen.seconds = 0.0
            start = time.perf_counter()
            metrics = trainer.train_one_update()
            metrics["wall"] = time.perf_counter() - start
            metrics["frozen"] = frozen.seconds
            rows.append(metrics)
    finally:
        trainer.close()
    mean = {key: float(np.mean([row[key] for row in rows])) for key in rows[0]
            if all(row.get(key) is not None for row in rows)}  # None: e.g. no episode ended in the update
    mean["batch"] = float(trainer.batch_size)
    mean["rollout"] = mean["wall"] - mean["perf/update_seconds"]
    mean["warmup"] = warmup
    return mean


def run_case(case: Case, scale: float, run_dir: Path) -> Dict[str, float]:
    cfg = train_config(*QUIET, *case.overrides)
    steps = max(8, int(cfg.algo.num_steps * scale))
    overrides = [*case.overrides, f"algo.num_steps={steps}"]
    raw_before = steps_per_second(cfg.env, cfg.num_envs, steps)
    trained = measure_trainer(overrides, case.updates, run_dir)
    raw_after = steps_per_second(cfg.env, cfg.num_envs, steps)
    raw = (raw_before + raw_after) / 2
    batch = trained["batch"]
    return {
        "raw": raw,
        "rollout_sps": batch / trained["rollout"], "train_sps": batch / trained["wall"],
        "env": trained["perf/env_seconds"], "frozen": trained["frozen"],
        "heads": trained["perf/inference_seconds"] - trained["frozen"],
        "other": trained["rollout"] - trained["perf/env_seconds"] - trained["perf/inference_seconds"],
        "update": trained["perf/update_seconds"], "wall": trained["wall"], "batch": batch,
        # training / raw with no framework cost at all: the envs at raw speed, then this update
        "bound": (batch / raw) / (batch / raw + trained["perf/update_seconds"]),
    }


def scaling_on_paper(scaling: Dict[str, List[Dict[str, float]]]) -> List[str]:
    """Training throughput on N nodes from the measured parts: each node collects its share of the batch in
    parallel, so the rollout time per update stays what one node takes; the learner's update time grows with
    the batch. Throughput(N) = N b / (t_rollout + t_gather + u N b): it tends to 1/u, the learner's ceiling."""
    two = scaling["ray, 2 workers"]
    batch = two[0]["batch"]
    node_rollout = float(np.mean([t["rollout"] for t in two]))  # one node (this machine) collects a batch
    worker_busy = float(np.mean([t["perf/env_seconds"] + t["perf/inference_seconds"] for t in two]))
    gather = max(0.0, node_rollout - worker_busy)  # broadcast, waiting for the slowest worker, concatenation
    per_sample_update = float(np.mean([t["perf/update_seconds"] for t in scaling["local (distributed=none)"]]
                                      + [t["perf/update_seconds"] for t in two])) / batch
    lines = ["", "On paper, N nodes like this one (2 rollout workers each, the same batch per node, the learner "
             "on one of them), from the parts measured above: a node collects its share in "
             f"{node_rollout:.2f} s (of which about {gather:.2f} s is broadcast, waiting for the slower worker "
             f"and concatenation), and this CPU learner's PPO update costs {1000 * per_sample_update:.2f} ms per "
             f"sample (10 epochs). Training throughput = N b / (t_rollout + u N b), b = {batch:.0f}:", "",
             "| nodes | rollout capacity (steps/s) | training steps/s, this CPU learner | learner share of the "
             "update time |", "|---:|---:|---:|---:|"]
    for nodes in (1, 2, 4, 8, 16, 64):
        update = per_sample_update * nodes * batch
        lines.append(f"| {nodes} | {nodes * batch / node_rollout:,.0f} | "
                     f"{nodes * batch / (node_rollout + update):,.0f} | {update / (node_rollout + update):.0%} |")
    lines += ["", f"The rollout side scales with the nodes; the learner's update does not, so training throughput "
              f"tends to 1/u = {1 / per_sample_update:,.0f} steps/s with this learner however many nodes collect. "
              "Past a node or two the learner is the bottleneck: a GPU learner (the update is dense matrix work "
              "on cached features) or fewer epochs / larger minibatches move the ceiling up by the factor they "
              "speed the update up by."]
    return lines


def percent(part: float, whole: float) -> str:
    return f"{part:.2f} s ({100 * part / whole:.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the rollout length of every case")
    parser.add_argument("--only", default=None, help="run only the cases whose label contains this text, or "
                        "the comparison of the setting named (overlap_envs, backbone.dtype, algo.compile)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray scaling measurement")
    args = parser.parse_args()
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(CASES):
            if args.only and args.only not in case.label:
                continue
            results[case.label] = run_case(case, args.scale, Path(tmp) / f"case{i}")
            r = results[case.label]
            print(f"{case.label}: raw {r['raw']:,.0f}/s, rollout {r['rollout_sps']:,.0f}/s, "
                  f"training {r['train_sps']:,.1f}/s", flush=True)
        threads: Dict[str, List[float]] = {}
        if not args.only:
            label, overrides = THREADS
            for setting in ("torch_threads=1", f"torch_threads={os.cpu_count()}") * 2:
                trained = measure_trainer([*overrides, setting], 1, Path(tmp) / "threads")
                threads.setdefault(setting, []).append(trained["batch"] / trained["wall"])
            print(f"threads, {label}: " + ", ".join(f"{k} {np.mean(v):,.0f}/s" for k, v in threads.items()),
                  flush=True)
        compared: Dict[str, Dict[str, Dict[str, List[Dict[str, float]]]]] = {}
        for comparison in COMPARISONS:
            if args.only and args.only not in comparison.key:
                continue
            for label, overrides in comparison.configs.items():
                steps = max(8, int(train_config(*QUIET, *overrides).algo.num_steps * args.scale))
                for _ in range(2):
                    for value in comparison.values:
                        setting = f"{comparison.key}={value}"
                        trained = measure_trainer([*overrides, f"algo.num_steps={steps}", setting], 1,
                                                  Path(tmp) / "compare")
                        compared.setdefault(comparison.key, {}).setdefault(label, {}).setdefault(
                            value, []).append(trained)
                        print(f"{label}, {setting}: rollout {trained['batch'] / trained['rollout']:,.0f}/s",
                              flush=True)
        compiled: Dict[str, Dict[str, List[Dict[str, float]]]] = {}
        if not args.only or args.only == "algo.compile":
            for label, overrides in COMPILED.items():
                steps = max(8, int(train_config(*QUIET, *overrides).algo.num_steps * args.scale))
                for _ in range(2):
                    for value in ("false", "true"):
                        trained = measure_trainer([*overrides, f"algo.num_steps={steps}", f"algo.compile={value}"],
                                                  2, Path(tmp) / "compiled")
                        compiled.setdefault(label, {}).setdefault(value, []).append(trained)
                        print(f"{label}, algo.compile={value}: update {trained['perf/update_seconds']:.2f} s, "
                              f"first update {trained['warmup']:.1f} s", flush=True)
        scaling: Dict[str, List[Dict[str, float]]] = {}
        if not args.no_ray and not args.only:
            import ray

            # One local Ray instance for all runs (each Trainer finds it running and leaves it up).
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="warning")
            steps = max(8, int(128 * args.scale))
            for _ in range(2):
                for name, settings in SCALING_SETTINGS.items():
                    trained = measure_trainer([*SCALING, f"algo.num_steps={steps}", *settings], 2,
                                              Path(tmp) / "scaling")
                    scaling.setdefault(name, []).append(trained)
                    print(f"{name}: rollout {trained['batch'] / trained['rollout']:,.0f}/s, "
                          f"training {trained['batch'] / trained['wall']:,.0f}/s", flush=True)
            ray.shutdown()
    report = render(results, threads, compared, compiled, scaling, args, time.perf_counter() - started, load_before,
                    os.getloadavg()[0])
    print(report)
    if not args.only:
        RESULTS.write_text(report)


def compute_device() -> str:
    """Where the trainer's model ran (device=auto)."""
    return f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"


def bfloat16_hardware() -> str:
    if torch.cuda.is_available():
        return f"The frozen stage ran on the GPU ({torch.cuda.get_device_name()}), which has bfloat16 tensor cores"
    if bfloat16_is_native():
        return ("This CPU has bfloat16 instructions (AVX-512 BF16 or AMX), which the bfloat16 convolutions and "
                "matrix products use")
    return "This CPU has no bfloat16 instructions: bfloat16 is emulated, about 10x slower than float32"


def render(results, threads, compared, compiled, scaling, args, seconds: float, load_before: float,
           load_after: float) -> str:
    command = "python experiments/bench_throughput.py" + (f" --scale {args.scale}" if args.scale != 1.0 else "")
    lines = [
        "# Training throughput against raw env throughput", "",
        f"`{command}` on {os.cpu_count()} CPU cores ({platform.machine()}), torch {torch.__version__}, "
        f"{compute_device()}, offscreen rendering via MUJOCO_GL={os.environ['MUJOCO_GL']}. Env steps per second, "
        "all envs together. *raw*: the same vector env stepped with random actions (mean of a measurement right before "
        "and right after the trainer). *rollout*: the trainer's rollout phase. *training*: the full loop, "
        "rollout plus PPO update. Ratios are against raw.", "",
        "| configuration | raw | rollout | training | rollout / raw | training / raw | target | update bound |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    targets = {case.label: case.target for case in CASES}
    for label, r in results.items():
        lines.append(f"| {label} | {r['raw']:,.0f} | {r['rollout_sps']:,.0f} | {r['train_sps']:,.1f} | "
                     f"{r['rollout_sps'] / r['raw']:.0%} | {r['train_sps'] / r['raw']:.0%} | "
                     f"{targets[label]:.0%} | {r['bound']:.0%} |")
    lines += ["", "Where the time of one update goes (seconds per update, share of the update's wall time):", "",
              "| configuration | batch | env stepping | backbone frozen stage | rest of inference | "
              "storage, rewards, bootstrap | PPO update |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for label, r in results.items():
        lines.append(f"| {label} | {r['batch']:.0f} | {percent(r['env'], r['wall'])} | "
                     f"{percent(r['frozen'], r['wall'])} | {percent(r['heads'], r['wall'])} | "
                     f"{percent(r['other'], r['wall'])} | {percent(r['update'], r['wall'])} |")
    lines += ["", "*rollout / raw* is the framework's cost on top of the simulator: inference (the frozen stage once "
              "per step, then the heads) and bookkeeping. *training / raw* adds the PPO update, which is algorithm "
              "work rather than overhead: the preset's epochs over the batch, about as much compute per sample "
              "whatever the env costs. *update bound* is the training / raw a framework with no cost at all would "
              "reach with this update on these cores: the batch's raw env time over itself plus the update's time. "
              "Where it is below the target, no rollout machinery reaches the target with this update here; only a "
              "cheaper update (compiled, fewer epochs, larger minibatches) or a learner on cores of its own (a GPU, "
              "or Ray rollout workers on other nodes) does. With `overlap_envs=true` (the robosuite presets) the "
              "policy infers for one env group while the other group's workers step: env seconds are then the waits "
              "for a group, and inference seconds include time in which the workers were stepping."]
    if threads:
        label, _ = THREADS
        lines += ["", f"Trainer torch threads, side by side ({label}; alternating, two runs each; training "
                  "steps/s, full loop):", "", "| torch_threads | training steps/s | runs |", "|---|---:|---|"]
        for setting, runs in threads.items():
            lines.append(f"| {setting.split('=')[1]} | {np.mean(runs):,.0f} | "
                         f"{', '.join(f'{v:,.0f}' for v in runs)} |")
    for comparison in COMPARISONS:
        if comparison.key not in compared:
            continue
        default, candidate = comparison.values
        lines += ["", f"{comparison.title}; alternating, two runs each (means; rollout steps/s, seconds per "
                  "update):", "",
                  f"| configuration | rollout, {default} | rollout, {candidate} | ratio | env s, {default} | "
                  f"inference s, {default} / {candidate} | frozen stage s, {default} / {candidate} | runs |",
                  "|---|---:|---:|---:|---:|---:|---:|---|"]
        for label, settings in compared[comparison.key].items():
            rates = {k: [t["batch"] / t["rollout"] for t in runs] for k, runs in settings.items()}
            mean = {k: {key: np.mean([t[key] for t in runs]) for key in ("perf/env_seconds",
                                                                          "perf/inference_seconds", "frozen")}
                    for k, runs in settings.items()}
            lines.append(f"| {label} | {np.mean(rates[default]):,.0f} | {np.mean(rates[candidate]):,.0f} | "
                         f"{np.mean(rates[candidate]) / np.mean(rates[default]):.2f}x | "
                         f"{mean[default]['perf/env_seconds']:.2f} | "
                         f"{mean[default]['perf/inference_seconds']:.2f} / "
                         f"{mean[candidate]['perf/inference_seconds']:.2f} | "
                         f"{mean[default]['frozen']:.2f} / {mean[candidate]['frozen']:.2f} | "
                         f"{', '.join(f'{v:,.0f}' for v in rates[default])}; "
                         f"{', '.join(f'{v:,.0f}' for v in rates[candidate])} |")
        lines += ["", comparison.note.format(bfloat16=bfloat16_hardware())]
    if compiled:
        lines += ["", "The PPO update compiled (`algo.compile=true`: each minibatch's forward pass and loss, with its "
                  "backward, through torch.compile), side by side with eager; alternating, two runs each (means; "
                  "seconds per update, training steps/s of the full loop, the first update with the compilation):",
                  "", "| configuration | update s, eager | update s, compiled | ratio | training steps/s, eager / "
                  "compiled | first update s, eager / compiled | runs (update s) |",
                  "|---|---:|---:|---:|---:|---:|---|"]
        for label, settings in compiled.items():
            mean = {k: {key: np.mean([t[key] for t in runs]) for key in ("perf/update_seconds", "wall", "batch",
                                                                          "warmup")} for k, runs in settings.items()}
            eager, fused = mean["false"], mean["true"]
            lines.append(f"| {label} | {eager['perf/update_seconds']:.2f} | {fused['perf/update_seconds']:.2f} | "
                         f"{eager['perf/update_seconds'] / fused['perf/update_seconds']:.2f}x | "
                         f"{eager['batch'] / eager['wall']:,.0f} / {fused['batch'] / fused['wall']:,.0f} | "
                         f"{eager['warmup']:.1f} / {fused['warmup']:.1f} | "
                         + "; ".join(", ".join(f"{t['perf/update_seconds']:.2f}" for t in settings[k])
                                     for k in ("false", "true")) + " |")
        lines += ["", "Compilation pays where many small kernels make the update (the state MLPs: the eager update "
                  "is mostly per-operation overhead); the first compiled update includes tracing and code "
                  "generation, shorter once torch's on-disk compile cache holds the kernels (the second run)."]
    if scaling:
        lines += ["", "Rollout workers, side by side: state backbone on tabletop reach, 8 envs in all (split "
                  "between the workers, each stepping its envs in-process), one local Ray instance; "
                  "alternating, two runs each (means; steps/s):", "",
                  "| rollouts | rollout steps/s | training steps/s | rollout s | update s | runs (rollout steps/s) |",
                  "|---|---:|---:|---:|---:|---|"]
        for name, runs in scaling.items():
            rollout = [t["batch"] / t["rollout"] for t in runs]
            lines.append(f"| {name} | {np.mean(rollout):,.0f} | "
                         f"{np.mean([t['batch'] / t['wall'] for t in runs]):,.0f} | "
                         f"{np.mean([t['rollout'] for t in runs]):.2f} | "
                         f"{np.mean([t['perf/update_seconds'] for t in runs]):.2f} | "
                         f"{', '.join(f'{v:,.0f}' for v in rollout)} |")
    if "ray, 1 worker" in scaling and "ray, 2 workers" in scaling:
        rates = {name: np.mean([t["batch"] / t["rollout"] for t in runs]) for name, runs in scaling.items()}
        ratio = rates["ray, 2 workers"] / rates["ray, 1 worker"]
        lines += ["", f"Rollout throughput, 2 workers against 1: {ratio:.2f}x on {os.cpu_count()} cores shared "
                  "with the learner and with other processes (load average below)."]
        lines += scaling_on_paper(scaling)
    lines += ["", f"Total benchmark time: {seconds:.0f} s. One-minute load average {load_before:.1f} before and "
              f"{load_after:.1f} after (above {os.cpu_count()}: other processes shared the cores)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
