"""Bad input is refused at the door: a clear one-line message naming the problem, exit status 2 from the console
scripts (``UserError``), and nothing written over."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import tests.bad_envs  # noqa: F401  (registers the dict_gym env kind and the bad env ids)
from envs import make_env
from envs.contract import EnvContract, EnvContractError
from tests.conftest import REPO, run_cli, train_config
from vla import checkpoint as ckpt
from vla.trainer import Trainer

TINY = ["num_envs=2", "algo.num_steps=32", "algo.num_minibatches=4", "algo.update_epochs=2",
        "total_env_steps=256", "progress=false", "eval.episodes=0", "torch_threads=1",
        "checkpoint.every_updates=1", "checkpoint.keep=10"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A finished tiny Reacher run with checkpoints update_000001 .. update_000004 (tests copy it to change it)."""
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    Trainer(train_config(*TINY), run_dir).train()
    return run_dir


def _copy(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def _nothing_written(run_dir):
    """Hydra records the composed config in .hydra/ before the app runs; the app itself must write nothing."""
    return not (run_dir / "checkpoints").exists() and not (run_dir / "tb").exists()


# ----------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("override, named", [
    ("algo.clip_coeff=0.1", "clip_coeff"),  # unknown key
    ("num_envs=two", "num_envs"),  # wrong type
    ("backbone=vit_huge", "vit_huge"),  # unknown backbone
    ("policy=diffusion", "diffusion"),  # unknown policy
    ("env=mars_rover", "mars_rover"),  # unknown env
])
def test_cli_refuses_a_config_that_does_not_compose_before_writing_anything(tmp_path, override, named):
    result = run_cli("vla-train", override, cwd=tmp_path, timeout=120)
    # hydra reports composition errors itself, with exit status 1 (vla.cli's UserErrors exit with 2).
    assert result.returncode != 0
    assert named in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_refuses_an_unknown_component_name_with_status_2(tmp_path):
    result = run_cli("vla-train", "policy.name=diffusion", "progress=false", f"hydra.run.dir={tmp_path / 'run'}",
                     cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "policy.name='diffusion' is not a known action expert" in result.stderr
    assert "Traceback" not in result.stderr and _nothing_written(tmp_path / "run")


@pytest.mark.parametrize("override, message", [
    ("backbone.name=vit", "backbone.name='vit' is not a known backbone"),
    ("critic.name=oracle", "critic.name='oracle' is not a known value head"),
    ("env.kind=mars", "env.kind='mars' is not registered"),
    ("algo.init_action_std=0.1", "algo.init_action_std=0.1 sets the std of a policy loaded with init_from="),
])
def test_unknown_names_and_misplaced_settings_are_config_errors(tmp_path, override, message):
    from vla.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        Trainer(train_config(*TINY, override), tmp_path / "run")
    assert _nothing_written(tmp_path / "run")


# ------------------------------------------------------------------------------------------- checkpoints
def test_cli_refuses_a_missing_checkpoint_with_status_2(tmp_path):
    result = run_cli("vla-train", f"resume={tmp_path / 'no_such_run'}", "progress=false",
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "no_such_run does not exist" in result.stderr and "Traceback" not in result.stderr
    assert _nothing_written(tmp_path / "run") and not (tmp_path / "no_such_run").exists()


def test_truncated_checkpoint_is_refused_and_resume_uses_the_previous_intact_one(trained_run, tmp_path):
    run_dir = _copy(trained_run, tmp_path)
    newest = run_dir / "checkpoints" / "update_000004"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a torn write
    with pytest.raises(ckpt.CheckpointError, match="does not match its checksum"):
        ckpt.load_checkpoint(newest)  # named explicitly: refused, never swapped for another
    trainer = Trainer(train_config(*TINY, f"resume={run_dir}"), tmp_path / "ignored")
    try:
        assert trainer.update_index == 3 and trainer.global_step == 3 * 64
    finally:
        trainer.close()
    assert len(weights.read_bytes()) == 100  # the broken file is left for inspection, not overwritten


@pytest.mark.parametrize("override, difference", [
    ("backbone.mode=mlp", "'mode': 'identity'"),  # another backbone: the message shows both identities
    ("env=pusher", "action size 2 vs 7"),  # another action space
])
def test_checkpoint_for_another_backbone_or_action_space_is_refused(trained_run, tmp_path, override, difference):
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model") as info:
        Trainer(train_config(*TINY, override, f"resume={trained_run}"), tmp_path / "run")
    assert difference in str(info.value)
    assert (trained_run / "checkpoints" / "latest").read_text().strip() == "update_000004"


def test_refused_resume_names_the_command_the_run_was_launched_with(trained_run, tmp_path):
    run_dir = _copy(trained_run, tmp_path)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text("- env=reacher\n- policy.hidden_sizes=[64,64]\n- resume=old\n")
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model") as info:
        Trainer(train_config(*TINY, "env=pusher", f"resume={run_dir}"), tmp_path / "run")
    assert f"continue it with `vla-train env=reacher 'policy.hidden_sizes=[64,64]' resume={run_dir}`" \
        in str(info.value)


# ---------------------------------------------------------------------------------------- env contract
def _camera_env(**kwargs):
    inline = ", ".join(f"{key}: {value}" for key, value in kwargs.items())
    cfg = train_config("env.kind=dict_gym", "env.id=tests.bad_envs:CameraEnv-v0", f"+env.kwargs={{{inline}}}")
    return make_env(cfg.env)


def test_a_custom_env_that_keeps_the_contract_passes():
    env = _camera_env()
    obs, _ = env.reset(seed=0)
    env.step(np.zeros(2, dtype=np.float32))
    assert obs["image"].shape == (16, 16, 3) and obs["instruction"] == "reach the red cube"


@pytest.mark.parametrize("kwargs, message", [
    ({"image_shape": [8, 8, 3]}, r"'image' as an array of shape \(8, 8, 3\) and dtype uint8; its observation "
                                 r"space declares shape \(16, 16, 3\) and dtype uint8"),
    ({"image_shape": [16, 16, 4]}, r"shape \(16, 16, 4\)"),
    ({"image_dtype": "float32"}, r"'image' as an array of shape \(16, 16, 3\) and dtype float32"),
    ({"instruction": 7}, "'instruction' as 7 of type int; it must be a str"),
    ({"leave_out": "image"}, r"returned observation keys \['instruction', 'state'\]; its observation space "
                             r"declares \['image', 'instruction', 'state'\]"),
    ({"report_success": False}, r"returned info without 'success'"),
])
def test_camera_env_breaking_the_contract_is_refused(kwargs, message):
    env = _camera_env(**kwargs)
    with pytest.raises(EnvContractError, match=message) as info:
        env.reset(seed=0)
    assert "CameraEnv-v0" in str(info.value)


def test_cli_refuses_an_env_whose_state_has_the_wrong_size_with_status_2(tmp_path):
    # PYTHONPATH: gymnasium imports tests.bad_envs (for env.id) in the vla-train process.
    result = subprocess.run(
        [str(Path(sys.executable).parent / "vla-train"), "env=reacher", "env.id=tests.bad_envs:WrongStateSize-v0",
         "env.success=null", "progress=false", "torch_threads=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2, result.stderr[-2000:]
    assert ("vla-train: error: env 'WrongStateSize-v0' reset() returned observation 'state' as an array of shape "
            "(5,) and dtype float32; its observation space declares shape (4,) and dtype float32") in result.stderr
    assert "Traceback" not in result.stderr and _nothing_written(tmp_path / "run")


@pytest.mark.parametrize("size", [1, 3])  # 1 would silently broadcast through the action clipping
def test_actions_of_the_wrong_size_are_refused(size):
    env = make_env(train_config("env=reacher").env)
    env.reset(seed=0)
    with pytest.raises(EnvContractError, match=rf"action of shape \({size},\); its action space expects "
                                               r"shape \(2,\)"):
        env.step(np.zeros(size, dtype=np.float32))


def test_contract_checks_cost_under_5_percent_of_a_tabletop_step():
    """The checks run on every step of every env: measured against the cheapest tabletop step (state only)."""
    env = make_env(train_config("env=tabletop_reach", "env.use_camera=false", "env.privileged_state=true",
                                "env.max_episode_steps=100000").env)
    contract = env.env
    assert isinstance(contract, EnvContract)
    action = np.zeros(env.action_space.shape, dtype=np.float32)
    obs, info = env.reset(seed=0)

    def best_seconds_per_call(call, repeats=5, calls=300):
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            best = min(best, (time.perf_counter() - start) / calls)
        return best

    step = best_seconds_per_call(lambda: env.step(action))
    # What EnvContract adds to a step: the action's shape check and the observation/info checks.
    checks = best_seconds_per_call(lambda: (np.shape(action) == contract._action_shape,
                                            contract._check(obs, info, "step()")))
    assert checks < 0.05 * step, f"contract checks {checks * 1e6:.1f} us vs step {step * 1e6:.1f} us"
