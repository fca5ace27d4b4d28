"""Console scripts ``vla-train``, ``vla-eval`` and ``vla-demos`` (hydra apps on ``conf/``)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vla.config import register_configs
from vla.errors import UserError

os.environ.setdefault("MUJOCO_GL", "egl")
register_configs()
CONFIG_PATH = str(Path(__file__).resolve().parent.parent / "conf")


def _eval_dir(checkpoint: str) -> str:
    """Where ``vla-eval`` writes: ``<run>/eval/<checkpoint>-<time>`` for a checkpoint inside a run."""
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    path = Path(str(checkpoint)).expanduser()
    run_dir = path if (path / "checkpoints").is_dir() else path.parent.parent
    if (run_dir / "checkpoints").is_dir():
        name = "latest" if path == run_dir else path.name
        return str(run_dir / "eval" / f"{name}-{stamp}")
    return str(Path("runs") / "eval" / stamp)


OmegaConf.register_new_resolver("eval_dir", _eval_dir, replace=True)


def _fail(prog: str, error: UserError) -> None:
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    sys.exit(2)


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="config")
def _train(cfg: DictConfig) -> Optional[float]:
    from vla.trainer import Trainer

    try:
        if cfg.algo.name == "bc":
            from vla.bc import BCTrainer

            trainer = BCTrainer(cfg, Path(HydraConfig.get().runtime.output_dir))
        else:
            trainer = Trainer(cfg, Path(HydraConfig.get().runtime.output_dir))
        trainer.train()
    except UserError as error:
        _fail("vla-train", error)
    report = trainer.final_report
    if report is not None:
        print(f"final evaluation: success rate {report['success_rate']:.1%} over {report['episodes']} episodes, "
              f"episode length {report['episode_length_mean']:.1f}, return {report['episode_return_mean']:.2f} "
              f"-> {trainer.run_dir / 'eval' / 'final'}", flush=True)
    print(f"run directory: {trainer.run_dir}  (tensorboard --logdir {trainer.run_dir / 'tb'})", flush=True)
    return None if report is None else report["success_rate"]


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="eval")
def _eval(cfg: DictConfig) -> float:
    from vla.evaluate import evaluate_policy, load_ensemble
    from vla.trainer import resolve_device, set_torch_threads

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        set_torch_threads(cfg.torch_threads)
        model, train_cfg, identity = load_ensemble(cfg.checkpoint, list(cfg.ensemble), resolve_device(cfg.device),
                                                   cfg.env, cfg.deterministic)
        env_cfg = cfg.env if cfg.env is not None else train_cfg.env
        config = {"eval": OmegaConf.to_container(cfg, resolve=True), "train": OmegaConf.to_container(train_cfg)}
        config["eval"]["env"] = OmegaConf.to_container(env_cfg, resolve=True)
        report = evaluate_policy(model, env_cfg, out_dir, episodes=cfg.episodes, seed=cfg.seed,
                                 num_envs=cfg.num_envs, deterministic=cfg.deterministic, checkpoint=identity,
                                 config=config, record=cfg.video_episodes if cfg.video else 0, fps=cfg.video_fps,
                                 progress=cfg.progress, heldout=cfg.heldout)
    except UserError as error:
        _fail("vla-eval", error)
    path = out_dir / "report.json"
    low, high = report["success_ci95"]
    print(f"success rate {report['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%}) over {report['episodes']} "
          f"episodes; episode length {report['episode_length_mean']:.1f}; report: {path}", flush=True)
    if report["reached_success_rate"] != report["success_rate"]:
        low, high = report["reached_success_ci95"]
        print(f"success reached at some step (not held to the end in every episode): "
              f"{report['reached_success_rate']:.1%} (95% CI {low:.1%}-{high:.1%})", flush=True)
    if "heldout" in report:
        heldout = report["heldout"]
        low, high = heldout["success_ci95"]
        print(f"held-out split: success rate {heldout['success_rate']:.1%} (95% CI {low:.1%}-{high:.1%}); "
              f"episode length {heldout['episode_length_mean']:.1f}", flush=True)
    return report["success_rate"]


@hydra.main(version_base=None, config_path=CONFIG_PATH, config_name="demos")
def _demos(cfg: DictConfig) -> None:
    from vla.demos import record_demos

    path = Path(cfg.output) if cfg.output else Path(HydraConfig.get().runtime.output_dir) / "demos.hdf5"
    try:
        summary = record_demos(cfg, path)
    except UserError as error:
        _fail("vla-demos", error)
    if summary["demos"] < cfg.episodes:
        print(f"vla-demos: warning: only {summary['demos']} of {cfg.episodes} episodes succeeded in "
              f"{summary['attempts']} attempts (raise max_attempts for more)", file=sys.stderr, flush=True)
    print(f"wrote {summary['demos']} demonstrations ({summary['samples']} steps, {summary['attempts']} attempts, "
          f"{summary['successes']} successful) to {summary['path']}", flush=True)


def train_main() -> None:
    _train()


def eval_main() -> None:
    _eval()


def demos_main() -> None:
    _demos()
