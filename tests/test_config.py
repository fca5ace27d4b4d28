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


def test_complete_saved_config_fills_fields_added_since_a_checkpoint_was_written():
    """A checkpoint written before backbone.dtype existed could not be evaluated: rebuilding its model failed
    on the missing key. Saved values win, defaults fill the gaps, retired fields stay."""
    from omegaconf import OmegaConf

    from vla.config import complete_saved_config

    cfg = train_config("env=tabletop_reach", "backbone=towers", "backbone.hidden_size=32", "algo.init_action_std=0.2")
    saved = OmegaConf.create(OmegaConf.to_yaml(cfg))
    del saved.backbone["dtype"]
    del saved.algo["init_action_std"]
    del saved.env["split"]  # a tabletop checkpoint from before env.split: its report's split is "all"
    saved.policy["retired_field"] = 1
    completed = complete_saved_config(saved)
    assert completed.backbone.dtype == "float32" and completed.algo.init_action_std is None
    assert completed.backbone.hidden_size == 32 and completed.policy.retired_field == 1
    assert completed.env.split == "all"
    assert completed.env == cfg.env and completed.critic == cfg.critic


@pytest.mark.parametrize("preset", sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*.yaml")))
def test_every_experiment_preset_composes_into_its_schemas(preset):
    """`vla-train experiment=<name>` for every shipped preset: hydra composes it and every value fits the field
    types of the structured configs (a renamed or mistyped key fails here, not an hour into a run)."""
    from omegaconf import OmegaConf

    cfg = train_config(f"experiment={preset}")
    OmegaConf.to_object(cfg)
    assert cfg.total_env_steps > 0
