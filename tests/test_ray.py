"""distributed=ray: rollout workers as Ray actors on a local Ray instance feed the learner; a killed worker is
replaced, its episodes in progress dropped and counted, and training goes on."""

import pytest
import ray
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import train_config
from vla.trainer import Trainer

RAY_RUN = ["distributed=ray", "distributed.num_workers=2", "num_envs=4", "algo.num_steps=32",
           "algo.num_minibatches=4", "algo.update_epochs=2", "total_env_steps=512", "progress=false",
           "eval.episodes=2", "eval.video_episodes=0", "torch_threads=1"]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="warning")
    yield
    ray.shutdown()


def test_two_workers_train_and_log(tmp_path, local_ray):
    trainer = Trainer(train_config(*RAY_RUN), tmp_path / "run")
    history = trainer.train()
    assert len(history) == 4 and trainer.global_step == 512
    # Reacher episodes are 50 steps: 4 envs x 128 steps finish 8 episodes, all reaching the learner.
    assert sum(m.get("train/episodes", 0.0) for m in history) == 8
    assert trainer.model.state_rms.count > 500  # the learner's normalizer saw the workers' states
    events = EventAccumulator(str(tmp_path / "run" / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    expected = {"losses/policy", "losses/approx_kl", "train/success_rate", "train/episode_return", "perf/sps",
                "perf/env_seconds", "perf/rollout_seconds", "reliability/worker_replacements",
                "reliability/dropped_episodes", "eval/success_rate"}
    assert expected <= tags, expected - tags
    assert [e.step for e in events.Scalars("losses/policy")] == [128, 256, 384, 512]
    assert (tmp_path / "run" / "checkpoints" / "latest").read_text().strip() == "update_000004"


def test_killed_worker_is_replaced_and_counted(tmp_path, local_ray):
    trainer = Trainer(train_config(*RAY_RUN, "eval.at_end=false"), tmp_path / "run")
    first = trainer.train_one_update()
    assert first["reliability/worker_replacements"] == 0.0
    ray.kill(trainer.rollouts.workers[1])
    history = trainer.train()  # continues with the remaining three updates
    assert len(history) == 3 and trainer.global_step == 512
    assert history[0]["reliability/worker_replacements"] == 1.0
    assert history[0]["reliability/dropped_episodes"] == 2.0  # the dead worker's two envs
    assert history[-1]["reliability/worker_replacements"] == 1.0
    assert all(m["losses/policy"] == m["losses/policy"] for m in history)  # real updates, not NaN


def test_privileged_critic_and_action_chunks_on_workers(tmp_path, local_ray):
    trainer = Trainer(train_config(*RAY_RUN, "env=tabletop_reach", "env.use_camera=false", "env.vector_mode=sync",
                                   "env.privileged_obs=true", "critic.privileged=true",
                                   "policy=gaussian_transformer", "policy.width=32", "policy.feedforward_size=64",
                                   "policy.chunk_size=2"), tmp_path / "run")
    trainer.train()
    assert trainer.model.privileged_rms.count > 200  # the learner's normalizer saw the workers' privileged state
    assert trainer.storage.data["env_steps"].max() == 2  # chunks ran on the workers
    assert 0 < trainer.global_step <= 512
