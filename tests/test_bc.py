"""Behaviour cloning and RL from its result: the loss falls, ``vla-train algo=bc`` writes checkpoints that
``vla-eval`` and ``init_from`` load, ``init_from`` refuses a checkpoint that does not fit, the KL term toward
the initial policy starts at 0, and the critic warm-up leaves the actor bit-identical."""

import json
import signal

import h5py
import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import run_cli, train_config
from tests.test_backbones import ImageInstructionEnv, actor_critic, collect, ppo_config
from tests.test_demos import demos_config
from vla import checkpoint as ckpt
from vla.bc import BCTrainer, demo_samples
from envs import make_env
from vla.demos import Demo, DemoDataset, DatasetError, read_dataset, record_demos
from vla.errors import ConfigError
from vla.evaluate import load_ensemble, load_policy
from vla.ppo import PPO, compute_gae, frozen_copy
from vla.trainer import Trainer

# Tabletop reach from its state with the target's position in it (the state backbone reads nothing else).
REACH = ["env=tabletop_reach", "env.use_camera=false", "env.privileged_state=true"]
BC_RUN = [*REACH, "algo=bc", "algo.gradient_steps=40", "algo.steps_per_update=20", "num_envs=2", "eval.episodes=2",
      "eval.video_episodes=0", "progress=false", "torch_threads=1"]
PPO_RUN = ["num_envs=2", "algo.num_steps=16", "algo.num_minibatches=2", "algo.update_epochs=1",
       "total_env_steps=64", "eval.episodes=2", "eval.video_episodes=0", "progress=false", "torch_threads=1"]


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    path = tmp_path_factory.mktemp("demos") / "reach.hdf5"
    record_demos(demos_config(*REACH, "episodes=6", "valid_fraction=0.34", "progress=false"), path)
    return path


def fit_fixed_batch(trainer: BCTrainer, batch: torch.Tensor, steps: int) -> list:
    """The BC loss of ``steps`` optimizer steps on the same training samples."""
    losses = []
    for _ in range(steps):
        nll, _, _ = trainer.losses(trainer.train_data, batch)
        trainer.optimizer.zero_grad()
        nll.backward()
        trainer.optimizer.step()
        losses.append(nll.item())
    return losses


def test_bc_loss_falls_on_a_fixed_batch_with_cached_tower_features_and_action_chunks(tmp_path):
    path = tmp_path / "push.hdf5"
    record_demos(demos_config("env=tabletop_push", "episodes=2", "valid_fraction=0", "progress=false"), path)
    cfg = train_config("env=tabletop_push", "algo=bc", f"dataset={path}", "backbone=towers",
                       "backbone.hidden_size=32", "policy=gaussian_transformer", "policy.width=32",
                       "policy.feedforward_size=64", "policy.chunk_size=2", "algo.learning_rate=3e-3",
                       "progress=false")
    trainer = BCTrainer(cfg, tmp_path / "run")
    inputs = trainer.train_data["inputs"]
    assert any(key.startswith("frozen/") for key in inputs) and "image" not in inputs  # computed once, cached
    assert trainer.train_data["actions"].shape[1] == 8 and trainer.train_data["mask"][-1].tolist() == [1] * 4 + [0] * 4
    losses = fit_fixed_batch(trainer, torch.arange(16), steps=60)
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 3.0, losses[::10]
    trainer.logger.close()


def test_bc_fine_tunes_the_image_tower_from_the_frames_themselves(tmp_path):
    """With backbone.train_image_tower=true nothing is cached: BC keeps the frames and trains the tower."""
    path = tmp_path / "push.hdf5"
    record_demos(demos_config("env=tabletop_push", "episodes=1", "valid_fraction=0", "progress=false"), path)
    cfg = train_config("env=tabletop_push", "algo=bc", f"dataset={path}", "backbone=towers",
                       "backbone.hidden_size=16", "backbone.train_image_tower=true", "policy=gaussian_mlp",
                       "algo.learning_rate=3e-3", "progress=false")
    trainer = BCTrainer(cfg, tmp_path / "run")
    inputs = trainer.train_data["inputs"]
    assert not any(key.startswith("frozen/") for key in inputs) and inputs["image"].dtype == torch.uint8
    tower = trainer.model.backbone.towers["image"]
    before = [p.detach().clone() for p in tower.parameters()]
    losses = fit_fixed_batch(trainer, torch.arange(8), steps=30)
    assert np.isfinite(losses).all() and losses[-1] < losses[0] - 1.0, losses[::5]
    assert all(not torch.equal(p, q) for p, q in zip(tower.parameters(), before))
    trainer.logger.close()


def test_a_frozen_tower_clone_starts_a_clone_that_fine_tunes_the_tower_at_its_own_learning_rate(tmp_path):
    """init_from a frozen-tower clone into backbone.train_image_tower=true: the heads come from the clone, the
    tower from the package; algo.image_tower_learning_rate gives the tower its own rate, annealed with the
    rest. Refused: the reverse (the tuned tower is not the package's), the rate with nothing to tune, and
    resuming with the rate set where the run had none (or the reverse)."""
    path = tmp_path / "push.hdf5"
    record_demos(demos_config("env=tabletop_push", "episodes=1", "valid_fraction=0", "progress=false"), path)
    common = ["env=tabletop_push", "algo=bc", f"dataset={path}", "backbone=towers", "backbone.hidden_size=16",
              "policy=gaussian_mlp", "algo.steps_per_update=5", "algo.gradient_steps=10", "progress=false"]
    frozen = BCTrainer(train_config(*common), tmp_path / "frozen")
    frozen.train_one_update()
    clone = frozen.save()
    frozen.logger.close()
    tuned = BCTrainer(train_config(*common, "backbone.train_image_tower=true", f"init_from={clone}",
                                   "algo.learning_rate=2e-3", "algo.image_tower_learning_rate=1e-4"),
                      tmp_path / "tuned")
    for name, weight in frozen.model.expert.state_dict().items():
        assert torch.equal(tuned.model.expert.state_dict()[name], weight), name
    package_tower = frozen.model.backbone.towers["image"].state_dict()
    assert all(torch.equal(weight, package_tower[name])
               for name, weight in tuned.model.backbone.towers["image"].state_dict().items())
    tower_ids = {id(p) for p in tuned.model.backbone.towers["image"].parameters()}
    groups = tuned.optimizer.param_groups
    assert [group["lr"] for group in groups] == [2e-3, 1e-4]
    assert {id(p) for p in groups[1]["params"]} == tower_ids and not tower_ids & {id(p) for p in groups[0]["params"]}
    tuned.train_one_update()  # 5 of 10 steps: both rates annealed alike
    assert groups[0]["lr"] == pytest.approx(2e-3 * 0.6) and groups[1]["lr"] == pytest.approx(1e-4 * 0.6)
    assert not all(torch.equal(weight, package_tower[name])
                   for name, weight in tuned.model.backbone.towers["image"].state_dict().items())
    tuned_clone = tuned.save()
    tuned.logger.close()
    with pytest.raises(ConfigError, match="algo.image_tower_learning_rate was set in one and not the other"):
        BCTrainer(train_config(*common, "backbone.train_image_tower=true", f"resume={tmp_path / 'tuned'}"),
                  tmp_path / "tuned")
    with pytest.raises(ckpt.CheckpointError, match="image_tower_trained"):
        BCTrainer(train_config(*common, f"init_from={tuned_clone}"), tmp_path / "back")
    with pytest.raises(ConfigError, match="backbone.train_image_tower=true"):
        BCTrainer(train_config(*common, "algo.image_tower_learning_rate=1e-4"), tmp_path / "nothing")


def test_bc_trains_the_auxiliary_privileged_head_beside_the_nll_and_ppo_from_it_may_leave_it_out(tmp_path):
    path = tmp_path / "push.hdf5"
    record_demos(demos_config("env=tabletop_push", "env.privileged_obs=true", "episodes=2", "valid_fraction=0",
                              "progress=false"), path)
    model = ["env=tabletop_push", "env.privileged_obs=true", "backbone=towers", "backbone.hidden_size=32",
             "backbone.grounding_heads=2", "algo.privileged_aux_source=first_token"]
    cfg = train_config(*model, "algo=bc", f"dataset={path}", "algo.privileged_aux_coef=1.0",
                       "algo.learning_rate=3e-3", "algo.steps_per_update=25", "progress=false")
    trainer = BCTrainer(cfg, tmp_path / "run")
    assert "privileged" in trainer.train_data["inputs"]  # the demos' object and zone positions, normalized
    head = trainer.model.privileged_aux
    assert any(p is head.weight for p in trainer.model.actor_parameters())  # the optimizer trains it
    before = head.weight.detach().clone()
    metrics = trainer.train_one_update()
    assert metrics["losses/privileged_aux"] > 0 and not torch.equal(head.weight, before)
    batch = torch.arange(16)
    trainer.losses(trainer.train_data, batch)
    first = trainer.model.aux_loss.item()
    for _ in range(3):
        trainer.train_one_update()
    trainer.losses(trainer.train_data, batch)
    assert trainer.model.aux_loss.item() < 0.5 * first
    clone = trainer.save()
    trainer.logger.close()
    # PPO from the clone without the auxiliary loss starts from the same policy without the head; with the
    # loss, it loads the head too.
    for coef, has_head in (("0", False), ("0.1", True)):
        ppo = Trainer(train_config(*model, *PPO_RUN, "env.vector_mode=sync", f"algo.privileged_aux_coef={coef}",
                                   f"init_from={clone}"), tmp_path / f"ppo{coef}")
        for name, weight in trainer.model.expert.state_dict().items():
            assert torch.equal(ppo.model.expert.state_dict()[name], weight), name
        assert (ppo.model.privileged_aux is not None) == has_head
        if has_head:
            assert torch.equal(ppo.model.privileged_aux.weight, head.weight)
        ppo.close()


def test_action_chunk_targets_are_the_next_actions_masked_past_the_demo_end():
    actions = np.arange(8, dtype=np.float32).reshape(4, 2)  # 4 steps of 2-d actions
    demo = Demo(obs={"state": np.zeros((4, 3), np.float32)}, actions=actions, rewards=np.zeros(4),
                dones=np.array([0, 0, 0, 1]), instruction="go", success=True, seed=0)
    samples = demo_samples(DemoDataset({}, {"demo_0": demo}, ["demo_0"], []), ["demo_0"],
                           ["state", "instruction"], chunk=3)
    assert samples["actions"][0].tolist() == [0, 1, 2, 3, 4, 5]
    assert samples["actions"][3].tolist() == [6, 7, 0, 0, 0, 0]
    assert samples["mask"][2].tolist() == [1, 1, 1, 1, 0, 0] and samples["obs"]["instruction"] == ["go"] * 4


def test_bc_through_the_console_scripts_then_eval_then_ppo_from_it(demos, tmp_path):
    bc_run = tmp_path / "bc"
    result = run_cli("vla-train", *BC_RUN, f"dataset={demos}", f"hydra.run.dir={bc_run}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    events = EventAccumulator(str(bc_run / "tb"))
    events.Reload()
    assert {"losses/bc_nll", "losses/bc_valid_nll", "eval/success_rate"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("losses/bc_nll")] == [20, 40]
    assert (bc_run / "checkpoints" / "latest").read_text().strip() == "update_000002"
    state = json.loads((bc_run / "checkpoints" / "update_000002" / "state.json").read_text())
    assert state["algo"] == "bc" and state["global_step"] == 40
    weights = ckpt.load_checkpoint(bc_run)["weights"]
    assert float(weights["state_rms.count"]) > 10  # statistics of the training demos' states
    bc_report = json.loads((bc_run / "eval" / "final" / "report.json").read_text())

    result = run_cli("vla-eval", f"checkpoint={bc_run}", "episodes=2", "num_envs=2", "progress=false",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (eval_dir,) = (bc_run / "eval").glob("latest-*")
    report = json.loads((eval_dir / "report.json").read_text())
    assert report["episode_rows"] == bc_report["episode_rows"]  # the same policy on the same seeds

    # PPO from the BC checkpoint, actor held still throughout: its evaluation is the cloned policy's own,
    # so the weights and the (fixed) state normalizer came along; init_action_std changed the std only.
    ppo_run = tmp_path / "ppo"
    result = run_cli("vla-train", *REACH, *PPO_RUN, f"init_from={bc_run}", "algo.critic_warmup_updates=2",
                     "algo.init_kl_coef=0.1", "algo.init_action_std=0.1", f"hydra.run.dir={ppo_run}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "initialized from" in result.stdout and "(algo bc, step 40)" in result.stdout
    ppo_report = json.loads((ppo_run / "eval" / "final" / "report.json").read_text())
    assert ppo_report["episode_rows"] == bc_report["episode_rows"]
    events = EventAccumulator(str(ppo_run / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("losses/policy")] == [32, 64]  # a fresh run: counters from 0
    assert [e.value for e in events.Scalars("losses/init_kl")] == [0.0, 0.0]
    assert [e.value for e in events.Scalars("policy/action_std")] == pytest.approx([0.1, 0.1])
    assert json.loads((ppo_run / "checkpoints" / "update_000002" / "state.json").read_text())["algo"] == "ppo"


@pytest.fixture(scope="module")
def bc_checkpoint(demos, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bc") / "run"
    BCTrainer(train_config(*BC_RUN, f"dataset={demos}", "eval.episodes=0"), run_dir).train()
    return run_dir


@pytest.mark.parametrize("overrides, difference", [
    ([*REACH, "backbone.mode=mlp"], "'mode': 'identity'"),  # another backbone: the message shows both identities
    ([*REACH, "env.privileged_state=false"], "state size 13 vs 7"),  # another state size
    (["env=reacher"], "action size 4 vs 2"),  # another action space
])
def test_init_from_refuses_a_checkpoint_of_another_backbone_or_action_space(bc_checkpoint, tmp_path, overrides,
                                                                            difference):
    cfg = train_config(*overrides, *PPO_RUN, "env.vector_mode=sync", f"init_from={bc_checkpoint}")
    with pytest.raises(ckpt.CheckpointError, match="does not fit this model") as info:
        Trainer(cfg, tmp_path / "run")
    assert difference in str(info.value)


def test_bc_checkpoints_are_not_resumed_as_ppo_and_demos_must_fit_the_env(bc_checkpoint, demos, tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="written by algo=bc.*init_from="):
        Trainer(train_config(*REACH, *PPO_RUN, f"resume={bc_checkpoint}"), tmp_path / "r")
    with pytest.raises(ckpt.CheckpointError, match="trained with algo.norm_state=true"):
        Trainer(train_config(*REACH, *PPO_RUN, "env.vector_mode=sync", "algo.norm_state=false",
                             f"init_from={bc_checkpoint}"), tmp_path / "r")
    with pytest.raises(DatasetError, match="observation 'image' missing") as info:
        BCTrainer(train_config(*BC_RUN, f"dataset={demos}", "env.use_camera=true"), tmp_path / "r")
    assert "recorded on env" in str(info.value)
    with pytest.raises(DatasetError, match="action size 4 vs 2"):
        BCTrainer(train_config(*BC_RUN[len(REACH):], f"dataset={demos}", "env=reacher"), tmp_path / "r")


def test_an_interrupted_bc_run_resumes_to_the_same_weights_and_refuses_other_demos_or_a_ppo_run(demos, tmp_path):
    # Minibatches of 12 of the 38 samples: the cut falls mid-epoch, so the sample order at the cut matters too.
    cfg = [*BC_RUN, "algo.batch_size=12", f"dataset={demos}", "eval.every_updates=1"]
    whole = BCTrainer(train_config(*cfg), tmp_path / "whole")
    whole.train()
    interrupted = BCTrainer(train_config(*cfg), tmp_path / "cut")
    first_update = interrupted.train_one_update

    def stop_after_the_first_update():
        metrics = first_update()
        interrupted.stop_signal = signal.SIGTERM  # what the handler does on SIGTERM
        return metrics

    interrupted.train_one_update = stop_after_the_first_update
    interrupted.train()
    assert interrupted.global_step == 20 and not (tmp_path / "cut" / "eval" / "final").exists()
    torch.manual_seed(12345)  # the resumed run must not depend on the RNGs left by whatever ran before it
    resumed = BCTrainer(train_config(*cfg, f"resume={tmp_path / 'cut'}"), tmp_path / "elsewhere")
    assert resumed.run_dir == tmp_path / "cut" and resumed.global_step == 20
    resumed.train()
    assert not (tmp_path / "elsewhere").exists()
    weights = {name: ckpt.load_checkpoint(tmp_path / name)["weights"] for name in ("whole", "cut")}
    assert weights["whole"].keys() == weights["cut"].keys()
    assert all(torch.equal(weights["whole"][key], weights["cut"][key]) for key in weights["whole"])
    assert whole.history[1]["losses/bc_nll"] == resumed.history[0]["losses/bc_nll"]
    assert resumed.best_eval["success_rate"] == whole.best_eval["success_rate"]
    events = EventAccumulator(str(tmp_path / "cut" / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("losses/bc_nll")] == [20, 40]

    with pytest.raises(ConfigError, match="from a BC run on dataset=.*init_from="):
        BCTrainer(train_config(*cfg[:-2], f"dataset=[{demos},{demos}]", f"resume={tmp_path / 'cut'}"), tmp_path / "r")
    ppo_run = tmp_path / "ppo"
    Trainer(train_config(*REACH, *PPO_RUN, "env.vector_mode=sync"), ppo_run).train()
    with pytest.raises(ckpt.CheckpointError, match="written by algo=ppo; algo=bc resumes BC runs only"):
        BCTrainer(train_config(*cfg, f"resume={ppo_run}"), tmp_path / "r")


def test_a_dagger_round_labels_the_policys_own_states_with_the_expert_and_bc_trains_on_both(
        bc_checkpoint, demos, tmp_path):
    path = tmp_path / "dagger.hdf5"
    summary = record_demos(demos_config(*REACH, f"checkpoint={bc_checkpoint}", "episodes=4", "num_envs=2",
                                        "expert_mix=0.5", "valid_fraction=0.25", "progress=false"), path)
    assert summary["demos"] == summary["attempts"] == 4  # failures are kept: the policy's states are the point
    with h5py.File(path, "r") as f:
        policy = json.loads(f["data"].attrs["policy"])
    assert policy["expert_mix"] == 0.5 and policy["checkpoint"].startswith(str(bc_checkpoint))
    dataset = read_dataset(path)
    env = make_env(demos_config(*REACH).env, expert=True)
    expert_steps = steps = 0
    try:
        for demo in dataset.demos.values():
            # Replaying what ran gives the stored states, and in each the stored action is the expert's.
            obs, _ = env.reset(seed=demo.seed)
            for t in range(demo.num_samples):
                np.testing.assert_array_equal(obs["state"], demo.obs["state"][t])
                np.testing.assert_array_equal(env.get_wrapper_attr("expert_action")(), demo.actions[t])
                obs, reward, _, _, _ = env.step(demo.executed_actions[t])
                assert reward == demo.rewards[t]
            expert_steps += int((demo.executed_actions == demo.actions).all(-1).sum())
            steps += demo.num_samples
    finally:
        env.close()
    assert 0.2 * steps < expert_steps < 0.8 * steps  # about half the steps ran the expert's action

    # Without the mixture every executed action is the policy's mean action in the stored state.
    only_policy = read_dataset(record_demos(demos_config(*REACH, f"checkpoint={bc_checkpoint}", "episodes=1",
                                                         "progress=false"), tmp_path / "policy.hdf5")["path"])
    (demo,) = only_policy.demos.values()
    model, _, _ = load_policy(str(bc_checkpoint), torch.device("cpu"))
    with torch.no_grad():
        obs = model.to_tensors({"state": demo.obs["state"], "instruction": [demo.instruction] * demo.num_samples})
        mean = model.act(obs, deterministic=True).action.numpy()
    np.testing.assert_allclose(demo.executed_actions, mean, atol=1e-6)
    assert not np.allclose(demo.executed_actions, demo.actions)

    # BC on the demos and the round together.
    trainer = BCTrainer(train_config(*BC_RUN, f"dataset=[{demos},{path}]", "eval.episodes=0"), tmp_path / "bc")
    demos_train = sum(d.num_samples for name, d in read_dataset(demos).demos.items()
                      if name in read_dataset(demos).train)
    round_train = sum(dataset.demos[name].num_samples for name in dataset.train)
    assert trainer.num_samples == demos_train + round_train

    with pytest.raises(ConfigError, match="stage machines"):
        record_demos(demos_config("env=robosuite_lift_state", f"checkpoint={bc_checkpoint}"), tmp_path / "x.hdf5")
    assert not (tmp_path / "x.hdf5").exists()


def test_an_ensemble_acts_with_the_average_of_its_policies_mean_actions_in_eval_and_dagger(
        bc_checkpoint, demos, tmp_path):
    other = tmp_path / "seed1"
    BCTrainer(train_config(*BC_RUN, f"dataset={demos}", "eval.episodes=0", "seed=1"), other).train()
    device = torch.device("cpu")
    members = [load_policy(str(path), device)[0] for path in (bc_checkpoint, other)]
    ensemble, _, identity = load_ensemble(str(bc_checkpoint), [str(other)], device)
    assert [member["path"] for member in identity["ensemble"]] == [str(ckpt.load_checkpoint(other)["path"])]
    demo = next(iter(read_dataset(demos).demos.values()))
    obs = {"state": demo.obs["state"], "instruction": [demo.instruction] * demo.num_samples}
    means = [member.act(member.to_tensors(obs), deterministic=True).action for member in members]
    assert not torch.allclose(means[0], means[1])  # two seeds: two policies
    action = ensemble.act(ensemble.to_tensors(obs)).action
    torch.testing.assert_close(action, (means[0] + means[1]) / 2)

    # A DAgger round driven by the ensemble executes the averaged actions and names both members.
    path = record_demos(demos_config(*REACH, f"checkpoint={bc_checkpoint}", f"ensemble=[{other}]", "episodes=1",
                                     "progress=false"), tmp_path / "round.hdf5")["path"]
    with h5py.File(path, "r") as f:
        assert len(json.loads(f["data"].attrs["policy"])["ensemble"]) == 1
    (demo,) = read_dataset(path).demos.values()
    obs = {"state": demo.obs["state"], "instruction": [demo.instruction] * demo.num_samples}
    np.testing.assert_allclose(demo.executed_actions, ensemble.act(ensemble.to_tensors(obs)).action.numpy(),
                               atol=1e-6)

    # vla-eval: the report names the members.
    result = run_cli("vla-eval", f"checkpoint={bc_checkpoint}", f"ensemble=[{other}]", "episodes=2",
                     "num_envs=2", "progress=false", f"hydra.run.dir={tmp_path / 'eval'}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert len(report["checkpoint"]["ensemble"]) == 1 and report["episodes"] == 2

    with pytest.raises(ConfigError, match="average of its policies' mean actions"):
        record_demos(demos_config(*REACH, f"checkpoint={bc_checkpoint}", f"ensemble=[{other}]",
                                  "deterministic=false"), tmp_path / "x.hdf5")
    with pytest.raises(ConfigError, match="needs checkpoint="):
        record_demos(demos_config(*REACH, f"ensemble=[{other}]"), tmp_path / "x.hdf5")
    with pytest.raises(ConfigError, match="sampling"):
        ensemble.act(ensemble.to_tensors(obs), deterministic=False)


def gae(storage):
    data = storage.data
    return compute_gae(data["reward"], data["value"], data["terminated"], data["truncated"], data["final_value"],
                       torch.zeros(storage.num_envs), 0.99, 0.95)


@pytest.mark.parametrize("backbone", ["state", "towers"])
def test_init_kl_is_zero_at_the_first_minibatch_and_finite_after(backbone):
    env = ImageInstructionEnv(image_size=32)
    overrides = ["backbone=towers", "backbone.hidden_size=32"] if backbone == "towers" else []
    model = actor_critic(env, *overrides)
    reference = frozen_copy(model)
    if backbone == "towers":  # frozen tower weights are shared with the reference, not copied
        assert next(model.backbone.towers.parameters()) is next(reference.backbone.towers.parameters())
    storage, _ = collect(model, env, num_steps=4, num_envs=4)
    advantages, returns = gae(storage)
    ppo = PPO(ppo_config(update_epochs=1, num_minibatches=1, init_kl_coef=1.0), model, reference)
    first = ppo.update(storage, advantages, returns)
    assert first.init_kl == 0.0  # pi is pi_init until the first step
    second = ppo.update(storage, advantages, returns)
    assert np.isfinite(second.init_kl) and second.init_kl > 0.0
    assert all(not p.requires_grad for p in reference.parameters())


def test_critic_warmup_leaves_the_actor_bit_identical():
    env = ImageInstructionEnv(image_size=32)
    model = actor_critic(env, "backbone=state", "backbone.mode=mlp", "backbone.hidden_size=16")
    storage, _ = collect(model, env, num_steps=4, num_envs=4)
    actor_before = [p.detach().clone() for p in model.actor_parameters()]
    critic_before = [p.detach().clone() for p in model.critic_parameters()]
    PPO(ppo_config(), model).update(storage, *gae(storage), critic_only=True)
    assert all(torch.equal(a, b) for a, b in zip(model.actor_parameters(), actor_before))
    assert not all(torch.equal(a, b) for a, b in zip(model.critic_parameters(), critic_before))


def test_scene_views_train_only_the_auxiliary_loss_and_are_refused_alone_or_without_it(tmp_path):
    """dataset=[<demos>,<scenes>]: the scene views' frames join the auxiliary loss with their action targets
    masked out, and the NLL is a mean over the labelled samples alone."""
    push = ["env=tabletop_push", "env.use_camera=false", "env.privileged_obs=true", "progress=false"]
    demos = record_demos(demos_config(*push, "episodes=2", "valid_fraction=0"), tmp_path / "demos.hdf5")["path"]
    scenes = record_demos(demos_config(*push, "unlabelled=true", "env.max_episode_steps=6", "episodes=3",
                                       "valid_fraction=0"), tmp_path / "scenes.hdf5")["path"]
    run = [*push, "algo=bc", "algo.privileged_aux_coef=1.0", "algo.steps_per_update=5", "eval.episodes=0"]
    trainer = BCTrainer(train_config(*run, f"dataset=[{demos},{scenes}]"), tmp_path / "run")
    mask = trainer.train_data["mask"]
    num_demo_steps = sum(d.num_samples for d in read_dataset(demos).demos.values())
    assert trainer.num_samples == num_demo_steps + 18
    assert (mask[:num_demo_steps] == 1).all() and (mask[num_demo_steps:] == 0).all()
    # The NLL of a batch with scene views in it is the mean over its labelled samples only.
    labelled_only = torch.arange(4)
    with_scenes = torch.cat([labelled_only, torch.arange(num_demo_steps, num_demo_steps + 10)])
    nll_labelled, mse_labelled, _ = trainer.losses(trainer.train_data, labelled_only)
    nll_mixed, mse_mixed, _ = trainer.losses(trainer.train_data, with_scenes)
    assert nll_mixed.item() == pytest.approx(nll_labelled.item(), rel=1e-5)
    assert mse_mixed.item() == pytest.approx(mse_labelled.item(), rel=1e-5)
    nll_none, mse_none, _ = trainer.losses(trainer.train_data, torch.arange(num_demo_steps, num_demo_steps + 5))
    assert nll_none.item() == 0.0 and mse_none.item() == 0.0 and trainer.model.aux_loss.item() > 0
    assert np.isfinite(trainer.train_one_update()["losses/privileged_aux"])
    # Validation on held-out demos and scene views: the action losses over the demos' samples alone.
    trainer.valid_data = {key: ({k: v[with_scenes] for k, v in value.items()} if key == "inputs" else
                                value[with_scenes]) for key, value in trainer.train_data.items()}
    valid = trainer.validation()
    assert valid["losses/bc_valid_mse"] == pytest.approx(trainer.losses(trainer.train_data, labelled_only)[1].item(),
                                                         rel=1e-5)
    assert valid["losses/bc_valid_privileged_aux"] > 0
    trainer.logger.close()

    # algo.labelled_fraction: each minibatch draws that share from the labelled samples, the rest from the
    # scene views, each pool a fresh permutation every time it runs out.
    mixed = BCTrainer(train_config(*run, f"dataset=[{demos},{scenes}]", "algo.batch_size=8",
                                   "algo.labelled_fraction=0.25"), tmp_path / "run4")
    labelled = torch.zeros(mixed.num_samples, dtype=torch.bool)
    labelled[:num_demo_steps] = True
    seen = []
    for _ in range(9):  # two passes over the 18 scene-view samples at 6 a batch, and more
        batch = mixed.next_batch()
        assert len(batch) == 8 and labelled[batch].sum() == 2 and len(set(batch.tolist())) == 8
        seen += batch[~labelled[batch]].tolist()
    assert sorted(seen[:18]) == list(range(num_demo_steps, num_demo_steps + 18))
    mixed.logger.close()
    with pytest.raises(ConfigError, match="labelled_fraction"):
        BCTrainer(train_config(*run, f"dataset=[{demos},{scenes}]", "algo.labelled_fraction=1.5"), tmp_path / "r5")
    with pytest.raises(DatasetError, match="only scene views"):
        BCTrainer(train_config(*run, f"dataset={scenes}"), tmp_path / "run2")
    with pytest.raises(ConfigError, match="algo.privileged_aux_coef > 0"):
        BCTrainer(train_config(*run, "algo.privileged_aux_coef=0", f"dataset=[{demos},{scenes}]"), tmp_path / "r3")
