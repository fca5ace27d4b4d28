"""Structured configs: one dataclass per config group, stored in hydra's ConfigStore.

Every YAML file under ``conf/`` starts from one of these schemas (its ``defaults`` list names the schema), so a
misspelled key or a value of the wrong type fails when hydra composes the config, before anything runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


# ----------------------------------------------------------------------------------------------------- env
@dataclass
class EnvConfig:
    """Fields every environment shares. ``kind`` picks the builder in ``envs.registry``."""

    kind: str = MISSING
    # Steps before the episode is truncated (None: the environment's own limit).
    max_episode_steps: Optional[int] = None
    # "async": one forkserver worker process per env; "sync": all envs step in the trainer process
    # (faster for cheap state-only simulators, where inter-process messages cost more than the physics).
    vector_mode: str = "async"
    # End the episode (terminated=True) on the first step where info["success"] is true.
    terminate_on_success: bool = False


@dataclass
class GymEnvConfig(EnvConfig):
    """Any gymnasium env id with a Box observation; the state becomes ``obs["state"]``."""

    kind: str = "gym"
    id: str = MISSING
    # Keyword arguments passed to gymnasium.make.
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # Name of a success check in envs.gym_tasks (None: info["success"] is always False).
    success: Optional[str] = None
    # Distance (metres) under which the success check counts the goal as reached.
    success_threshold: float = 0.05


@dataclass
class TabletopEnvConfig(EnvConfig):
    """Fast native MuJoCo tabletop tasks built from primitive geometry (envs/tabletop)."""

    kind: str = "tabletop"
    # "reach", "push" or "lift".
    task: str = "reach"
    # Objects on the table: the named target plus distractors of other colours/shapes.
    num_objects: int = 3
    # Objects the model is built with (None: num_objects); a curriculum raises the active num_objects up to this
    # at runtime (set_difficulty), the rest wait out of play (invisible, no contacts, never named).
    max_objects: Optional[int] = None
    # Camera observations (uint8 HxWx3 under obs["image"]); False: state only.
    use_camera: bool = True
    # "front" (over the table, facing the robot's workspace), "wrist" (rides on the gripper) and/or "top" (straight
    # down on the placement square and the zones, about 0.7 cm per pixel at 64 px). The first
    # is obs["image"], further ones obs["<name>_image"].
    cameras: List[str] = field(default_factory=lambda: ["front"])
    image_size: int = 64
    # Side of the display-camera frames rendered for videos.
    video_size: int = 256
    # "dense" (shaped) or "sparse" (1 on success) reward.
    reward: str = "dense"
    # Subtracted every step, so shorter successful episodes earn more.
    time_penalty: float = 0.0
    # Half-width (metres) of the square in which objects are placed.
    placement_range: float = 0.15
    # "sample": a paraphrase drawn per episode; "fixed": always the first (for evaluation).
    instruction_mode: str = "sample"
    # Generalization split: "all" (every colour and paraphrase; the default, as before splits existed), "train"
    # (the held-out colours orange and purple never appear and each task's held-out paraphrase is never used;
    # at most 4 objects) or "heldout" (the named object is orange or purple and the instruction is a held-out
    # paraphrase). Train with "train" and evaluate with eval.heldout=true to measure generalization.
    split: str = "all"
    # Append the named object's position and its goal position to obs["state"] (privileged; for state-only
    # training and debugging, where nothing else tells the policy which object is meant).
    privileged_state: bool = False
    # Also emit obs["privileged"] (the named object's position and its goal position) for an asymmetric critic
    # (critic.privileged=true): the value head reads it, the actor never does, so the policy still acts from
    # camera, instruction and proprio alone.
    privileged_obs: bool = False


@dataclass
class RobosuiteEnvConfig(EnvConfig):
    """robosuite manipulation tasks (envs/robosuite_env)."""

    kind: str = "robosuite"
    # Lift, Stack, Door, PickPlaceCan, NutAssemblyRound, Wipe.
    task: str = "Lift"
    robot: str = "Panda"
    # Arm controller of robosuite's composite controller config.
    controller: str = "OSC_POSE"
    control_freq: int = 20
    horizon: int = 500
    reward_shaping: bool = True
    use_camera: bool = True
    cameras: List[str] = field(default_factory=lambda: ["agentview"])
    camera_size: int = 84
    # Object state in obs["state"] beside proprio (privileged; on for state-based training).
    use_object_obs: bool = True
    # Also emit the object state as obs["privileged"] for an asymmetric critic (critic.privileged=true) or the
    # auxiliary privileged loss: the value head may read it, the actor never does, so a camera policy still acts
    # from camera, instruction and proprio alone.
    privileged_obs: bool = False
    # Shadows, reflections, skybox off and no multisampling (about 3x faster offscreen rendering here).
    fast_render: bool = True
    # False reuses the simulation between episodes (about 2 ms instead of 200 ms per reset).
    hard_reset: bool = False
    video_camera: str = "frontview"
    video_size: int = 256
    instruction_mode: str = "sample"
    # Generalization split: "all" and "train" are the task as robosuite defines it; "heldout" (Lift only) a
    # smaller cube (15-18 mm half-size instead of 20-22) and an instruction paraphrase training never uses.
    # Evaluate with eval.heldout=true (vla-eval heldout=true) to measure generalization.
    split: str = "all"


# ------------------------------------------------------------------------------------------------ backbone
@dataclass
class BackboneConfig:
    name: str = MISSING


@dataclass
class StateBackboneConfig(BackboneConfig):
    """Tokens from the (normalized) state vector alone."""

    name: str = "state"
    # "identity": the normalized state is the single token (no parameters; the heads see the state directly).
    # "mlp": a trainable MLP maps the state to one token of width hidden_size, shared by actor and critic.
    mode: str = "identity"
    hidden_size: int = 64
    num_layers: int = 2
    activation: str = "tanh"


@dataclass
class LoraAdapterConfig:
    """LoRA adapters (peft) on a backbone's pretrained towers; with them on, only the adapters train there."""

    # Adapter rank; 0 turns LoRA off (the towers stay fully frozen and their features are cached).
    rank: int = 0
    # Scale of the adapter update is alpha / rank.
    alpha: float = 16.0
    dropout: float = 0.0
    # Module name suffixes that get adapters, as peft matches them.
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TowersBackboneConfig(BackboneConfig):
    """Offline-pretrained towers: EfficientNet-Lite0 image patch tokens and MiniLM-L6 instruction tokens, frozen,
    projected to a common width by trainable layers."""

    name: str = "towers"
    # Output stride of the EfficientNet-Lite0 stage whose feature map becomes the image tokens: 8 (40 channels;
    # an 8x8 grid of a 64 px image), 16 (112 channels) or 32 (320 channels); 2 and 4 are shallow stages.
    image_feature_stride: int = 8
    # Instructions are truncated to this many word pieces.
    max_instruction_tokens: int = 32
    # Width D of the tokens the action expert and the value head read.
    hidden_size: int = 128
    # Pre-norm transformer layers mixing image and instruction tokens after the projection (0: none).
    fusion_layers: int = 0
    fusion_heads: int = 4
    # Instruction-grounded token: per camera, the pooled instruction queries the image tokens (this many
    # attention heads, 0: off) and the attended image features, positions included, become one extra token at
    # the front of the sequence ("where is the thing the instruction names"). Heads read it through attention,
    # or directly with pooling=first. Grounding by concatenation (an MLP over image and instruction features)
    # learns far slower: see README, "Learning from pixels".
    grounding_heads: int = 0
    # Precision of the frozen towers: "float32", or "bfloat16" (half the memory traffic and tensor-core
    # throughput on a GPU; their features are cached in it and the trainable layers still run in float32).
    # Not with LoRA adapters (they would train in bfloat16).
    dtype: str = "float32"
    # Fine-tune the whole image tower (its 54k parameters up to stride 8, more at deeper strides) with the
    # projection; its features are then recomputed in every update instead of cached. On tabletop push it placed
    # the named object more precisely in a probe, but did not raise BC success (experiments/results/tabletop_push.md).
    # Not with LoRA adapters or bfloat16 towers.
    train_image_tower: bool = False
    # MiniLM's attention projections are named query/key/value.
    lora: LoraAdapterConfig = field(default_factory=lambda: LoraAdapterConfig(target_modules=["query", "value"]))


@dataclass
class HFBackboneConfig(BackboneConfig):
    """Any Hugging Face vision-language model (AutoModelForImageTextToText + AutoProcessor), frozen, read at one
    layer."""

    name: str = "hf"
    # Local directory or hub id.
    model: str = MISSING
    # Hub revision (branch, tag or commit); None: the default branch.
    revision: Optional[str] = None
    # "float32", "bfloat16" or "float16".
    dtype: str = "float32"
    # Index into the model's hidden_states (0: embeddings, -1: last decoder layer).
    layer: int = -1
    # None: the processor's chat template (one user turn: images, then the instruction). Otherwise a format
    # string with {image} (the processor's image token, once per camera) and {instruction}.
    prompt_template: Optional[str] = None
    # Room for the instruction in the fixed-length prompt (longer prompts fail with a clear error).
    max_instruction_tokens: int = 32
    # Width D of the projected tokens the heads read.
    hidden_size: int = 256
    # Run model code shipped with the checkpoint (only for models you trust).
    trust_remote_code: bool = False
    lora: LoraAdapterConfig = field(default_factory=LoraAdapterConfig)


# -------------------------------------------------------------------------------------------------- policy
@dataclass
class PolicyConfig:
    name: str = MISSING


@dataclass
class GaussianMLPPolicyConfig(PolicyConfig):
    """Diagonal Gaussian over normalized actions; mean from an MLP over the pooled backbone tokens."""

    name: str = "gaussian_mlp"
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    # How the token sequence becomes one vector: "mean" over valid tokens, the "last" valid token, the "first"
    # token (the towers' grounded token when backbone.grounding_heads > 0) or the "grounded" tokens, one per
    # camera, concatenated (with front and wrist cameras "first" reads the front camera's alone).
    pooling: str = "mean"
    # Initial log standard deviation of every action dimension.
    log_std_init: float = 0.0
    # False: log-std is a free parameter (state-independent); True: a second output of the MLP.
    state_dependent_std: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0


@dataclass
class GaussianTransformerPolicyConfig(PolicyConfig):
    """Diagonal Gaussian whose mean comes from learned action queries cross-attending to the backbone tokens and
    a proprio token (a small transformer decoder)."""

    name: str = "gaussian_transformer"
    width: int = 128
    num_layers: int = 2
    num_heads: int = 4
    feedforward_size: int = 256
    # Actions per sample: the expert predicts chunk_size consecutive actions (one action query each).
    chunk_size: int = 1
    # How many of them run before the policy decides again: null = the whole chunk (open loop); fewer =
    # re-planning (receding horizon). The policy's distribution, and so PPO's ratio and entropy, covers
    # exactly the executed actions; one PPO transition spans them, with reward sum_j gamma^j r_j.
    execute_steps: Optional[int] = None
    log_std_init: float = 0.0
    # False: log-std is a free parameter (state-independent); True: a second output head per action query.
    state_dependent_std: bool = False
    log_std_min: float = -5.0
    log_std_max: float = 2.0


# -------------------------------------------------------------------------------------------------- critic
@dataclass
class CriticConfig:
    name: str = MISSING
    # Asymmetric actor-critic: the value head also reads obs["privileged"] (simulator state the env exposes,
    # e.g. env.privileged_obs=true on tabletop), normalized like the state. Training-time only: the actor never
    # sees it, and the value is not needed to act.
    privileged: bool = False


@dataclass
class MLPCriticConfig(CriticConfig):
    """Value head: an MLP over the pooled backbone tokens (plus the state when the backbone does not encode it)."""

    name: str = "mlp"
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    pooling: str = "mean"


@dataclass
class AttentionCriticConfig(CriticConfig):
    """Value head: tokens pooled by a learned-query attention (or mean / last token), then an MLP."""

    name: str = "attention"
    # "attention", "mean", "last", "first" or "grounded" (as policy.pooling).
    pooling: str = "attention"
    # Width of the attention pooling's query and output.
    attention_dim: int = 128
    num_heads: int = 4
    hidden_sizes: List[int] = field(default_factory=lambda: [64, 64])
    activation: str = "tanh"
    # Stop the value loss's gradient at the backbone tokens (trainable backbone layers then follow the actor).
    detach_backbone: bool = False


# ---------------------------------------------------------------------------------------------------- algo
@dataclass
class AlgoConfig:
    name: str = MISSING


@dataclass
class PPOConfig(AlgoConfig):
    name: str = "ppo"
    # Steps each env collects per rollout; the batch is num_steps * num_envs transitions.
    num_steps: int = 256
    # Discount factor.
    gamma: float = 0.99
    # GAE lambda (bias/variance trade-off of the advantage estimate).
    gae_lambda: float = 0.95
    # Passes over each rollout batch.
    update_epochs: int = 10
    # Minibatches per epoch.
    num_minibatches: int = 32
    # Policy ratio clip range.
    clip_coef: float = 0.2
    # Clip the value update around the old value by clip_coef as well.
    clip_vloss: bool = False
    # Weight of the value loss.
    vf_coef: float = 0.5
    # Weight of the entropy bonus.
    ent_coef: float = 0.0
    # Global gradient-norm clip.
    max_grad_norm: float = 0.5
    # Adam learning rate of the actor (expert and any trainable backbone part).
    learning_rate: float = 3e-4
    # Adam learning rate of the value head (None: same as learning_rate).
    value_learning_rate: Optional[float] = None
    adam_eps: float = 1e-5
    # Anneal both learning rates linearly to zero over the run.
    anneal_lr: bool = True
    # Stop the epochs of an update once the approximate KL exceeds 1.5 * target_kl (None: never).
    target_kl: Optional[float] = None
    # Normalize advantages within each minibatch.
    norm_adv: bool = True
    # Scale rewards by a running std of the discounted return.
    norm_reward: bool = True
    # Normalize the state vector with running mean/std.
    norm_state: bool = True
    # Clip normalized rewards and states to +-this.
    clip_norm: float = 10.0
    # Updates at the start where only the value head trains (actor weights untouched).
    critic_warmup_updates: int = 0
    # Weight of KL(pi_init || pi) on each minibatch's observations, pi_init being the policy the run started
    # from (init_from's, or the fresh one): keeps PPO near a cloned policy while the critic catches up (0: off).
    init_kl_coef: float = 0.0
    # With init_from: the action std the loaded policy starts PPO with (None: the checkpoint's). A clone's
    # maximum-likelihood std measures how far the demos scatter around its mean, not how much exploration its
    # mean tolerates: on robosuite Lift a 50-demo clone lifted in 44% of 50 episodes with its mean action and
    # in 0 of 20 with actions sampled at its std of 0.24.
    init_action_std: Optional[float] = None
    # Weight of an auxiliary loss: a linear head on the actor's features predicts obs["privileged"] (simulator
    # state, e.g. env.privileged_obs=true on tabletop: the named object's position), squared error on the
    # normalized values. Teaches a pixel policy where things are with a dense supervised signal; the policy
    # still acts from its own inputs only (0: off).
    privileged_aux_coef: float = 0.0
    # What the auxiliary head reads: "expert" (the action expert's last features) or "first_token" (the
    # backbone's first token: the towers' instruction-grounded token with backbone.grounding_heads > 0, so the
    # supervised signal shapes the grounding directly instead of competing with the policy gradient inside the
    # expert).
    privileged_aux_source: str = "expert"
    # "mse": squared error of the normalized values; "huber": squared below 1 (the same as mse there) and linear
    # above, so rare frames far outside the normalization (a tabletop object knocked off the table lies 4-7
    # normalized units off in each coordinate, where the demos' errors are about 0.3) cannot carry the loss,
    # nor its share of the gradient norm that PPO clips jointly with the policy's.
    privileged_aux_loss: str = "mse"
    # Compile each minibatch's forward pass and loss, with its backward, into fused kernels (torch.compile; needs
    # a C++ compiler on the CPU). Same results to float rounding; faster where many small kernels dominate the
    # update, at a one-off cost of seconds to tens of seconds (experiments/bench_throughput.py measures both).
    compile: bool = False


@dataclass
class BCConfig(AlgoConfig):
    """Behaviour cloning (``vla-train algo=bc dataset=PATH``): maximum likelihood of the demonstrations' actions
    under the action expert, with the backbone, expert and critic configs a PPO run uses, so PPO can start from
    the result (``init_from``). Frozen backbone features are computed once for the whole dataset."""

    name: str = "bc"
    # Gradient steps in all (rounded up to whole updates); ignored when epochs is set.
    gradient_steps: int = 2000
    # Passes over the training demos (None: gradient_steps decides).
    epochs: Optional[int] = None
    # Gradient steps per update: the unit of logging, validation, eval.every_updates and
    # checkpoint.every_updates.
    steps_per_update: int = 100
    # Samples (demo steps) per minibatch.
    batch_size: int = 256
    # With scene views in the dataset (vla-demos unlabelled=true): the share of each minibatch drawn from the
    # labelled demos, the rest from the scene views (None: uniform over all samples, so 50 demos beside 4,000
    # scene views put about 5 labelled samples in a batch of 256).
    labelled_fraction: Optional[float] = None
    # Adam learning rate of the action expert and any trainable backbone part.
    learning_rate: float = 1e-3
    # With backbone.train_image_tower=true: the image tower's own learning rate (None: learning_rate), annealed
    # as learning_rate is. A clone started from a frozen-tower clone (init_from) can fine-tune its tower gently.
    image_tower_learning_rate: Optional[float] = None
    adam_eps: float = 1e-8
    weight_decay: float = 0.0
    # Anneal the learning rate linearly to zero over the run.
    anneal_lr: bool = True
    # Global gradient-norm clip.
    max_grad_norm: float = 1.0
    # Normalize the state vector by the mean/std of the training demos' states (saved with the checkpoint, and
    # where a PPO run started from it continues them).
    norm_state: bool = True
    # Clip normalized states to +-this.
    clip_norm: float = 10.0
    # Weight of the auxiliary loss PPO's privileged_aux_coef adds (a linear head predicts obs["privileged"], which
    # the demos must hold: record them with env.privileged_obs=true), here beside the NLL: a dense supervised
    # signal of where things are, for camera policies cloned from few demos (0: off). PPO started from the clone
    # needs the same head (algo.privileged_aux_coef > 0 with the same privileged_aux_source).
    privileged_aux_coef: float = 0.0
    # "expert" (the action expert's last features) or "first_token" (the backbone's first token).
    privileged_aux_source: str = "expert"
    # "mse" or "huber", as PPO's privileged_aux_loss.
    privileged_aux_loss: str = "mse"


# ------------------------------------------------------------------------------------------- the whole run
@dataclass
class CheckpointConfig:
    # Write a checkpoint every this many updates (and always at the end).
    every_updates: int = 10
    # How many recent checkpoints to keep on disk.
    keep: int = 3


@dataclass
class EvalConfig:
    # Evaluate every this many updates during training (0: only at the end); the best checkpoint by
    # evaluation success rate is kept as checkpoints/best.
    every_updates: int = 0
    # Episodes per evaluation.
    episodes: int = 20
    # Act with the mean action (False: sample).
    deterministic: bool = True
    # Run an evaluation after training ends (written to <run>/eval/final/).
    at_end: bool = True
    # Parallel envs for evaluation (None: num_envs).
    num_envs: Optional[int] = None
    # Episode i of the final evaluation starts from reset(seed=seed + i): the same episodes each time, and the
    # same as vla-eval's (its default seed is this one too).
    seed: int = 100_000
    # Seed of the first episode of the periodic evaluations (every_updates), which choose checkpoints/best: kept
    # apart from seed, so a best checkpoint's vla-eval score is not inflated by the episodes that chose it.
    # With periodic evaluations on, the last update is evaluated on these seeds too, to compete for best.
    select_seed: int = 200_000
    # Episodes recorded as captioned videos in the final evaluation (0: none).
    video_episodes: int = 2
    video_fps: int = 20
    # Also evaluate every time on the held-out split (env.split=heldout: tabletop colours and instruction
    # paraphrases a env.split=train run never sees; robosuite Lift's smaller cube), with the same seeds;
    # reported separately (eval_heldout/* tags, a "heldout" section in report.json and report.md). The best
    # checkpoint is still chosen on the main split.
    heldout: bool = False


@dataclass
class CurriculumStageConfig:
    """One difficulty stage of a tabletop curriculum."""

    # Half-width (metres) of the square objects are placed in (None: env.placement_range).
    placement_range: Optional[float] = None
    # Objects on the table, the named one included (None: env.num_objects).
    num_objects: Optional[int] = None


@dataclass
class CurriculumConfig:
    """Widen the task's difficulty as the evaluation success rate rises (vla/curriculum.py; tabletop envs,
    PPO). The periodic evaluation (eval.every_updates) runs on the current stage's difficulty; one whose
    success rate reaches promote_at moves the run to the next stage, from each env's next episode on."""

    enabled: bool = False
    # Stages, easiest first (see conf/curriculum/tabletop_widen.yaml).
    stages: List[CurriculumStageConfig] = field(default_factory=list)
    # Evaluation success rate that promotes the run to the next stage.
    promote_at: float = 0.8
    # Evaluations at a stage before it can be left (the promoting one included).
    min_evals_per_stage: int = 1


@dataclass
class WatchConfig:
    """Warnings (printed once, logged as alerts/*) when exploration collapses or updates blow up."""

    # Mean action standard deviation (normalized units) below which exploration has collapsed.
    min_action_std: float = 0.02
    # Policy entropy below which exploration has collapsed (None: not watched).
    min_entropy: Optional[float] = None
    # Approximate KL of an update above which the policy moved too far.
    max_approx_kl: float = 0.5


@dataclass
class DistributedConfig:
    """Where rollouts are collected. "none": the trainer steps its own vector env. "ray": env workers run as Ray
    actors (on any node of a Ray cluster), each with a vector env and a copy of the policy; the trainer is the
    central learner that updates and broadcasts the trainable weights (see vla/distributed.py)."""

    # "none" or "ray".
    name: str = "none"
    # Rollout worker actors (ray only).
    num_workers: int = 2
    # Envs each worker steps; None: num_envs split evenly between the workers. When set, the run has
    # num_workers * envs_per_worker envs in all (num_envs is then ignored).
    envs_per_worker: Optional[int] = None
    # Ray cluster to join: "auto" (the cluster started on this node with `ray start`), "ray://host:10001" or
    # None (start a local Ray instance with this machine's CPUs).
    address: Optional[str] = None
    # CPUs Ray reserves for each worker actor (its env processes and policy copy); Ray places workers by it.
    cpus_per_worker: float = 1.0
    # Torch threads of each worker's policy copy.
    worker_torch_threads: int = 1


@dataclass
class TrainConfig:
    env: EnvConfig = MISSING
    backbone: BackboneConfig = MISSING
    policy: PolicyConfig = MISSING
    critic: CriticConfig = MISSING
    algo: AlgoConfig = MISSING
    seed: int = 0
    num_envs: int = 8
    # Split the envs into two groups of async workers, half a step apart: one group steps while the policy
    # infers for the other, so env stepping and inference overlap (throughput: experiments/bench_throughput.py).
    # Needs env.vector_mode=async and num_envs >= 2 (with distributed=ray: envs per worker).
    overlap_envs: bool = False
    total_env_steps: int = 200_000
    # "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    # Torch threads of the trainer process. One by default: the heads and the PPO update are small, and on cores
    # shared with env workers or other jobs a second thread made training 20x slower here (measured in
    # experiments/results/bench_throughput.md). Raise it for large backbones on cores of their own.
    torch_threads: int = 1
    # Make torch pick deterministic kernels (slower on GPU).
    deterministic_torch: bool = False
    # Continue a run from a checkpoint directory or a run directory (its latest checkpoint).
    resume: Optional[str] = None
    # Start a fresh run from the trainable weights and state normalizer of a BC or PPO checkpoint (or a run
    # directory's latest): new step counters, optimizer and run directory. Ignored when resuming.
    init_from: Optional[str] = None
    # Demonstrations (robomimic-style HDF5 written by vla-demos) for algo=bc: a path, or a list of paths
    # trained on together (dataset=[demos.hdf5,dagger_round1.hdf5]).
    dataset: Optional[Any] = None
    # Print a console progress bar.
    progress: bool = True
    # Consecutive updates skipped for NaN/inf (in states, rewards, losses or gradients) before the run stops.
    max_nonfinite_updates: int = 3
    # Env failures (a worker raising or dying) without a completed rollout in between before the run stops;
    # each failure rebuilds the vector env and drops the episodes in progress.
    max_env_failures: int = 3
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


@dataclass
class EvalRunConfig:
    """``vla-eval``: evaluate a checkpoint; env/backbone overrides are applied on top of the checkpoint's config."""

    checkpoint: str = MISSING
    # More checkpoints (or run directories) that act together with checkpoint as one policy: the average of
    # their mean actions (deterministic only), e.g. clones of several seeds.
    ensemble: List[str] = field(default_factory=list)
    episodes: int = 20
    deterministic: bool = True
    num_envs: int = 4
    # Seed of the first evaluation episode; episode i uses seed + i, so reports are reproducible.
    seed: int = 100_000
    device: str = "auto"
    # Torch threads, as vla-train's torch_threads: one by default. With torch's default (one per core) two
    # evaluations of a pixel push policy side by side on the 2 cores here had not finished after 12 minutes;
    # each takes 72 s alone.
    torch_threads: int = 1
    # Override the env config stored in the checkpoint (None: evaluate on the training env).
    env: Optional[Any] = None
    # Also evaluate on the held-out split (env.split=heldout, same seeds), reported separately.
    heldout: bool = False
    progress: bool = True
    # Write captioned videos of the first video_episodes episodes (successes and failures alike).
    video: bool = False
    video_episodes: int = 4
    video_fps: int = 20


@dataclass
class DemosConfig:
    """``vla-demos``: roll out the env's scripted expert (or a policy the expert labels) and write a
    robomimic-style HDF5 dataset."""

    env: EnvConfig = MISSING
    # Demonstrations to write.
    episodes: int = 20
    # Attempt i starts from reset(seed=seed + i) (stored per demo as its "seed" attribute).
    seed: int = 0
    # Keep only the successful episodes (False: keep every attempt). None: True when the expert acts, False
    # with checkpoint= (DAgger needs the states of the episodes the policy fails most).
    only_successful: Optional[bool] = None
    # Give up after this many attempts (None: 2 * episodes + 10).
    max_attempts: Optional[int] = None
    # Share of the demos listed under mask/valid (held out from BC training, for its validation loss).
    valid_fraction: float = 0.1
    # Camera observation keys to store (None: all; []: none, for state-only training).
    image_keys: Optional[List[str]] = None
    # Where to write the dataset (None: demos.hdf5 in hydra's run directory).
    output: Optional[str] = None
    # Envs stepped side by side (1: in this process). Demos come out in seed order whatever the number.
    num_envs: int = 1
    # A checkpoint (or run directory) whose policy acts instead of the expert, which only labels the states
    # the policy reaches with its own actions: a DAgger round (stateless experts only: the tabletop tasks).
    checkpoint: Optional[str] = None
    # With checkpoint=: more checkpoints that act with it as one policy, the average of their mean actions
    # (as vla-eval's ensemble).
    ensemble: List[str] = field(default_factory=list)
    # With checkpoint=: the chance per step that the expert's action runs instead of the policy's (DAgger's
    # beta).
    expert_mix: float = 0.0
    # With checkpoint=: act with the policy's mean action (False: sample from it).
    deterministic: bool = True
    # Standard deviation of Gaussian noise added to every executed action (normalized units, then clipped to
    # [-1, 1]) while the expert's clean action is stored as the label (DART, Laskey et al. 2017): the demos then
    # show the way back from states just off the expert's path, where a clone's own small errors take it. Works
    # with every expert, stage machines included (they read the current state each step); what ran is kept as
    # executed_actions. 0: off.
    action_noise: float = 0.0
    # Scene views instead of demonstrations: uniform random actions from each seed's reset, every episode kept
    # (env.max_episode_steps sets their length), no expert needed or asked. The demos are marked labelled=false:
    # behaviour cloning trains only the auxiliary privileged-state loss on them (algo.privileged_aux_coef, with
    # env.privileged_obs=true), so the grounded token can learn where things are from many more scenes than a
    # few demonstrations show: dataset=[<demos>,<scenes>].
    unlabelled: bool = False
    # With checkpoint=: where and with how many threads the policy runs (auto: CUDA when available).
    device: str = "auto"
    torch_threads: int = 1
    progress: bool = True


# Each config group's schemas by the field that picks one (env: kind; the others: name), for
# ``complete_saved_config``.
GROUP_SCHEMAS = {
    "env": ("kind", (GymEnvConfig, TabletopEnvConfig, RobosuiteEnvConfig)),
    "backbone": ("name", (StateBackboneConfig, TowersBackboneConfig, HFBackboneConfig)),
    "policy": ("name", (GaussianMLPPolicyConfig, GaussianTransformerPolicyConfig)),
    "critic": ("name", (MLPCriticConfig, AttentionCriticConfig)),
    "algo": ("name", (PPOConfig, BCConfig)),
}


def complete_saved_config(saved: DictConfig) -> DictConfig:
    """A checkpoint's saved run config with the fields added to the schemas since it was written filled in
    with their defaults (an older checkpoint lacks e.g. backbone.dtype, and rebuilding its model failed on the
    missing key). Saved values win; fields the schemas no longer have are kept."""
    completed = OmegaConf.create(OmegaConf.to_container(saved, resolve=False))
    for group, (field_name, schemas) in GROUP_SCHEMAS.items():
        node = completed.get(group)
        if node is None or field_name not in node:
            continue
        for schema in schemas:
            defaults = OmegaConf.structured(schema)
            if defaults[field_name] == node[field_name]:
                completed[group] = OmegaConf.merge(OmegaConf.create(OmegaConf.to_container(defaults)), node)
                break
    return completed


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    cs.store(name="eval_schema", node=EvalRunConfig)
    cs.store(name="demos_schema", node=DemosConfig)
    cs.store(group="env", name="gym_schema", node=GymEnvConfig)
    cs.store(group="env", name="tabletop_schema", node=TabletopEnvConfig)
    cs.store(group="env", name="robosuite_schema", node=RobosuiteEnvConfig)
    cs.store(group="backbone", name="state_schema", node=StateBackboneConfig)
    cs.store(group="backbone", name="towers_schema", node=TowersBackboneConfig)
    cs.store(group="backbone", name="hf_schema", node=HFBackboneConfig)
    cs.store(group="policy", name="gaussian_mlp_schema", node=GaussianMLPPolicyConfig)
    cs.store(group="policy", name="gaussian_transformer_schema", node=GaussianTransformerPolicyConfig)
    cs.store(group="critic", name="mlp_schema", node=MLPCriticConfig)
    cs.store(group="critic", name="attention_schema", node=AttentionCriticConfig)
    cs.store(group="algo", name="ppo_schema", node=PPOConfig)
    cs.store(group="algo", name="bc_schema", node=BCConfig)
    cs.store(group="distributed", name="distributed_schema", node=DistributedConfig)
    cs.store(group="curriculum", name="curriculum_schema", node=CurriculumConfig)
