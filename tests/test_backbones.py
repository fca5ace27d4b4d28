"""Backbones: pretrained towers, Hugging Face VLMs, LoRA, and feature caching inside the PPO update.

The Hugging Face tests build tiny random VLMs of two families from their transformers configs, with a word-level
tokenizer trained here, save them with ``save_pretrained`` and load them through the same ``backbone=hf`` path a
hub id goes through.
"""

import copy
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from tests.conftest import train_config
from envs import make_env
from vla.actor_critic import FROZEN_PREFIX, ActorCritic
from vla.backbones import build_backbone
from vla.checkpoint import CheckpointError, check_compatible
from vla.errors import ConfigError
from vla.ppo import PPO, RolloutStorage, compute_gae, frozen_copy

INSTRUCTIONS = ["pick up the red cube", "push the blue block to the left", "lift the green cube"]
WORDS = sorted({word for text in INSTRUCTIONS for word in text.split()} | {"user:", "assistant:"})
CHAT_TEMPLATE = ("{% for message in messages %}{{ message['role'] }}: {% for part in message['content'] %}"
                 "{% if part['type'] == 'image' %}IMAGE{% else %}{{ part['text'] }}{% endif %} {% endfor %}"
                 "{% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


class ImageInstructionEnv(gym.Env):
    """A stand-in for a tabletop task: one camera, a proprio vector and an instruction drawn per episode.
    The reward is higher for actions closer to a per-instruction target, so PPO has a signal to follow."""

    def __init__(self, image_size: int = 64, state_dim: int = 4, action_dim: int = 2, cameras=("image",)):
        self.observation_space = spaces.Dict({
            "state": spaces.Box(-np.inf, np.inf, (state_dim,), np.float32),
            **{camera: spaces.Box(0, 255, (image_size, image_size, 3), np.uint8) for camera in cameras},
            "instruction": spaces.Text(64),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (action_dim,), np.float32)
        self.cameras = cameras

    def _obs(self):
        return {"state": self.np_random.normal(size=self.observation_space["state"].shape).astype(np.float32),
                **{camera: self.np_random.integers(0, 256, self.observation_space[camera].shape, dtype=np.uint8)
                   for camera in self.cameras},
                "instruction": INSTRUCTIONS[self.task]}

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task, self.t = int(self.np_random.integers(len(INSTRUCTIONS))), 0
        return self._obs(), {}

    def step(self, action):
        self.t += 1
        target = np.linspace(-0.5, 0.5, len(INSTRUCTIONS))[self.task]
        reward = -float(np.square(np.asarray(action) - target).sum())
        return self._obs(), reward, False, self.t >= 8, {"success": reward > -0.1}


def batch_obs(env: gym.Env, batch_size: int, seed: int = 0):
    """``batch_size`` observations stacked as the vector env delivers them."""
    observations = []
    for i in range(batch_size):
        observations.append(env.reset(seed=seed + i)[0])
    return {key: np.stack([o[key] for o in observations]) if key != "instruction"
            else np.array([o[key] for o in observations], dtype=object) for key in observations[0]}


def collect(model: ActorCritic, env: gym.Env, num_steps: int, num_envs: int, seed: int = 0):
    """A rollout the way the trainer collects one, from ``num_envs`` independent copies of ``env``.
    Returns the storage and the observation tensors ``act`` saw at each step."""
    envs = [copy.deepcopy(env) for _ in range(num_envs)]
    obs = [e.reset(seed=seed + i)[0] for i, e in enumerate(envs)]
    storage = RolloutStorage(num_steps, num_envs, torch.device("cpu"))
    observations = []
    for _ in range(num_steps):
        stacked = {key: np.stack([o[key] for o in obs]) if key != "instruction"
                   else np.array([o[key] for o in obs], dtype=object) for key in obs[0]}
        observations.append(model.to_tensors(stacked, update_stats=True))
        out = model.act(observations[-1])
        steps = [e.step(a) for e, a in zip(envs, out.action.numpy())]
        obs = [e.reset()[0] if s[3] else s[0] for e, s in zip(envs, steps)]
        storage.add(**{f"in/{k}": v for k, v in out.update_inputs.items()}, action=out.action,
                    log_prob=out.log_prob, value=out.value,
                    reward=torch.tensor([s[1] for s in steps], dtype=torch.float32),
                    terminated=torch.zeros(num_envs, dtype=torch.bool),
                    truncated=torch.tensor([s[3] for s in steps]), final_value=torch.zeros(num_envs))
    return storage, observations


def without_cached_features(storage: RolloutStorage, observations) -> RolloutStorage:
    """The rollout as ``act`` stores it when the frozen stage cannot be cached: the observations themselves
    (images, instruction ids, state) instead of the frozen features, so every update re-runs the towers."""
    raw = copy.deepcopy(storage)
    frozen_keys = [key for key in storage.data if key.startswith("in/" + FROZEN_PREFIX)]
    assert frozen_keys, "this rollout holds no cached features"
    for key in frozen_keys:
        del raw.data[key]
    for key in observations[0]:
        raw.data[f"in/{key}"] = torch.stack([o[key] for o in observations])
    return raw


def ppo_config(**overrides):
    """The PPO config with small-update defaults (2 epochs of 2 minibatches) and ``overrides`` applied."""
    return train_config(*[f"algo.{key}={value}" for key, value in
                          {"update_epochs": 2, "num_minibatches": 2, **overrides}.items()]).algo


def ppo_update(model: ActorCritic, storage: RolloutStorage, algo=None, seed: int = 0):
    """One PPO update (minibatch order fixed by ``seed``) over ``storage``; returns its stats."""
    data = storage.data
    advantages, returns = compute_gae(data["reward"], data["value"], data["terminated"], data["truncated"],
                                      data["final_value"], torch.zeros(storage.num_envs), 0.99, 0.95)
    torch.manual_seed(seed)
    return PPO(algo or ppo_config(), model).update(storage, advantages, returns)


def actor_critic(env: gym.Env, *overrides: str) -> ActorCritic:
    cfg = train_config("policy=gaussian_transformer", "critic=attention", "policy.width=32",
                       "critic.attention_dim=32", "policy.feedforward_size=64", *overrides)
    torch.manual_seed(0)
    return ActorCritic.from_config(cfg, env.observation_space, env.action_space)


def frozen_weights(backbone) -> dict:
    return {name: p.detach().clone() for name, p in backbone.named_parameters()
            if not name.startswith("projection.") and "lora_" not in name}


# --------------------------------------------------------------------------------------------------- towers
@pytest.fixture(scope="module")
def towers_model():
    """A towers actor-critic over 32 px images (small, so the update tests stay fast); tests deep-copy it."""
    return actor_critic(ImageInstructionEnv(image_size=32), "backbone=towers", "backbone.hidden_size=32")


def test_efficientnet_weights_recognise_a_photo():
    """The weights loaded by position are the ImageNet ones: a known photo gets its known class."""
    from PIL import Image
    import matplotlib

    from vla.backbones.towers import EfficientNetImageTower, load_efficientnet_lite0

    photo = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"
    image = torch.as_tensor(np.asarray(Image.open(photo).convert("RGB").resize((224, 224)))).unsqueeze(0)
    classifier = load_efficientnet_lite0()
    tower = EfficientNetImageTower(stride=32)
    with torch.no_grad():
        pixels = (image.permute(0, 3, 1, 2).float() / 255 - tower.mean) / tower.std
        logits = classifier(pixels)
    assert logits.argmax().item() == 652  # ImageNet "military uniform": Grace Hopper in her Navy uniform


@pytest.mark.parametrize("image_size,stride,grid", [(64, 8, 8), (64, 16, 4), (96, 8, 12)])
def test_towers_image_tokens_have_the_configured_spatial_size(image_size, stride, grid):
    env = ImageInstructionEnv(image_size=image_size, cameras=("image", "wrist_image"))
    space = spaces.Dict({k: v for k, v in env.observation_space.spaces.items() if k != "instruction"})
    backbone = build_backbone(train_config("backbone=towers", f"backbone.image_feature_stride={stride}",
                                           "backbone.hidden_size=48").backbone, space)
    obs = {key: torch.as_tensor(value) for key, value in batch_obs(env, 3).items() if key != "instruction"}
    with torch.no_grad():
        features = backbone.encode_frozen(obs)
        tokens = backbone.project(features)
    assert features["image"].shape == (3, grid * grid, backbone.towers["image"].out_channels)
    assert tokens.hidden.shape == (3, 2 * grid * grid, 48) and tokens.mask.all()
    assert not backbone.is_trainable and backbone.identity()["image_feature_stride"] == str(stride)


def test_bfloat16_towers_cache_bfloat16_features_close_to_float32_and_project_in_float32(towers_model):
    env = ImageInstructionEnv(image_size=32)
    half = actor_critic(env, "backbone=towers", "backbone.hidden_size=32", "backbone.dtype=bfloat16")
    full = copy.deepcopy(towers_model)
    half.backbone.projection.load_state_dict(full.backbone.projection.state_dict())
    obs = batch_obs(env, 4)
    with torch.no_grad():
        features = {name: model.encode_frozen(model.to_tensors(obs)) for name, model in
                    (("half", half), ("full", full))}
        tokens = half.backbone.project(features["half"])
    assert features["half"]["image"].dtype == torch.bfloat16 and tokens.hidden.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in half.backbone.projection.parameters())
    similarity = torch.nn.functional.cosine_similarity(features["half"]["image"].float().flatten(1),
                                                       features["full"]["image"].flatten(1))
    assert similarity.min() > 0.99, similarity
    assert half.backbone.identity()["dtype"] == "bfloat16" and "dtype" not in full.backbone.identity()
    with pytest.raises(ConfigError, match="backbone.dtype=bfloat16 with LoRA adapters"):
        actor_critic(env, "backbone=towers", "backbone.dtype=bfloat16", "backbone.lora.rank=2")


@pytest.mark.parametrize("native", [True, False])
def test_bfloat16_towers_warn_where_the_hardware_emulates_bfloat16(monkeypatch, native):
    """bfloat16 without hardware support runs the frozen towers about 10x slower than float32: say so, with
    the fix; say nothing where it is native, or for float32."""
    monkeypatch.setattr("vla.backbones.towers.bfloat16_is_native", lambda: native)
    env = ImageInstructionEnv(image_size=32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        actor_critic(env, "backbone=towers", "backbone.hidden_size=32", "backbone.dtype=bfloat16")
        actor_critic(env, "backbone=towers", "backbone.hidden_size=32")
    messages = [str(w.message) for w in caught if "backbone.dtype" in str(w.message)]
    if native:
        assert messages == []
    else:
        assert len(messages) == 1 and "10x slower" in messages[0] and "backbone.dtype=float32" in messages[0]


def test_towers_train_image_tower_fine_tunes_it_and_marks_the_checkpoint():
    """backbone.train_image_tower: the image tower trains (so nothing is cached), its weights go into the
    checkpoint, and a checkpoint with a fine-tuned tower does not load into a frozen-tower model."""
    env = ImageInstructionEnv(image_size=32)
    frozen = actor_critic(env, "backbone=towers", "backbone.hidden_size=32")
    tuned = actor_critic(env, "backbone=towers", "backbone.hidden_size=32", "backbone.train_image_tower=true")
    assert tuned.backbone.is_trainable and not frozen.backbone.is_trainable
    assert not any(p.requires_grad for p in tuned.backbone.towers["text"].parameters())
    saved = tuned.trainable_state_dict()
    assert any(name.startswith("backbone.towers.image.") for name in saved)
    before = {n: p.detach().clone() for n, p in tuned.backbone.towers["image"].named_parameters()}
    optimizer = torch.optim.Adam(tuned.backbone.trainable_parameters(), lr=1e-3)
    tuned.encode(tuned.to_tensors(batch_obs(env, 4))).hidden.pow(2).mean().backward()
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in tuned.backbone.towers["image"].named_parameters()
               if n.endswith("weight"))
    assert tuned.backbone.identity()["image_tower_trained"] == "true"
    with pytest.raises(CheckpointError, match="image_tower_trained"):
        check_compatible({"backbone": tuned.backbone.identity(), "state_dim": 4, "action_dim": 2},
                         backbone_identity=frozen.backbone.identity(), state_dim=4, action_dim=2, path=Path("x"))
    with pytest.raises(ConfigError, match="backbone.lora.rank=0"):
        actor_critic(env, "backbone=towers", "backbone.train_image_tower=true", "backbone.lora.rank=2")


def test_towers_encode_each_distinct_instruction_once(towers_model):
    model = copy.deepcopy(towers_model)
    model.instruction_ids, model.backbone.instruction_texts = {}, []
    backbone = model.backbone
    text_tower = backbone.towers["text"]
    encoded_texts = []
    original_forward = text_tower.forward
    text_tower.forward = lambda texts: (encoded_texts.extend(texts), original_forward(texts))[1]

    env = ImageInstructionEnv(image_size=32)
    for seed in range(4):  # four batches that repeat the same few instructions
        with torch.no_grad():
            model.encode(model.to_tensors(batch_obs(env, 6, seed=10 * seed)))
    assert len(backbone.instruction_texts) >= 2
    assert sorted(encoded_texts) == sorted(backbone.instruction_texts)

    # The cached, padded table gives each instruction the tokens a fresh encoding of it alone gives.
    with torch.no_grad():
        for i, text in enumerate(backbone.instruction_texts):
            alone = original_forward([text])
            cached = backbone.instruction_tokens(torch.tensor([i]))
            assert torch.equal(cached.mask[0, :alone.mask.shape[1]], alone.mask[0])
            torch.testing.assert_close(cached.hidden[0][cached.mask[0]], alone.hidden[0], atol=1e-5, rtol=1e-5)


def test_towers_only_the_projection_trains_and_frozen_weights_stay_bit_identical(towers_model):
    model = copy.deepcopy(towers_model)
    before = frozen_weights(model.backbone)
    projection_before = copy.deepcopy(model.backbone.projection.state_dict())
    storage, _ = collect(model, ImageInstructionEnv(image_size=32), num_steps=4, num_envs=4)
    assert any(key.startswith("in/" + FROZEN_PREFIX) for key in storage.data)  # features were cached
    ppo_update(model, storage)
    for name, parameter in model.backbone.named_parameters():
        if not name.startswith("projection."):
            assert parameter.grad is None and not parameter.requires_grad, name
            assert torch.equal(parameter, before[name]), name
    assert not model.backbone.towers.training  # batch-norm statistics must not move either
    changed = [k for k, v in model.backbone.projection.state_dict().items() if not torch.equal(v, projection_before[k])]
    assert changed, "the trainable projection did not train"


@pytest.mark.parametrize("backbone", ["state_mlp", "towers"])
def test_feature_caching_gives_the_same_update_as_recomputing(backbone, towers_model):
    """Two identical models run one PPO update on the same rollout: one reads the cached frozen features, the
    other re-runs the frozen stage in every minibatch. Losses and resulting weights must agree."""
    env = ImageInstructionEnv(image_size=32)
    if backbone == "towers":
        cached = copy.deepcopy(towers_model)
    else:
        cached = actor_critic(env, "backbone=state", "backbone.mode=mlp", "backbone.hidden_size=16")
    storage, observations = collect(cached, env, num_steps=4, num_envs=4)
    recomputed = copy.deepcopy(cached)  # after the rollout: same weights, normalizer and instruction ids
    raw_storage = without_cached_features(storage, observations)

    stats_cached = ppo_update(cached, storage)
    stats_recomputed = ppo_update(recomputed, raw_storage)
    assert stats_cached.policy_loss == pytest.approx(stats_recomputed.policy_loss, rel=1e-4, abs=1e-6)
    assert stats_cached.value_loss == pytest.approx(stats_recomputed.value_loss, rel=1e-4, abs=1e-6)
    for (name, a), b in zip(cached.named_parameters(), recomputed.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


def test_compiled_update_matches_the_eager_update():
    """algo.compile=true runs the same update through torch.compile: the same statistics and weights, up to
    float rounding, for a state model with the privileged auxiliary head and the KL term toward pi_init."""
    reach = ["env=tabletop_reach", "env.use_camera=false", "env.privileged_obs=true"]
    env = make_env(train_config(*reach).env)
    eager = actor_critic(env, *reach, "backbone=state", "backbone.mode=mlp", "backbone.hidden_size=16",
                         "algo.privileged_aux_coef=1.0")
    storage, _ = collect(eager, env, num_steps=4, num_envs=4)
    compiled = copy.deepcopy(eager)
    results = []
    for model, compile_ in ((eager, False), (compiled, True)):
        data = storage.data
        advantages, returns = compute_gae(data["reward"], data["value"], data["terminated"], data["truncated"],
                                          data["final_value"], torch.zeros(storage.num_envs), 0.99, 0.95)
        algo = ppo_config(compile=compile_, init_kl_coef=0.5, privileged_aux_coef=1.0)
        ppo = PPO(algo, model, frozen_copy(model))
        torch.manual_seed(0)
        results.append(ppo.update(storage, advantages, returns))
    assert results[1].optimizer_steps == results[0].optimizer_steps == 4
    for field in ("policy_loss", "value_loss", "entropy", "approx_kl", "init_kl", "privileged_aux", "action_std"):
        assert getattr(results[1], field) == pytest.approx(getattr(results[0], field), rel=1e-4, abs=1e-6), field
    for (name, a), b in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)


# ------------------------------------------------------------------------------------------ Hugging Face VLMs
def word_tokenizer(special_tokens):
    """A word-level tokenizer over the instructions' words, trained here (nothing is downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(
        special_tokens=["<pad>", "<unk>", *special_tokens]))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>",
                                   additional_special_tokens=list(special_tokens))


def save_tiny_vlm(directory: Path, family: str, width: int = 32, layers: int = 2) -> Path:
    """A random VLM of ``family`` ("llava": SigLIP vision + Qwen2 text; "qwen2_vl"), with its processor, saved
    with ``save_pretrained`` into ``directory`` the way hub checkpoints are laid out."""
    import transformers as tf

    text = dict(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=512, bos_token_id=None, eos_token_id=None)
    if family == "llava":
        tokenizer = word_tokenizer(["<image>"])
        config = tf.LlavaConfig(
            vision_config=tf.SiglipVisionConfig(hidden_size=width, intermediate_size=2 * width,
                                                num_hidden_layers=layers, num_attention_heads=2, image_size=32,
                                                patch_size=8),
            text_config=tf.Qwen2Config(vocab_size=len(tokenizer), **text),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"), vision_feature_layer=-1,
            vision_feature_select_strategy="full", image_seq_length=16)
        model = tf.LlavaForConditionalGeneration(config)
        processor = tf.LlavaProcessor(image_processor=tf.SiglipImageProcessor(size={"height": 32, "width": 32}),
                                      tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="full",
                                      num_additional_image_tokens=0,
                                      chat_template=CHAT_TEMPLATE.replace("IMAGE", "<image>"))
    elif family == "qwen2_vl":
        tokenizer = word_tokenizer(["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>"])
        config = tf.Qwen2VLConfig(
            text_config=dict(vocab_size=len(tokenizer), rope_scaling={"type": "mrope", "mrope_section": [2, 2, 4]},
                             **text),
            vision_config=dict(depth=layers, embed_dim=width, hidden_size=width, num_heads=2, mlp_ratio=2,
                               patch_size=8, spatial_merge_size=2, temporal_patch_size=2),
            image_token_id=tokenizer.convert_tokens_to_ids("<|image_pad|>"),
            video_token_id=tokenizer.convert_tokens_to_ids("<|video_pad|>"),
            vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"))
        model = tf.Qwen2VLForConditionalGeneration(config)
        grid = dict(patch_size=8, merge_size=2, temporal_patch_size=2)
        processor = tf.Qwen2VLProcessor(
            image_processor=tf.Qwen2VLImageProcessor(min_pixels=32 * 32, max_pixels=32 * 32, **grid),
            video_processor=tf.Qwen2VLVideoProcessor(**grid), tokenizer=tokenizer,
            chat_template=CHAT_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    else:
        raise ValueError(family)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def tiny_vlms(tmp_path_factory):
    return {family: save_tiny_vlm(tmp_path_factory.mktemp(family), family) for family in ("llava", "qwen2_vl")}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_hf_vlm_families_load_through_the_user_path_and_produce_tokens(family, tiny_vlms, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = ImageInstructionEnv(image_size=48)
    model = actor_critic(env, "backbone=hf", f"backbone.model={tiny_vlms[family]}", "backbone.hidden_size=24",
                         "backbone.layer=1")
    backbone = model.backbone
    assert not backbone.is_trainable and backbone.identity()["layer"] == "1"
    obs = model.to_tensors(batch_obs(env, 4))
    with torch.no_grad():
        features = backbone.encode_frozen(obs)
        tokens = backbone.project(features)
    assert tokens.hidden.shape == (4, backbone.sequence_length, 24)
    assert tokens.mask.any(1).all() and not tokens.mask.all()  # fixed-length prompts are padded
    # The features are the chosen layer's hidden states: re-run the model and compare.
    prompts = [backbone._prompt(i) for i in obs["instruction_id"].tolist()]
    inputs = backbone.processor(text=prompts, images=[[image] for image in obs["image"].numpy()],
                                padding="max_length", max_length=backbone.sequence_length, return_tensors="pt")
    with torch.no_grad():
        expected = backbone.vlm(**inputs, output_hidden_states=True).hidden_states[1]
    torch.testing.assert_close(features["hidden"], expected)
    # Images reach the tokens: another image changes them.
    changed = dict(obs, image=255 - obs["image"])
    with torch.no_grad():
        assert not torch.allclose(backbone.encode_frozen(changed)["hidden"], features["hidden"])


def test_hf_lora_trains_only_the_adapters(tiny_vlms):
    env = ImageInstructionEnv(image_size=32)
    model = actor_critic(env, "backbone=hf", f"backbone.model={tiny_vlms['llava']}", "backbone.hidden_size=16",
                         "backbone.lora.rank=2")
    backbone = model.backbone
    assert backbone.is_trainable
    adapters = {n: p.detach().clone() for n, p in backbone.named_parameters() if "lora_" in n}
    assert adapters and all(p.requires_grad == ("lora_" in n or n.startswith("projection."))
                            for n, p in backbone.named_parameters())
    before = frozen_weights(backbone)
    storage, _ = collect(model, env, num_steps=4, num_envs=4)
    assert not any(key.startswith("in/" + FROZEN_PREFIX) for key in storage.data)  # nothing can be cached
    ppo_update(model, storage)
    for name, parameter in backbone.named_parameters():
        if name in before:
            assert torch.equal(parameter, before[name]), name
    # lora_B starts at zero and lora_A gets no gradient until it moves, so look at B.
    assert any(not torch.equal(p, adapters[n]) for n, p in backbone.named_parameters() if "lora_B" in n)


def test_towers_lora_in_the_text_tower_encodes_instructions_with_gradients():
    env = ImageInstructionEnv(image_size=32)
    space = spaces.Dict({k: v for k, v in env.observation_space.spaces.items() if k != "image"})
    backbone = build_backbone(train_config("backbone=towers", "backbone.lora.rank=2",
                                           "backbone.hidden_size=16").backbone, space)
    backbone.instruction_texts = list(INSTRUCTIONS)
    assert backbone.is_trainable
    tokens = backbone.encode({"state": torch.zeros(3, 4), "instruction_id": torch.tensor([2, 0, 2])})
    tokens.hidden.sum().backward()
    lora_grads = [p.grad for n, p in backbone.named_parameters() if "lora_B" in n]
    assert lora_grads and all(g is not None and g.abs().sum() > 0 for g in lora_grads)
    assert torch.equal(tokens.hidden[0], tokens.hidden[2]) and not torch.equal(tokens.hidden[0], tokens.hidden[1])


def test_lora_target_that_matches_nothing_is_a_config_error(tiny_vlms):
    env = ImageInstructionEnv(image_size=32)
    cfg = train_config("backbone=hf", f"backbone.model={tiny_vlms['llava']}", "backbone.lora.rank=2",
                       "backbone.lora.target_modules=[no_such_layer]")
    with pytest.raises(ConfigError, match="no_such_layer"):
        build_backbone(cfg.backbone, env.observation_space)


# ------------------------------------------------------------------------------------- config and identity
def test_unknown_backbone_name_lists_the_known_ones():
    cfg = train_config().backbone
    cfg.name = "clip"
    with pytest.raises(ConfigError, match="towers"):
        build_backbone(cfg, ImageInstructionEnv().observation_space)


def test_hf_config_fails_at_compose_on_a_misspelled_key():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        train_config("backbone=hf", "backbone.model=x", "backbone.layre=3")


def test_checkpoint_refuses_a_different_frozen_backbone(tiny_vlms):
    env = ImageInstructionEnv(image_size=32)
    identities = [build_backbone(train_config("backbone=hf", f"backbone.model={tiny_vlms['llava']}",
                                              f"backbone.layer={layer}").backbone, env.observation_space).identity()
                  for layer in (1, -1)]
    state = {"backbone": identities[0], "state_dim": 4, "action_dim": 2}
    check_compatible(state, backbone_identity=identities[0], state_dim=4, action_dim=2, path=Path("ckpt"))
    with pytest.raises(CheckpointError, match="backbone"):
        check_compatible(state, backbone_identity=identities[1], state_dim=4, action_dim=2, path=Path("ckpt"))


def test_image_tower_with_folded_batch_norm_matches_the_pretrained_network():
    from vla.backbones.towers import EfficientNetImageTower, load_efficientnet_lite0

    tower, full = EfficientNetImageTower(8), load_efficientnet_lite0()
    images = torch.randint(0, 256, (4, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad():
        pixels = (images.permute(0, 3, 1, 2).float().div(255.0) - tower.mean) / tower.std
        reference = full.blocks[:len(tower.blocks)](full.bn1(full.conv_stem(pixels)))
        torch.testing.assert_close(tower(images), reference.flatten(2).transpose(1, 2), atol=2e-4, rtol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in tower.modules())


def test_towers_grounded_token_comes_first_and_follows_the_instruction():
    env = ImageInstructionEnv(cameras=("image",))
    cfg = train_config("backbone=towers", "backbone.hidden_size=32", "backbone.grounding_heads=2",
                       "policy.pooling=first")
    model = ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    obs = batch_obs(env, 2)
    obs["instruction"] = np.array(["reach the red cube", "reach the blue ball"], dtype=object)
    swapped = dict(obs, image=obs["image"][[0, 0]])  # one image, two instructions
    with torch.no_grad():
        tokens = model.encode(model.to_tensors(swapped))
    grid = 64
    text = tokens.hidden.shape[1] - 1 - grid
    assert text > 0 and tokens.mask[:, 0].all()
    assert not torch.allclose(tokens.hidden[0, 0], tokens.hidden[1, 0])  # the grounded token reads the text
    torch.testing.assert_close(tokens.hidden[0, 1:1 + grid], tokens.hidden[1, 1:1 + grid])  # image tokens
    model.act(model.to_tensors(obs))  # the MLP expert reads the grounded token (pooling=first)


@pytest.mark.parametrize("pooling, reads_wrist", [("first", False), ("grounded", True)])
def test_grounded_pooling_reads_every_cameras_grounded_token(pooling, reads_wrist):
    """Front and wrist cameras: ``first`` is the front camera's grounded token alone, ``grounded`` concatenates
    one per camera, so the actor and the critic see the wrist view too."""
    env = ImageInstructionEnv(cameras=("image", "wrist_image"))
    cfg = train_config("backbone=towers", "backbone.hidden_size=32", "backbone.grounding_heads=2",
                       f"policy.pooling={pooling}", "critic=attention", f"critic.pooling={pooling}")
    model = ActorCritic.from_config(cfg, env.observation_space, env.action_space)
    assert model.backbone.grounded_tokens == 2
    width = 32 * (2 if pooling == "grounded" else 1) + 4  # pooled tokens + state
    assert model.expert.body[0].in_features == width and model.critic.body[0].in_features == width
    obs = batch_obs(env, 2)
    other_wrist = dict(obs, wrist_image=255 - obs["wrist_image"])
    with torch.no_grad():
        outputs = [model.act(model.to_tensors(o), deterministic=True) for o in (obs, other_wrist)]
    for field in ("action", "value"):
        same = torch.allclose(getattr(outputs[0], field), getattr(outputs[1], field))
        assert same != reads_wrist, field


def test_grounded_pooling_without_grounded_tokens_is_a_config_error():
    env = ImageInstructionEnv()
    cfg = train_config("backbone=towers", "backbone.hidden_size=32", "policy.pooling=grounded")
    with pytest.raises(ConfigError, match="pooling=grounded.*grounding_heads"):
        ActorCritic.from_config(cfg, env.observation_space, env.action_space)
