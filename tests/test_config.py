"""Config validation: wrong keys, wrong types and unknown names fail at launch with a clear message."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from tests.conftest import REPO, run_cli, train_config


def test_default_config_composes_with_typed_groups():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose("config")  # what a bare `vla-train` runs (train_config() would pick Reacher for tests)
    assert cfg.env.kind == "tabletop" and cfg.env.task == "reach" and cfg.env.privileged_state
    assert cfg.algo.name == "ppo" and cfg.backbone.name == "state"
    assert train_config().env.kind == "gym"


@pytest.mark.parametrize("override", ["algo.gamma=often", "num_envs=two", "env.success_threshold=[1]"])
def test_wrong_type_fails_at_compose(override):
    with pytest.raises(ConfigCompositionException):
        train_config(override)


@pytest.mark.parametrize("override", ["algo.gamme=0.9", "env.idd=x", "checkpoint.every=3", "nonsense=1"])
def test_unknown_key_fails_at_compose(override):
    with pytest.raises(ConfigCompositionException):
        train_config(override)


def test_unknown_group_option_fails():
    with pytest.raises(Exception, match="backbone"):
        train_config("backbone=does_not_exist")


def test_cli_reports_config_errors_without_writing_a_run(tmp_path):
    result = run_cli("vla-train", "algo.gamme=0.9", cwd=tmp_path, timeout=120)
    assert result.returncode != 0
    assert "gamme" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_unknown_env_id_is_a_clear_error(tmp_path):
    result = run_cli("vla-train", "env=reacher", "env.id=NoSuchEnv-v0", "progress=false", cwd=tmp_path,
                     timeout=120)
    assert result.returncode == 2
    assert "env.id='NoSuchEnv-v0'" in result.stderr and "Traceback" not in result.stderr


def test_config_files_are_where_the_cli_looks():
    assert (REPO / "conf" / "config.yaml").is_file() and (REPO / "conf" / "eval.yaml").is_file()
