"""The issue-19 realignment options in one argument dataclass, and the model preparation they ask for.

`RealignmentArguments` joins LoRA (`lora`), sentence-level alignment (`sentence`) and layer freezing
(`freeze`) so that a script adds one dataclass to its parser; each part lives in its own module.
"""
import copy
from dataclasses import dataclass

from hf_xladjust.alignment.freeze import FreezeArguments, freeze_layers
from hf_xladjust.alignment.lora import AdaptersOff, LoraArguments, apply_lora
from hf_xladjust.alignment.sentence import SentenceAlignmentArguments


@dataclass
class RealignmentArguments(LoraArguments, SentenceAlignmentArguments, FreezeArguments):
    """LoRA (--lora_*), sentence-level alignment (--align_level, --sentence_*), layer freezing (--freeze_layers)."""

    def __post_init__(self):
        LoraArguments.__post_init__(self)
        SentenceAlignmentArguments.__post_init__(self)
        FreezeArguments.__post_init__(self)


def prepare_model(model, args: RealignmentArguments, need_anchor: bool = True, align_layer: int = -1):
    """(model to train, f0). With LoRA the model is wrapped by PEFT and f0 is the same model with its
    adapters off; otherwise f0 is a frozen copy. Layers named by --freeze_layers are frozen last (their
    adapters too; an error if nothing at or below `align_layer` still trains). f0 is None when the loss
    does not need it."""
    if args.enabled:
        model = apply_lora(model, args)
        anchor = AdaptersOff(model) if need_anchor else None
    else:
        anchor = copy.deepcopy(model) if need_anchor else None
    if args.freeze_layers:
        freeze_layers(model, args.freeze_layers, align_layer)
    return model, anchor
