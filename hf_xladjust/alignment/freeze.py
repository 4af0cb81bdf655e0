"""Layer freezing during realignment (issue 19.4), after AlignFreeze (Bakos et al., NAACL 2025).

Layers are numbered as the hidden states (`--align_layer`): 0 is the embeddings, k the k-th transformer
block (block index k-1), so "freeze layer k" freezes what produces hidden state k. `lower` freezes the first
n//2 blocks and `upper` the last n//2, embeddings trainable in both, as AlignFreeze's
`freeze_realign_unfreeze` and `freeze_realign_unfreeze_last_half` strategies. Frozen parameters get no
gradient and no optimiser state, so they leave training byte-identical.
"""
import logging
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from torch import nn

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)


@dataclass
class FreezeArguments:
    freeze_layers: Optional[str] = field(
        default=None,
        metadata={"help": "Layers that stay frozen during realignment: lower (the first half of the transformer "
                          "blocks, AlignFreeze's freeze_realign_unfreeze), upper (the last half), or a "
                          "comma-separated list of hidden-state indices (0 = embeddings, k = the k-th block), e.g. "
                          "0,1,5. The embeddings train with lower/upper, as in AlignFreeze."},
    )

    def __post_init__(self):
        if self.freeze_layers is not None:
            parse_freeze_layers(self.freeze_layers, num_layers=None)  # syntax only; ranges once the model is known


def parse_freeze_layers(spec: str, num_layers: Optional[int]) -> List[int]:
    """Hidden-state indices to freeze (0 = embeddings, 1..n = blocks) for `spec` with n = `num_layers`
    blocks; with `num_layers=None`, only the syntax is checked (and [] is returned for lower/upper)."""
    spec = spec.strip()
    if spec in ("lower", "upper"):
        if num_layers is None:
            return []
        half = num_layers // 2
        return list(range(1, half + 1)) if spec == "lower" else list(range(num_layers - half + 1, num_layers + 1))
    try:
        indices = sorted({int(part) for part in spec.split(",")})
    except ValueError:
        raise InputError(f"--freeze_layers must be lower, upper or a comma-separated list of layer indices "
                         f"(0 = embeddings), got {spec!r}") from None
    top = num_layers if num_layers is not None else float("inf")
    bad = [i for i in indices if not 0 <= i <= top]
    if bad:
        limit = f"0..{num_layers}" if num_layers is not None else "non-negative"
        raise InputError(f"--freeze_layers: layer indices must be {limit} (0 = embeddings), got {bad}")
    return indices


def transformer_blocks(model: nn.Module) -> Tuple[str, nn.ModuleList]:
    """(name, ModuleList) of the model's transformer blocks: the ModuleList with `config.num_hidden_layers`
    entries (BERT/XLM-R `encoder.layer`, Llama/Qwen2 `layers`, DistilBERT `transformer.layer`), also
    inside a PEFT or task-head wrapper."""
    config = getattr(model, "config", None)
    n = getattr(config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if not found:
        raise InputError(f"--freeze_layers: no list of {n} transformer blocks in {type(model).__name__}")
    return min(found, key=lambda item: item[0].count("."))


def embeddings_module(model: nn.Module, blocks_name: str) -> nn.Module:
    """What produces hidden state 0: the `embeddings` module of the blocks' closest owner that has one
    (BERT family: word, position, type embeddings and their LayerNorm), else the input embeddings (Llama)."""
    parts = blocks_name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        owner = model.get_submodule(".".join(parts[:depth]))
        if isinstance(getattr(owner, "embeddings", None), nn.Module):
            return owner.embeddings
    return model.get_input_embeddings()


def layer_modules(model: nn.Module) -> List[nn.Module]:
    """The modules producing hidden states 0..n: the embeddings, then the n transformer blocks."""
    name, blocks = transformer_blocks(model)
    return [embeddings_module(model, name), *blocks]


def freeze_layers(model: nn.Module, spec: str, align_layer: Optional[int] = None) -> List[int]:
    """Freeze (requires_grad False) the layers `spec` names, LoRA adapters inside them included; returns
    the hidden-state indices frozen. With `align_layer`, a one-line error when nothing at or below that
    hidden state is left to train (the loss would have no gradient)."""
    layers = layer_modules(model)
    indices = parse_freeze_layers(spec, len(layers) - 1)
    modules = [layers[i] for i in indices]
    count = 0
    for module in modules:
        for param in module.parameters():
            param.requires_grad_(False)
            count += param.numel()
    logger.info("Frozen layers %s (0 = embeddings) of %d blocks: %d parameters", indices, len(layers) - 1, count)
    if align_layer is not None:
        top = align_layer % len(layers)  # -1: the last hidden state
        if not any(p.requires_grad for layer in layers[:top + 1] for p in layer.parameters()):
            raise InputError(f"--freeze_layers {spec} leaves nothing to train at or below --align_layer "
                             f"{align_layer} (with --lora_r only adapted modules train)")
    return indices
