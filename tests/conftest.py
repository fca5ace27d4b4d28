import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from vla.config import register_configs

os.environ.setdefault("MUJOCO_GL", "egl")
REPO = Path(__file__).resolve().parent.parent
register_configs()


def train_config(*overrides: str):
    """The composed ``vla-train`` config, as hydra builds it from the command line. Without an ``env=``
    override the env is Reacher-v5 (the fastest env, what most unit tests step), not the default experiment's."""
    if not any(o.startswith(("env=", "experiment=")) for o in overrides):
        overrides = ("env=reacher", *overrides)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return compose("config", overrides=list(overrides))


def run_cli(script: str, *args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a console script of the installed project the way a user would."""
    exe = Path(sys.executable).parent / script
    return subprocess.run([str(exe), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def load_experiment(name: str):
    """A script of ``experiments/`` (not a package) as a module, to test its functions. As when it runs as a
    script, ``experiments/`` is on sys.path while it loads, so it can import its neighbours."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    sys.path.insert(0, str(REPO / "experiments"))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(REPO / "experiments"))
    return module


@pytest.fixture
def small_train_overrides():
    """A few tiny PPO updates on Reacher: fast enough for unit tests."""
    return ["num_envs=2", "algo.num_steps=32", "algo.num_minibatches=4", "algo.update_epochs=2",
            "total_env_steps=256", "progress=false", "eval.episodes=0", "torch_threads=1"]
