"""Stage 1: `AdjustTrainer`, a Trainer whose loss is the alignment loss (Eq. 1), and its config."""
import copy
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

import torch
from transformers import AutoModel, AutoModelForMaskedLM, AutoModelForPreTraining, PreTrainedModel, TrainingArguments

from hf_xladjust.alignment.loss import AlignmentLoss
from hf_xladjust.alignment.pairs import AlignedPairCollator
from hf_xladjust.cli import OVERWRITE_HELP
from hf_xladjust.compat import apply_warmup_ratio, ga_corrected_loss
from hf_xladjust.trainers.base import MetricsLoggingTrainer

logger = logging.getLogger(__name__)


@dataclass
class AdjustTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the optimiser settings of the paper's code (Cao et al.'s): Adam
    β2=0.98, ε=1e-9, lr 5e-5, linear warm-up over 10% then constant, one epoch, 32 sentence pairs,
    no gradient clipping. `warmup_ratio` works on every supported release (see hf_xladjust.compat)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "Adam learning rate (paper: 5e-5)."})
    adam_beta2: float = field(default=0.98, metadata={"help": "Adam β2 (Cao et al.: 0.98)."})
    adam_epsilon: float = field(default=1e-9, metadata={"help": "Adam ε (Cao et al.: 1e-9)."})
    weight_decay: float = field(default=0.0, metadata={"help": "No weight decay in the paper's code."})
    lr_scheduler_type: str = field(
        default="constant_with_warmup", metadata={"help": "Warm-up then constant, as the paper's code."}
    )
    warmup_ratio: float = field(
        default=0.1, metadata={"help": "Linear warm-up over this fraction of the steps (paper: 0.1); an explicit "
                                       "--warmup_steps N takes precedence."}
    )
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0 (the default) does not clip, as the paper's loop."}
    )
    num_train_epochs: float = field(default=1.0, metadata={"help": "One pass over the aligned corpus."})
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Sentence pairs per step (paper: 32)."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the aligned-pair columns are not model arguments."}
    )
    save_strategy: str = field(default="no", metadata={"help": "Only the final model is saved by default."})
    logging_steps: float = field(default=10, metadata={"help": "Log loss, align_loss and anchor_loss this often."})
    # Ours: transformers 5 dropped TrainingArguments.overwrite_output_dir (4.46 has it, unused by the Trainer).
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})
    save_encoder_only: bool = field(
        default=False,
        metadata={"help": "Save the bare adjusted encoder (AutoModel), dropping the checkpoint's pretraining head. "
                          "By default a checkpoint whose config names a ...ForMaskedLM or ...ForPreTraining "
                          "architecture is loaded with that head, its encoder adjusted, and saved whole, so "
                          "pipeline('fill-mask') on --output_dir uses the checkpoint's own head (its decoder is "
                          "tied to the adjusted input embeddings; the rest of the head is not trained). AutoModel "
                          "and every AutoModelFor... load either folder."},
    )

    def __post_init__(self):
        apply_warmup_ratio(self)  # transformers 5.x reads the ratio only as a float warmup_steps
        super().__post_init__()


PRETRAINING_HEADS = (("ForPreTraining", AutoModelForPreTraining), ("ForMaskedLM", AutoModelForMaskedLM))


def load_model_to_adjust(model_name_or_path: str, config, save_encoder_only: bool = False,
                         **kwargs) -> PreTrainedModel:
    """The model run_adjust.py saves: with its pretraining head when the checkpoint has one (its config's
    `architectures` names a ...ForPreTraining or ...ForMaskedLM class and the head's weights are all there),
    the bare encoder (`AutoModel`) otherwise or with `save_encoder_only`. Train `encoder_of(model)`."""
    architectures = [] if save_encoder_only else (getattr(config, "architectures", None) or [])
    for suffix, auto_class in PRETRAINING_HEADS:
        if any(name.endswith(suffix) for name in architectures):
            model, info = auto_class.from_pretrained(model_name_or_path, config=config, output_loading_info=True,
                                                     **kwargs)
            prefix = model.base_model_prefix + "."
            missing = [k for k in info.get("missing_keys", ()) if not k.startswith(prefix)]
            if not missing:
                return model
            logger.warning("%s names %s but lacks head weights (%s...): adjusting and saving the encoder only",
                           model_name_or_path, architectures[0], missing[0])
            break
    return AutoModel.from_pretrained(model_name_or_path, config=config, **kwargs)


def count_over_processes(trainer, count: int) -> float:
    """A per-process counter summed over the processes (a collective: every process must call it)."""
    value = torch.tensor(float(count), device=trainer.args.device)
    return trainer.accelerator.reduce(value, reduction="sum").item()


class AdjustTrainer(MetricsLoggingTrainer):
    """Trains an encoder on the alignment loss (by default as run_adjust.py: `AlignmentLoss` with f0 a frozen
    copy of `model`, batches by `AlignedPairCollator`). `compute_loss` returns Eq. 1 and records its two
    terms, which `log()` averages over the logging window and reports next to `loss`, with
    `batches_without_links`: how many training batches so far (summed over processes) had every link
    truncated away, so that their pull term was 0."""

    # The loss is a per-batch mean and ignores `num_items_in_batch`: the Trainer must divide it
    # by the accumulation steps (4.48.1+: model_accepts_loss_kwargs; 5.x: this flag; 4.46-4.48.0 do
    # not divide, and compute_loss rescales the gradient itself, see hf_xladjust.compat).
    loss_is_scaled_for_ga = False

    def __init__(self, *args, alignment_loss: Optional[AlignmentLoss] = None,
                 model_to_save: Optional[PreTrainedModel] = None, **kwargs):
        super().__init__(*args, **kwargs)
        # The whole model (e.g. with its masked-LM head) whose encoder is `model`: what `save_model()` writes to
        # output_dir. Checkpoints hold the trained encoder alone, so resuming loads into it as before.
        self.model_to_save = model_to_save
        self.model_accepts_loss_kwargs = False
        # Defaults as run_adjust.py: f0 is a frozen copy of the model as it starts, batches are padded aligned pairs.
        if alignment_loss is None:
            alignment_loss = AlignmentLoss(copy.deepcopy(self.model))
        self.alignment_loss = alignment_loss
        if kwargs.get("data_collator") is None and len(args) < 3:
            pad_id = getattr(self.processing_class, "pad_token_id", None)
            pad_id = pad_id if pad_id is not None else getattr(self.model.config, "pad_token_id", None)
            self.data_collator = AlignedPairCollator(pad_id or 0)
        self.batches_without_links = 0
        if self.args.remove_unused_columns:
            raise ValueError("AdjustTrainer needs remove_unused_columns=False (its batches are not model inputs)")

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # The Trainer does not autocast f0 (it is not prepared by the accelerator); do it here.
        with self.accelerator.autocast():
            out = self.alignment_loss(model, inputs)
        mode = "train" if model.training else "eval"
        for key in ("align_loss", "anchor_loss"):
            self.record_metric(key, out[key], mode)
        if model.training and out["num_links"] == 0:
            self.batches_without_links += 1
        loss = ga_corrected_loss(self, out["loss"], num_items_in_batch) if model.training else out["loss"]
        return (loss, out) if return_outputs else loss

    def log(self, logs, *args, **kwargs):
        if "loss" in logs:  # training logs (every process logs, so the sum is a collective all reach)
            logs["batches_without_links"] = count_over_processes(self, self.batches_without_links)
        super().log(logs, *args, **kwargs)

    def _save(self, output_dir=None, state_dict=None):
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        whole = self.model_to_save
        final = os.path.abspath(output_dir) == os.path.abspath(self.args.output_dir)  # not a checkpoint
        if whole is None or whole is self.model or not final:
            return super()._save(output_dir, state_dict)
        if state_dict is not None:  # gathered by FSDP/DeepSpeed: the encoder's, under the whole model's names
            prefix = whole.base_model_prefix + "."
            state_dict = {**whole.state_dict(), **{prefix + k: v for k, v in state_dict.items()}}
        trained, self.model = self.model, whole
        try:
            return super()._save(output_dir, state_dict)
        finally:
            self.model = trained

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
