"""Blocks: the trainable tensors a ZO optimizer perturbs, with the features a policy reads.

A block is one named trainable parameter tensor. Its *role* (q, k, v, o, gate, up, down, norm, embed,
head, lora_A, lora_B, prefix, prompt, other) and *relative depth* in [0, 1] are derived from its name,
generically over architectures (Llama, BERT, GPT-2 style names, and peft's adapters).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
from torch import nn

from l2lzo.errors import check_choice

# Checked in order: adapter roles first (a LoRA matrix inside q_proj is a lora_A block, not a q block).
_ROLE_PATTERNS: tuple[tuple[str, str], ...] = (
    ("lora_A", r"lora_A"),
    ("lora_B", r"lora_B"),
    ("prefix", r"PrefixEncoder|prefix"),
    ("prompt", r"PromptEmbedding|prompt_embeddings|prompt_encoder"),
    ("q", r"q_proj|\.query\b|attn\.q\b"),
    ("k", r"k_proj|\.key\b|attn\.k\b"),
    ("v", r"v_proj|\.value\b|attn\.v\b"),
    ("o", r"o_proj|out_proj|attention\.output\.dense|attn\.c_proj"),
    ("gate", r"gate_proj|w1\b"),
    ("up", r"up_proj|intermediate\.dense|mlp\.c_fc|fc1"),
    ("down", r"down_proj|output\.dense|mlp\.c_proj|fc2"),
    ("norm", r"norm|LayerNorm|ln_"),
    ("embed", r"embed|wte|wpe"),
    ("head", r"lm_head|classifier|score"),
)
ROLES: tuple[str, ...] = (*(role for role, _ in _ROLE_PATTERNS), "other")

_LAYER_INDEX = re.compile(r"\.(?:layers|layer|h|blocks)\.(\d+)\.")


@dataclass(frozen=True)
class Block:
    """One trainable tensor and the module that owns it (where the perturbation is applied)."""

    index: int
    name: str
    role: str
    depth: float
    shape: tuple[int, ...]
    param: nn.Parameter = field(repr=False, compare=False)
    owners: tuple[tuple[nn.Module, str], ...] = field(repr=False, compare=False)

    @property
    def numel(self) -> int:
        return self.param.numel()


def rows_view(tensor: torch.Tensor, rows: slice) -> torch.Tensor:
    """``tensor[rows]``: some rows of a block-shaped tensor, or the tensor itself for a 0-d block (no rows)."""
    return tensor[rows] if tensor.dim() else tensor


def role_of(name: str, module_classes: str = "") -> str:
    """The role of a parameter, from its qualified name and the class names of the modules on its path.

    Class names settle what names cannot: peft's prefix and prompt tuning both store
    ``prompt_encoder.<adapter>.embedding.weight``, inside a PrefixEncoder or a PromptEmbedding.
    """
    text = f"{name} {module_classes}"
    for role, pattern in _ROLE_PATTERNS:
        if re.search(pattern, text):
            return role
    return "other"


def discover_blocks(model: nn.Module) -> list[Block]:
    """All trainable parameters of ``model`` as blocks, in registration order.

    A tied parameter (e.g. input embedding = output head) is one block with several owning modules.
    """
    owners: dict[int, list[tuple[nn.Module, str]]] = {}
    first_name: dict[int, str] = {}
    params: dict[int, nn.Parameter] = {}
    modules: dict[str, nn.Module] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        modules.setdefault(module_name, module)
        for attr, param in module.named_parameters(recurse=False, remove_duplicate=False):
            if not param.requires_grad:
                continue
            key = id(param)
            params[key] = param
            if all(owner is not module for owner, _ in owners.get(key, [])):
                owners.setdefault(key, []).append((module, attr))
            first_name.setdefault(key, f"{module_name}.{attr}" if module_name else attr)
    names = list(first_name.values())
    layer_ids = [int(m.group(1)) for n in names if (m := _LAYER_INDEX.search(n))]
    deepest = max(layer_ids, default=0)
    blocks = []
    for index, (key, name) in enumerate(first_name.items()):
        parts = name.split(".")
        path_classes = " ".join(type(modules[".".join(parts[:i])]).__name__ for i in range(1, len(parts)))
        role = role_of(name, path_classes)
        blocks.append(
            Block(
                index=index,
                name=name,
                role=role,
                depth=_depth(name, role, deepest),
                shape=tuple(params[key].shape),
                param=params[key],
                owners=tuple(owners[key]),
            )
        )
    return blocks


GROUP_LEVELS = ("layer", "attn-mlp", "tensor")
_ATTENTION_ROLES = {"q", "k", "v", "o"}
_MLP_ROLES = {"gate", "up", "down"}


def group_key(block: Block, level: str) -> str:
    """The name of the group ``block`` falls in at ``level`` (see ``GROUP_LEVELS``).

    ``layer``: one group per transformer layer (found by the ``.layers.N.`` style index in the name, so
    any architecture with numbered layers works), and one per role outside the layers (embed, head,
    final norm, prefix, ...). ``attn-mlp`` splits each layer into its attention projections, its MLP
    projections and the rest (norms, adapters' own groups follow their host). ``tensor``: every block alone.
    """
    check_choice("group level", level, GROUP_LEVELS)
    if level == "tensor":
        return block.name
    match = _LAYER_INDEX.search(block.name)
    if not match:
        return block.role
    layer = f"layer.{int(match.group(1))}"
    if level == "layer":
        return layer
    host = role_of(block.name.replace("lora_A", "").replace("lora_B", ""))
    part = "attn" if host in _ATTENTION_ROLES else "mlp" if host in _MLP_ROLES else "other"
    return f"{layer}.{part}"


def group_blocks(blocks: list[Block], level: str) -> dict[str, list[Block]]:
    """Blocks grouped by ``group_key`` at ``level``, groups in order of first appearance."""
    groups: dict[str, list[Block]] = {}
    for block in blocks:
        groups.setdefault(group_key(block, level), []).append(block)
    return groups


def _depth(name: str, role: str, deepest: int) -> float:
    match = _LAYER_INDEX.search(name)
    if match:
        return int(match.group(1)) / deepest if deepest else 0.0
    if role == "head" or re.search(r"final|\.norm\.|^norm\.", name):
        return 1.0
    return 0.0
