"""LoRA adapters for realignment, through PEFT (issue 19.1): in run_adjust.py and in continual alignment.

Only the low-rank adapters train; f0 for the anchor term is the same model with its adapters switched off
(`AdaptersOff`), so no second copy of the weights is held. The output folder holds the adapter (PEFT's
`adapter_config.json` + `adapter_model.safetensors`); `--merge_lora` also writes W + (α/r)·B·A as a plain
checkpoint in `<output_dir>/merged`. It cannot sit beside the adapter: transformers, with PEFT installed,
loads a folder that has `adapter_config.json` as base + adapter, which would apply the update twice.

In continual alignment (run_*_xl.py) the adapters sit on the task model's encoder and its head
(`head_modules`) trains fully as PEFT `modules_to_save`; at the end of training `merge_in_place` saves the
adapter in `<output_dir>/adapter` and folds it into the task model, which is then saved as a plain checkpoint.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

from hf_xladjust.errors import InputError

logger = logging.getLogger(__name__)

MERGED_SUBDIR = "merged"
ADAPTER_SUBDIR = "adapter"  # continual alignment: <output_dir>/adapter beside the merged checkpoint


@dataclass
class LoraArguments:
    """LoRA through PEFT; off unless --lora_r is positive."""

    lora_r: int = field(
        default=0, metadata={"help": "LoRA rank; 0 (the default) trains every weight, as the paper. mid-align: 8. "
                                     "In run_*_xl.py (with continual alignment only): adapters on the task model's "
                                     "encoder, the head trained fully, f0 = the model with adapters off; the output "
                                     "is the merged model (adapter in <output_dir>/adapter)."}
    )
    lora_alpha: float = field(
        default=16.0, metadata={"help": "LoRA α: the update is (α/r)·B·A (mid-align's config/lora_config.json: 16)."}
    )
    lora_dropout: float = field(
        default=0.1, metadata={"help": "Dropout on the LoRA branch's input (mid-align: 0.1)."}
    )
    lora_target_modules: Optional[str] = field(
        default=None,
        metadata={"help": "Comma-separated module names to adapt, or all-linear. Default: PEFT's per-architecture "
                          "list (BERT/XLM-R: query,value; Llama/Qwen2: q_proj,v_proj). mid-align adapts "
                          "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj."},
    )
    merge_lora: bool = field(
        default=False,
        metadata={"help": "run_adjust.py: also save the merged weights W + (α/r)·B·A in <output_dir>/merged, "
                          "loadable with AutoModel / AutoModelFor... without PEFT. (run_*_xl.py always save the "
                          "merged model.)"},
    )

    def __post_init__(self):
        if self.lora_r < 0:
            raise InputError(f"--lora_r must be 0 (off) or positive, got {self.lora_r}")
        if self.lora_r and not self.lora_alpha > 0:
            raise InputError(f"--lora_alpha must be positive, got {self.lora_alpha}")
        if not 0 <= self.lora_dropout < 1:
            raise InputError(f"--lora_dropout must be in [0, 1), got {self.lora_dropout}")
        if self.merge_lora and not self.lora_r:
            raise InputError("--merge_lora needs LoRA (--lora_r > 0)")

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0


def target_modules(args: LoraArguments, config) -> List[str]:
    """--lora_target_modules, or PEFT's default list for the model type (one-line error when it has none)."""
    if args.lora_target_modules:
        names = [n.strip() for n in args.lora_target_modules.split(",") if n.strip()]
        return names[0] if names == ["all-linear"] else names
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(config, "model_type", None)
    if model_type not in DEFAULTS:
        raise InputError(f"no default LoRA target modules for model type {model_type!r}: pass "
                         f"--lora_target_modules (e.g. all-linear)")
    return list(DEFAULTS[model_type])


def head_modules(model) -> List[str]:
    """The task head of an `AutoModelFor…` model: its top-level children with parameters other than the
    encoder (`base_model_prefix`), e.g. `classifier` (sequence/token classification), `qa_outputs` (QA),
    `score` (Llama/Qwen2 classification). Empty for a bare `AutoModel`."""
    prefix = getattr(model, "base_model_prefix", None)
    if not prefix or not hasattr(model, prefix) or getattr(model, prefix) is model:
        return []
    return [name for name, child in model.named_children()
            if name != prefix and any(True for _ in child.parameters())]


def apply_lora(model, args: LoraArguments, modules_to_save: Optional[List[str]] = None):
    """Wrap `model` in a PEFT LoRA model (in place: the base layers are the same tensors, frozen; the LoRA
    layers are injected into `model` itself, which stays the object that runs). `modules_to_save` (a task
    head) train fully and are never adapted, also with `all-linear`."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise InputError("--lora_r needs PEFT: pip install 'hf-xladjust[lora]'") from None
    heads = list(modules_to_save or [])
    in_heads = [name for name, _ in model.named_modules()
                if any(name == h or name.startswith(h + ".") for h in heads)]
    config = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                        target_modules=target_modules(args, model.config), bias="none",
                        modules_to_save=heads or None, exclude_modules=in_heads or None)
    try:
        peft_model = get_peft_model(model, config)
    except ValueError as err:  # "Target modules {...} not found in the base model"
        raise InputError(f"--lora_target_modules: {str(err).splitlines()[0]}") from None
    trainable, total = peft_model.get_nb_trainable_parameters()
    logger.info("LoRA r=%d α=%g on %s: %d of %d parameters train", args.lora_r, args.lora_alpha,
                sorted(peft_model.peft_config["default"].target_modules), trainable, total)
    return peft_model


class AdaptersOff:
    """f0 as the trained PEFT model with its adapters disabled (`disable_adapter()`), in eval mode and without
    gradients for the call only: the base weights are shared, not copied. `module` is what is called (default
    the PEFT model; in continual alignment the task model's encoder, whose LoRA layers the switch turns off).

    It stands in for a frozen model where `AlignmentLoss` expects one: `eval()`, `requires_grad_()` and `to()`
    leave the shared model alone (it is the one being trained), since the mode is set per call."""

    def __init__(self, peft_model, module=None):
        self.peft_model = peft_model
        self.module = module if module is not None else peft_model

    def __call__(self, *args, **kwargs):
        import torch  # here: the grid's planner reads MERGED_SUBDIR without loading torch

        model = self.peft_model
        was_training = model.training
        model.eval()  # no dropout in f0
        try:
            with model.disable_adapter(), torch.no_grad():
                return self.module(*args, **kwargs)
        finally:
            model.train(was_training)

    def parameters(self):
        return self.peft_model.parameters()

    def eval(self):
        return self

    def requires_grad_(self, requires_grad: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self


def save_merged(peft_model, output_dir: str, tokenizer=None) -> str:
    """Merge the adapters into the base weights (in place: call it after the adapter is saved) and save
    the plain model (+ tokenizer) in `<output_dir>/merged`; returns that folder."""
    path = os.path.join(output_dir, MERGED_SUBDIR)
    merged = peft_model.merge_and_unload()
    merged.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    logger.info("Merged LoRA weights saved in %s", path)
    return path


def merge_in_place(peft_model, adapter_dir: Optional[str] = None):
    """Fine-tuning's end (continual alignment with --lora_r): save the adapter and its trained head
    (`modules_to_save`) in `adapter_dir` when given, then fold W + (α/r)·B·A into the base layers and put the
    trained head in place of PEFT's wrapper. Both happen inside the task model that was wrapped, so the object
    the Trainer holds becomes a plain `AutoModelFor…` model with the trained weights; it is returned."""
    if adapter_dir:
        peft_model.save_pretrained(adapter_dir)
        logger.info("LoRA adapter (with the task head) saved in %s", adapter_dir)
    return peft_model.merge_and_unload()
