"""Learning regression guard: a short PPO run on a fast task must beat a random policy by a fixed margin.

Tabletop reach from privileged state (the named object's position in the state vector): a change that breaks
PPO, the normalizers, GAE or the env's reward turns this red. About 1-2 minutes on 2 cores.
"""

import numpy as np

from envs import make_vector_env
from tests.conftest import train_config
from vla.trainer import Trainer

MARGIN = 0.4  # evaluation success rate must exceed the random policy's by this much (absolute)
ENV = ["env=tabletop_reach", "env.use_camera=false", "env.privileged_state=true", "env.vector_mode=sync"]


def random_policy_success_rate(env_cfg, episodes: int, seed: int) -> float:
    envs = make_vector_env(env_cfg, 1, autoreset=False)
    successes = []
    for episode in range(episodes):
        envs.reset(seed=seed + episode)
        envs.action_space.seed(seed + episode)
        done, success = False, False
        while not done:
            _, _, terminated, truncated, info = envs.step(envs.action_space.sample())
            done, success = bool(terminated[0] or truncated[0]), bool(info["success"][0])
        successes.append(success)
    envs.close()
    return float(np.mean(successes))


def test_short_ppo_run_beats_random_policy_by_a_clear_margin(tmp_path):
    cfg = train_config(*ENV, "total_env_steps=65536", "eval.episodes=50", "eval.video_episodes=0",
                       "progress=false", "torch_threads=1", "seed=0")
    trainer = Trainer(cfg, tmp_path)
    trainer.train()
    trained = trainer.final_report["success_rate"]
    random = random_policy_success_rate(cfg.env, episodes=50, seed=cfg.eval.seed)
    assert trained >= random + MARGIN, f"trained {trained:.2f} vs random {random:.2f}"
