"""Any Hugging Face vision-language model as a frozen backbone.

The model loads with ``AutoModelForImageTextToText`` and its ``AutoProcessor`` from a local directory or a hub
id, exactly as ``from_pretrained`` resolves them. A step's prompt holds the camera images and the instruction;
the tokens are the hidden states of one decoder layer (``hidden_states[layer]``) with the attention mask.
"""

from __future__ import annotations

import inspect
from typing import Dict, List

import torch
from torch import nn

from vla.backbones.base import Backbone, FrozenFeatures, Tokens, has_instruction, image_keys
from vla.backbones.lora import apply_lora
from vla.errors import ConfigError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class HFBackbone(Backbone):
    """A frozen VLM read at one layer, then a trainable LayerNorm + linear map to ``hidden_size``.

    Every prompt is padded to one fixed length (the prompt with an empty instruction plus
    ``max_instruction_tokens``), so the frozen features of all steps have the same shape and rollout storage
    can keep them. Frozen features: ``hidden`` (B, T, width of the VLM) in the model's dtype and ``mask``.
    """

    def __init__(self, cfg, observation_space):
        super().__init__()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if cfg.dtype not in DTYPES:
            raise ConfigError(f"backbone.dtype={cfg.dtype!r}; choose one of {sorted(DTYPES)}")
        self.cameras = image_keys(observation_space)
        if not self.cameras:
            raise ConfigError("backbone=hf reads camera images, but this env's observation has none: "
                              f"{sorted(observation_space.spaces)}")
        self.uses_instruction = has_instruction(observation_space)
        self.cfg = cfg
        self.dtype = DTYPES[cfg.dtype]
        load_kwargs = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
        self.processor = AutoProcessor.from_pretrained(cfg.model, **load_kwargs)
        self.vlm = AutoModelForImageTextToText.from_pretrained(cfg.model, dtype=self.dtype, **load_kwargs).eval()
        self.vlm.requires_grad_(False)
        apply_lora(self.vlm, cfg.lora)

        text_config = self.vlm.config.get_text_config()
        num_layers = int(text_config.num_hidden_layers)
        # hidden_states holds the embeddings output and then one entry per decoder layer.
        if not -(num_layers + 1) <= cfg.layer <= num_layers:
            raise ConfigError(f"backbone.layer={cfg.layer}; {cfg.model} has {num_layers} decoder layers, so "
                              f"hidden_states indices run from {-(num_layers + 1)} to {num_layers}")
        # Only hidden states are read: ask for the logits of one position instead of the whole vocabulary at
        # every position, where the model supports it.
        self._forward_kwargs = {"output_hidden_states": True}
        if "logits_to_keep" in inspect.signature(self.vlm.forward).parameters:
            self._forward_kwargs["logits_to_keep"] = 1

        model_width = int(text_config.hidden_size)
        self.projection = nn.Sequential(nn.LayerNorm(model_width), nn.Linear(model_width, cfg.hidden_size))
        self.hidden_size = cfg.hidden_size
        self._prompts: List[str] = []  # rendered prompt of instruction i
        blank_images = [torch.zeros(observation_space[camera].shape, dtype=torch.uint8) for camera in self.cameras]
        prompt_length = self.processor(text=[self._render_prompt("")], images=[[i.numpy() for i in blank_images]],
                                       return_tensors="pt")["input_ids"].shape[1]
        self.sequence_length = prompt_length + cfg.max_instruction_tokens

    def _render_prompt(self, instruction: str) -> str:
        """One user turn with every camera image, then the instruction; the processor's chat template when
        ``prompt_template`` is unset, else the template with ``{image}`` as the processor's image token(s)."""
        if self.cfg.prompt_template is not None:
            image = getattr(self.processor, "image_token", None)
            if image is None:
                raise ConfigError(f"backbone.prompt_template: {self.cfg.model}'s processor names no image token")
            return self.cfg.prompt_template.format(image=image * len(self.cameras), instruction=instruction)
        if getattr(self.processor, "chat_template", None) is None:
            raise ConfigError(f"{self.cfg.model}'s processor has no chat template; set backbone.prompt_template, "
                              "e.g. '{image}{instruction}'")
        content = [{"type": "image"} for _ in self.cameras] + [{"type": "text", "text": instruction}]
        return self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                  add_generation_prompt=True, tokenize=False)

    def _prompt(self, instruction_id: int) -> str:
        while len(self._prompts) <= instruction_id:  # rendered once per distinct instruction
            self._prompts.append(self._render_prompt(self.instruction_texts[len(self._prompts)]))
        return self._prompts[instruction_id]

    def processor_inputs(self, obs: Dict[str, torch.Tensor]):
        """The processor's output for a batch (prompt tokens, resized and normalized images), on the CPU."""
        batch_size = obs["state"].shape[0]
        if self.uses_instruction:
            prompts = [self._prompt(i) for i in obs["instruction_id"].tolist()]
        else:
            prompts = [self._render_prompt("")] * batch_size
        camera_images = [obs[camera].cpu().numpy() for camera in self.cameras]
        images = [[frames[b] for frames in camera_images] for b in range(batch_size)]
        inputs = self.processor(text=prompts, images=images, padding="max_length", max_length=self.sequence_length,
                                return_tensors="pt")
        if inputs["input_ids"].shape[1] > self.sequence_length:
            raise ConfigError(f"a prompt is {inputs['input_ids'].shape[1]} tokens long, more than "
                              f"{self.sequence_length}; raise backbone.max_instruction_tokens")
        return inputs

    def encode_frozen(self, obs: Dict[str, torch.Tensor]) -> FrozenFeatures:
        inputs = self.processor_inputs(obs).to(device=obs["state"].device, dtype=self.dtype)
        outputs = self.vlm(**inputs, **self._forward_kwargs)
        return {"hidden": outputs.hidden_states[self.cfg.layer], "mask": inputs["attention_mask"].bool()}

    def project(self, features: FrozenFeatures) -> Tokens:
        return Tokens(hidden=self.projection(features["hidden"].float()), mask=features["mask"])

    def identity(self) -> Dict[str, str]:
        return {"name": "hf", "model": self.cfg.model, "revision": str(self.cfg.revision), "dtype": self.cfg.dtype,
                "layer": str(self.cfg.layer), "prompt": str(self.cfg.prompt_template or "chat_template")}
