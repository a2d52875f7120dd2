"""LoRA: low-rank adapters on chosen linear layers (Hu et al. 2021, "LoRA: Low-Rank Adaptation of
Large Language Models").

A frozen linear layer W0 becomes  h = W0 x + (alpha / r) * B A dropout(x)  with A (r, in) random and
B (out, r) zero, so training starts from the unchanged model (paper Sec. 4.1). Only A and B train;
the base weights are never touched. `merge_lora` folds B A back into W0 and restores plain
`nn.Linear` layers, so an exported model loads without any LoRA code.

Targets are found by the leaf name of `nn.Linear` modules: the project's transformer models name
their attention projections `q`, `k`, `v` and their feed-forward layers `fc1`, `fc2`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sitscli.core.errors import ConfigError

TARGET_GROUPS = {"qkv": ("q", "k", "v"), "ffn": ("fc1", "fc2")}
TARGET_LAYERS = ("q", "k", "v", "fc1", "fc2")

# Defaults: the LoRA configuration reported for SITS-BERT (issue 11): r 16, alpha 24, adapter
# dropout 0.01, on the query and value projections only (Hu et al. Sec. 7.1 also find W_q, W_v the
# best pair for a given budget): 3 layers x 2 projections x 16 x (256 + 256) = 49,152 adapter
# weights at hidden 256. Its learning rate (1e-5) is the model's TRAINING["lora"] setting.
DEFAULT_RANK = 16
DEFAULT_ALPHA = 24.0
DEFAULT_DROPOUT = 0.01
DEFAULT_TARGETS = "q,v"


class LoRALinear(nn.Module):
    """A frozen `nn.Linear` plus a trainable low-rank update. x (..., in) -> (..., out)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base = base.requires_grad_(False)
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=base.weight.device))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))   # the init nn.Linear gives its weight
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (self.dropout(x) @ self.lora_a.T @ self.lora_b.T) * self.scale

    def merged(self) -> nn.Linear:
        """A plain linear layer computing the same function (without adapter dropout)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None,
                        device=self.base.weight.device, dtype=self.base.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.base.weight + self.scale * (self.lora_b @ self.lora_a))
            if self.base.bias is not None:
                out.bias.copy_(self.base.bias)
        return out


def parse_targets(spec: str) -> tuple[str, ...]:
    """'q,v', 'qkv' or 'qkv,ffn' (groups and single layers mixed) -> the leaf names of the layers to adapt."""
    items = [g.strip() for g in spec.split(",") if g.strip()]
    unknown = [g for g in items if g not in TARGET_GROUPS and g not in TARGET_LAYERS]
    if not items or unknown:
        raise ConfigError(f"--lora-targets {spec!r}: use a comma list of {', '.join((*TARGET_GROUPS, *TARGET_LAYERS))} "
                          f"(e.g. q,v or qkv,ffn)")
    names = [name for g in items for name in TARGET_GROUPS.get(g, (g,))]
    return tuple(dict.fromkeys(names))   # each layer once, in the order given


def apply_lora(module: nn.Module, targets: tuple[str, ...], rank: int = DEFAULT_RANK,
               alpha: float = DEFAULT_ALPHA, dropout: float = DEFAULT_DROPOUT) -> list[nn.Parameter]:
    """Freeze every parameter of `module`, wrap the targeted linear layers, return the adapter parameters."""
    if rank < 1:
        raise ConfigError(f"--lora-rank must be at least 1 (got {rank})")
    module.requires_grad_(False)
    found = [(parent, name, child) for parent in module.modules() for name, child in parent.named_children()
             if name in targets and isinstance(child, nn.Linear)]
    if not found:
        raise ConfigError(f"this model has no linear layers named {', '.join(targets)}: LoRA cannot be applied to it")
    adapters = []
    for parent, name, child in found:
        wrapped = LoRALinear(child, rank, alpha, dropout)
        setattr(parent, name, wrapped)
        adapters += [wrapped.lora_a, wrapped.lora_b]
    return adapters


def merge_lora(module: nn.Module) -> nn.Module:
    """Replace every `LoRALinear` inside `module` by its merged plain `nn.Linear` (in place)."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
    return module
