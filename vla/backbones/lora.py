"""LoRA adapters (Hu et al., 2021) on a backbone's pretrained towers, through peft."""

from __future__ import annotations

from torch import nn

from vla.errors import ConfigError


def apply_lora(towers: nn.Module, lora_cfg) -> None:
    """Insert LoRA adapters into ``towers`` in place; afterwards only the adapters are trainable there.

    ``lora_cfg.target_modules`` lists module name suffixes as peft matches them (``["q_proj", "v_proj"]``);
    ``rank`` 0 means no adapters.
    """
    if lora_cfg.rank <= 0:
        return
    from peft import LoraConfig, inject_adapter_in_model

    targets = list(lora_cfg.target_modules)
    config = LoraConfig(r=lora_cfg.rank, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                        target_modules=targets)
    try:
        inject_adapter_in_model(config, towers)
    except ValueError as error:
        linear_names = sorted({name.rsplit(".", 1)[-1] for name, module in towers.named_modules()
                               if isinstance(module, (nn.Linear, nn.Conv2d))})
        raise ConfigError(f"backbone.lora.target_modules={targets} matches no module of this backbone ({error}); "
                          f"layer names it has: {linear_names[:40]}") from error
    for name, parameter in towers.named_parameters():
        parameter.requires_grad_("lora_" in name)
