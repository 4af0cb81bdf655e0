"""Stage 2 option: continual alignment while fine-tuning (Eq. 2), as a Trainer subclass.

    L = L_target + align_weight * L_pull + anchor_weight * L_anchor

Each optimisation step adds ONE side batch of `align_batch_size` aligned sentence pairs, drawn with
replacement from the aligned pool, through the encoder of the model being trained (the DDP-wrapped
one's `.module`), in the same backward as the task loss. The anchor term is not scaled by α, as in
the paper's code (`align_wght 0.01`, `base_diff_wght 1`), and f0 is the original model.

Realignment options (issue 19). `continual_kwargs` takes run_adjust.py's `RealignmentArguments`: the side loss
is `build_alignment_loss`'s (word level, or `--align_level sentence`: InfoNCE over the side batch's sentences),
`--freeze_layers` freezes those layers of the task model for the whole fine-tuning (`prepare_model`), and
`--lora_r` puts LoRA adapters on the task model's encoder with its head fully trainable (PEFT `modules_to_save`),
f0 being the same model with its adapters off; at the end of `train()` the adapter is saved in
`<output_dir>/adapter` and merged into the model, so what is saved and evaluated is a plain checkpoint
(`_finish_lora`; docs/realignment.md). `align_schedule="alternate"` (`--align_schedule`) replaces the
summed loss by alignment-only optimizer steps, one after each task step (`_alignment_step`; one process only).

Gradient accumulation. The side loss is added on the first micro-step of each optimisation step,
multiplied by the factor the Trainer will divide that micro-step's loss by (1 when the task loss is
normalised by `num_items_in_batch`, the number of accumulated micro-batches otherwise), so it counts
exactly once per update. Many task heads (BERT's and XLM-R's classification/QA heads among them)
declare `**kwargs` but ignore `num_items_in_batch`; the Trainer then skips its division and the task
gradient grows with the accumulation steps (and, under `average_tokens_across_devices`, with the
number of processes; transformers#47688). On the first training step this trainer checks, without
gradients and in eval mode, whether the task loss really honours `num_items_in_batch`, and if it does
not, treats it as the per-batch mean it is. Where the installed Trainer divides by the accumulation
steps when it should not, or not when it should (transformers 4.46-4.48.0 never or seldom divide),
the task loss's gradient is rescaled (`hf_xladjust.compat.ga_corrected_loss`); on 5.x it is left alone.

Distributed training. The side batch goes through `model.module.base_model`, i.e. not through the
DDP wrapper's forward. That is enough: the reducer's hooks sit on each parameter's gradient
accumulator and fire once per backward with the summed gradient of every path (the task forward
through the wrapper prepared the reducer for this backward), so the side gradients are all-reduced
with the rest. With `find_unused_parameters=True` this also holds, because the side path only uses
the task model's own encoder, which the task forward used too. tests/test_continual_trainer.py checks,
on two gloo ranks with both settings, that the DDP gradient is the mean of the ranks' task + side
gradients and that the parameters stay identical.

Side batches. The indices of step `s` on rank `r` come from `numpy.random.default_rng([seed, r, s])`:
every rank draws its own batches, and a resumed run continues the same stream with nothing saved.

Any Trainer. The side loss is added in `training_step`, to the loss of whatever `compute_loss` the class
resolves to, so a user's subclass mixed in on either side (`class X(MyTrainer, ContinualAlignTrainer)`,
or the other order), a `compute_loss` override with or without `super()`, and `compute_loss_func=` all
align; when `ContinualAlignTrainer.compute_loss` runs it adds the side loss itself (once per step either
way). A callback checks before every optimizer step that the step's side loss was added, and stops with
`ContinualAlignmentError` if not (a `training_step` override that skips ours): never a silent drop.
"""
import copy
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from transformers import AutoConfig, Trainer, TrainerCallback, TrainingArguments

from hf_xladjust.alignment.anchor import load_anchor_model, resolve_anchor, resolve_anchor_path  # noqa: F401 (re-exported)
from hf_xladjust.alignment.freeze import freeze_layers
from hf_xladjust.alignment.lora import ADAPTER_SUBDIR, AdaptersOff, apply_lora, head_modules, merge_in_place
from hf_xladjust.alignment.loss import AlignmentLoss, AlignmentLossArguments, encoder_of
from hf_xladjust.alignment.pairs import (
    AlignedPair,
    AlignedPairCollator,
    AlignedPairDataset,
    AlignmentDataArguments,
    build_aligned_pairs,
    read_aligned_pairs,
)
from hf_xladjust.alignment.parallel import ParallelDatasetArguments
from hf_xladjust.alignment.realign import RealignmentArguments, prepare_model
from hf_xladjust.alignment.sentence import build_alignment_loss, check_sentence_options
from hf_xladjust.cli import OVERWRITE_HELP, load_pretrained
from hf_xladjust.compat import accumulation_steps, ga_corrected_loss, trainer_divides_by_ga
from hf_xladjust.errors import InputError
from hf_xladjust.files import InputPath
from hf_xladjust.sampling import subsample_indices
from hf_xladjust.trainers.adjust import count_over_processes
from hf_xladjust.trainers.base import MetricsLoggingTrainer

logger = logging.getLogger(__name__)


@dataclass
class FineTuningArguments(TrainingArguments):
    """`TrainingArguments` as the paper's fine-tuning loops (XNLI, WikiANN, SQuAD) ran: transformers'
    `AdamW` (ε=1e-6), linear decay to 0 without warm-up, no gradient clipping, batch 32. Each
    run_*_xl.py subclasses it with its task's learning rate and epochs."""

    adam_epsilon: float = field(
        default=1e-6, metadata={"help": "AdamW ε (the paper's loops: transformers' AdamW, default 1e-6)."}
    )
    max_grad_norm: float = field(
        default=0.0, metadata={"help": "Gradient clipping norm; 0 (the default) does not clip, as the paper's loops."}
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Training batch (paper: 32)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch."})
    # Ours: transformers 5 dropped TrainingArguments.overwrite_output_dir (4.46 has it, unused by the Trainer).
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})


ALIGN_SCHEDULES = ("sum", "alternate")


@dataclass
class ContinualAlignArguments(ParallelDatasetArguments):
    """Continual alignment during fine-tuning; parsed by every run_*_xl.py. The parallel corpus: files,
    a Hub dataset with a `translation` column (`--parallel_dataset`), or run_adjust.py's aligned pairs.
    Aligner and link options come from `AlignmentDataArguments`, pooling/layer/anchor weight from
    `AlignmentLossArguments`."""

    align_train_file: Optional[str] = field(
        default=None, metadata={"help": "Parallel corpus for continual alignment: one 'en ||| xx' pair a line "
                                        "('xx ||| en' with --target_lang en or --english_side target)."}
    )
    align_source_file: Optional[str] = field(
        default=None, metadata={"help": "Or: the source side (English unless --english_side target), one sentence a "
                                        "line."}
    )
    align_target_file: Optional[str] = field(
        default=None, metadata={"help": "Target side, line-aligned with --align_source_file."}
    )
    aligned_pairs: Optional[str] = field(
        default=None, metadata={"help": "Or: aligned_pairs.jsonl as written by run_adjust.py (no re-alignment)."}
    )
    align_weight: float = field(
        default=0.01, metadata={"help": "α, the weight of the pull term (paper: 0.01, tuned on XNLI dev)."}
    )
    align_batch_size: int = field(
        default=16,
        metadata={"help": "Sentence pairs in the side batch of each optimisation step, drawn with replacement "
                          "(paper's code: 16)."},
    )
    anchor_model_name_or_path: Optional[str] = field(
        default=None,
        metadata={"help": "f0 for the anchor term. Default: the original model; when --model_name_or_path is "
                          "a run_adjust.py output, the model that run started from (its run_args.json)."},
    )
    align_schedule: str = field(
        default="sum",
        metadata={"help": "sum: one step on task loss + alignment loss (the paper's Eq. 2); alternate: after each "
                          "task step, one alignment-only optimizer step on a side batch (after mid-align's "
                          "alternate training; single process only).",
                  "choices": list(ALIGN_SCHEDULES)},
    )

    def __post_init__(self):
        if self.align_schedule not in ALIGN_SCHEDULES:
            raise InputError(f"--align_schedule must be one of {ALIGN_SCHEDULES}, got {self.align_schedule!r}")
        files = bool(self.align_source_file) + bool(self.align_target_file)
        if files == 1:
            raise ValueError("--align_source_file and --align_target_file go together")
        if sum([bool(self.align_train_file), files == 2, bool(self.aligned_pairs), bool(self.parallel_dataset)]) > 1:
            raise ValueError("give one of --align_train_file, --align_source_file/--align_target_file, "
                             "--parallel_dataset, --aligned_pairs")
        if self.align_batch_size < 1:
            raise ValueError("--align_batch_size must be positive")

    @property
    def enabled(self) -> bool:
        """Whether any aligned data was given (continual alignment is on)."""
        return bool(self.align_train_file or self.align_source_file or self.aligned_pairs or self.parallel_dataset)


CONTINUAL_FILES = ("align_train_file", "align_source_file", "align_target_file", "aligned_pairs")


def continual_input_files(args) -> List[InputPath]:
    """The files continual alignment reads in a training run (`args`: the parsed arguments as one namespace,
    see `hf_xladjust.cli.merged_arguments`): its corpus or --aligned_pairs, and a Pharaoh --alignment_file."""
    if not getattr(args, "do_train", True):
        return []
    inputs = [InputPath(f"--{name}", getattr(args, name)) for name in CONTINUAL_FILES if getattr(args, name, None)]
    if inputs and not getattr(args, "aligned_pairs", None) and args.aligner == "pharaoh" and args.alignment_file:
        inputs.append(InputPath("--alignment_file", args.alignment_file))
    return inputs


def check_anchor_model(cont_args: ContinualAlignArguments, loss_args: AlignmentLossArguments,
                       model_name_or_path: str, realign_args: Optional[RealignmentArguments] = None,
                       **model_kwargs) -> None:
    """When continual alignment will load f0, load its config now: a bad --anchor_model_name_or_path (or a
    start model recorded in an adjusted model's run_args.json that is gone) is one line before any data is
    read, not a traceback after the alignment. With --lora_r nothing is loaded: f0 is the model itself."""
    if not cont_args.enabled or not (loss_args.anchor_weight != 0 or loss_args.pull_target == "frozen"):
        return
    if realign_args is not None and realign_args.enabled:
        return
    path, revision = resolve_anchor(model_name_or_path, cont_args.anchor_model_name_or_path)
    flag = ("--anchor_model_name_or_path" if cont_args.anchor_model_name_or_path
            else "--model_name_or_path" if path == model_name_or_path
            else f"the anchor model f0 (recorded in the run_args.json of {model_name_or_path})")
    load_pretrained(AutoConfig, path, flag, **{**model_kwargs, **({"revision": revision} if revision else {})})


def check_realign_options(cont_args: ContinualAlignArguments, loss_args: AlignmentLossArguments,
                          realign_args: Optional[RealignmentArguments], do_train: bool = True) -> None:
    """One-line errors, before any data is read, for the issue-19 options a run_*_xl.py cannot honour:
    LoRA without continual alignment (plain LoRA fine-tuning is not offered) or with a separate f0
    (--anchor_model_name_or_path: with LoRA f0 is the model itself, adapters off), and --align_level sentence /
    --freeze_layers without continual alignment (they configure it; freezing alone is not a fine-tuning
    option here)."""
    if realign_args is None:
        return
    if realign_args.enabled and not (cont_args.enabled and do_train):
        raise InputError("--lora_r in fine-tuning works with continual alignment only: give aligned data "
                         "(--align_train_file, --align_source_file/--align_target_file, --parallel_dataset or "
                         "--aligned_pairs) and --do_train (docs/realignment.md)")
    if realign_args.enabled and cont_args.anchor_model_name_or_path:
        raise InputError("--anchor_model_name_or_path does not go with --lora_r: f0 is the model being fine-tuned "
                         "with its adapters off (docs/realignment.md)")
    asked = [flag for flag, on in (("--align_level sentence", realign_args.align_level == "sentence"),
                                   ("--freeze_layers", realign_args.freeze_layers is not None)) if on]
    if asked and not (cont_args.enabled and do_train):
        raise InputError(f"{' and '.join(asked)} configure continual alignment: give aligned data "
                         f"(--align_train_file, --align_source_file/--align_target_file, --parallel_dataset or "
                         f"--aligned_pairs) and --do_train")
    check_sentence_options(loss_args, realign_args)


def load_align_dataset(cont_args: ContinualAlignArguments, data_args: AlignmentDataArguments, tokenizer,
                       seed: int, cache_dir: Optional[str] = None,
                       max_length: Optional[int] = None, hub_kwargs: Optional[Dict] = None) -> AlignedPairDataset:
    """The side pool: `--aligned_pairs` as is (sampled down to `max_sentences` if larger), or a
    parallel corpus (files or `--parallel_dataset`; `hub_kwargs` go to `datasets.load_dataset`)
    aligned and filtered as in run_adjust.py."""
    if not cont_args.enabled:
        raise ValueError("no aligned data given (--align_train_file, --align_source_file/--align_target_file, "
                         "--parallel_dataset or --aligned_pairs)")
    if cont_args.aligned_pairs:
        pairs = read_aligned_pairs(cont_args.aligned_pairs)
        if data_args.max_sentences and len(pairs) > data_args.max_sentences:
            pairs = [pairs[i] for i in subsample_indices(len(pairs), data_args.max_sentences, seed)]
        logger.info("Continual alignment: %d aligned sentence pairs from %s", len(pairs), cont_args.aligned_pairs)
    else:
        pairs, stats = build_aligned_pairs(data_args, cont_args.align_source_file, cont_args.align_target_file,
                                           cont_args.align_train_file, seed=seed, cache_dir=cache_dir,
                                           dataset=cont_args.translation_dataset(**(hub_kwargs or {})))
        logger.info("Continual alignment: aligned pairs %s", json.dumps(stats))
    max_length = max_length or data_args.align_max_length or tokenizer.model_max_length
    if data_args.align_max_length:
        max_length = min(max_length, data_args.align_max_length)
    return AlignedPairDataset(pairs, tokenizer, max_length, data_args.link_special_tokens)


def continual_kwargs(cont_args: ContinualAlignArguments, data_args: AlignmentDataArguments,
                     loss_args: AlignmentLossArguments, tokenizer, model_name_or_path: str, seed: int,
                     alignment_cache_dir: Optional[str] = None, max_length: Optional[int] = None,
                     realign_args: Optional[RealignmentArguments] = None, model=None,
                     **model_kwargs) -> Dict:
    """Keyword arguments for `ContinualAlignTrainer` from the parsed arguments of a run_*_xl.py script
    (empty when continual alignment is off), so the script reads `ContinualAlignTrainer(..., **kw)`.
    `model_kwargs` (`ModelArguments.hub_kwargs()`: cache_dir, revision, token, trust_remote_code) go to
    `from_pretrained` of the config and of f0. `realign_args` (run_adjust.py's `RealignmentArguments`):
    the loss is `build_alignment_loss`'s (word or sentence level), --freeze_layers freezes those layers
    of the task `model` in place (`prepare_model`) for the whole fine-tuning, and --lora_r injects LoRA adapters
    into the task `model`'s encoder (head trained as `modules_to_save`; f0 = the model with adapters off) and
    adds `lora_model` (PEFT's wrapper) to the kwargs: the trainer merges it at the end of `train()`."""
    if not cont_args.enabled:
        return {}
    realign_args = realign_args if realign_args is not None else RealignmentArguments()
    check_realign_options(cont_args, loss_args, realign_args)
    needs_f0 = loss_args.anchor_weight != 0 or loss_args.pull_target == "frozen"
    lora_model = anchor = None
    if (realign_args.freeze_layers or realign_args.enabled) and model is None:
        raise ValueError("--freeze_layers and --lora_r need the task model: continual_kwargs(..., model=model)")
    if realign_args.enabled:  # adapters injected into `model` itself; the head trains fully
        lora_model = apply_lora(model, realign_args, modules_to_save=head_modules(model))
        anchor = AdaptersOff(lora_model, encoder_of(model)) if needs_f0 else None
        if realign_args.freeze_layers:
            freeze_layers(model, realign_args.freeze_layers, loss_args.align_layer)
    elif realign_args.freeze_layers:
        prepare_model(model, realign_args, need_anchor=False, align_layer=loss_args.align_layer)
    if max_length is None:  # as run_adjust.py: the tokenizer's limit, capped by the model's positions
        positions = getattr(AutoConfig.from_pretrained(model_name_or_path, **model_kwargs),
                            "max_position_embeddings", None)
        max_length = min(data_args.align_max_length or tokenizer.model_max_length, positions or int(1e9))
    dataset = load_align_dataset(cont_args, data_args, tokenizer, seed, alignment_cache_dir, max_length,
                                 {k: v for k, v in model_kwargs.items() if k in ("cache_dir", "token")})
    if needs_f0 and anchor is None:
        anchor_path, revision = resolve_anchor(model_name_or_path, cont_args.anchor_model_name_or_path)
        logger.info("Anchor model f0: %s", anchor_path)
        # at the revision its adjustment loaded it at, if recorded; else at this run's (--model_revision)
        anchor = load_anchor_model(anchor_path, **{**model_kwargs, **({"revision": revision} if revision else {})})
    loss = build_alignment_loss(loss_args, realign_args, anchor_model=anchor, align_weight=cont_args.align_weight)
    kwargs = {"align_dataset": dataset, "alignment_loss": loss, "align_batch_size": cont_args.align_batch_size,
              "align_schedule": cont_args.align_schedule}
    return {**kwargs, "lora_model": lora_model} if lora_model is not None else kwargs


class ContinualAlignmentError(RuntimeError):
    """An optimisation step ended without the side loss while continual alignment is on."""


class _SideLossGuard(TrainerCallback):
    """Before each optimizer step: stop if the step's side loss was never added (a `training_step`
    override that bypasses `ContinualAlignTrainer.training_step`), rather than train and log as if aligned."""

    def __init__(self, trainer: "ContinualAlignTrainer"):
        self.trainer = trainer

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.trainer._check_side_added()


class _AlternateAlignStep(TrainerCallback):
    """`--align_schedule alternate`: after each task optimizer step (once the Trainer has stepped the
    scheduler and zeroed the gradients), one alignment-only optimizer step."""

    def __init__(self, trainer: "ContinualAlignTrainer"):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._alignment_step()


class ContinualAlignTrainer(MetricsLoggingTrainer):
    """A `Trainer` whose training loss adds, once per optimisation step, the alignment loss of a side
    batch of aligned pairs (Eq. 2). `align_loss` and `anchor_loss` (unweighted, averaged over the
    logging window and the processes) are logged next to `loss`, which is the whole objective, with
    `batches_without_links` (side batches so far whose links were all truncated away: pull term 0).
    Evaluation and prediction use the plain task loss. Without `align_dataset`, or with both weights 0,
    no side batch is computed and it is the plain `Trainer` (except for the task-loss scaling fix
    under gradient accumulation or several processes, see the module docstring). The side data never
    goes through the main dataloader, so `remove_unused_columns` only ever sees the task columns.

    Defaults are the scripts': `align_dataset` may be the aligned pairs themselves (`build_aligned_pairs`),
    tokenised here with `processing_class`, CLS/SEP links included, up to the model's length; without
    `alignment_loss`, f0 is loaded from `resolve_anchor_path(model.name_or_path)` (the original model,
    also when `model` is a run_adjust.py output) and the loss is `AlignmentLoss(f0, align_weight=0.01)`
    with anchor weight 1; an `AlignmentLoss` given without `align_weight` gets α = 0.01 too;
    `align_batch_size` is 16. `align_schedule="alternate"`: the task steps train the task loss alone and each is
    followed by one alignment-only optimizer step (same optimizer, scheduler stepped on task steps only); `loss`
    logs the task loss, `align_loss`/`anchor_loss` the alignment steps', `align_steps` their count.
    `lora_model` (from `continual_kwargs` with --lora_r): the PEFT wrapper of `model`; at the end of `train()`
    its adapter is saved in `<output_dir>/adapter` and merged into `model`, which then saves as a plain checkpoint.

    With your own Trainer subclass: `class MyAligned(MyTrainer, ContinualAlignTrainer)` or
    `(ContinualAlignTrainer, MyTrainer)`; `MyTrainer.compute_loss` may or may not call `super()`, and
    `compute_loss_func=` works too. The side loss is added to whatever loss the class computes, in
    `training_step`; if an optimisation step still ends without it (a `training_step` override that
    skips this one), training stops with `ContinualAlignmentError`."""

    # Check once whether the task loss honours `num_items_in_batch` before trusting the Trainer's
    # signature-based guess (see the module docstring). Set False to keep the Trainer's guess.
    check_task_loss_scaling = True

    def __init__(self, *args, align_dataset: Optional[Union[AlignedPairDataset, Sequence[AlignedPair]]] = None,
                 alignment_loss: Optional[AlignmentLoss] = None,
                 align_batch_size: int = ContinualAlignArguments.align_batch_size,
                 align_schedule: str = ContinualAlignArguments.align_schedule, lora_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.lora_model = lora_model  # PEFT wrapper of self.model (--lora_r): merged at the end of train()
        if align_schedule not in ALIGN_SCHEDULES:
            raise ValueError(f"align_schedule must be one of {ALIGN_SCHEDULES}, got {align_schedule!r}")
        if align_dataset is not None and len(align_dataset) == 0:
            raise ValueError("align_dataset is empty")
        if align_batch_size < 1:
            raise ValueError("align_batch_size must be positive")
        if align_dataset is not None and isinstance(align_dataset[0], AlignedPair):
            align_dataset = self._tokenize_pairs(align_dataset)
        if align_dataset is not None and alignment_loss is None:
            alignment_loss = AlignmentLoss(self._default_anchor_model())
        if alignment_loss is not None and not getattr(alignment_loss, "align_weight_given", True):
            alignment_loss = copy.copy(alignment_loss)  # the user's object keeps its own (stage-1) weight
            alignment_loss.align_weight = ContinualAlignArguments.align_weight
            alignment_loss.align_weight_given = True
        self.align_dataset, self.alignment_loss = align_dataset, alignment_loss
        self.align_batch_size, self.align_schedule = align_batch_size, align_schedule
        self.align_enabled = (align_dataset is not None and alignment_loss is not None
                              and (alignment_loss.align_weight != 0 or alignment_loss.anchor_weight != 0))
        # sum: the side loss joins the task loss in each step; alternate: its own steps (_alignment_step)
        self._sum_side = self.align_enabled and align_schedule == "sum"
        if self.align_enabled and align_schedule == "alternate" and self.args.world_size > 1:
            raise InputError("--align_schedule alternate runs in one process only (its alignment steps bypass the "
                             "DDP gradient sync); use --align_schedule sum with several processes")
        if alignment_loss is not None and align_dataset is None:
            logger.warning("alignment_loss given without align_dataset: training on the task loss only")
        pad_id = getattr(self.processing_class, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(self.model.config, "pad_token_id", None)
        self.align_collator = AlignedPairCollator(pad_id if pad_id is not None else 0)
        if self.align_enabled and alignment_loss.anchor_model is not None:
            alignment_loss.anchor_model.to(self.args.device)
        self.batches_without_links = 0  # side batches whose links were all truncated away (pull term 0)
        self._side_done = (None, None)  # (TrainerState, global_step) whose side batch has been added
        self._task_scaling_checked = not self.check_task_loss_scaling
        self.align_steps = 0  # alignment-only optimizer steps taken (--align_schedule alternate)
        if self._sum_side:
            self.add_callback(_SideLossGuard(self))
        elif self.align_enabled:
            self.add_callback(_AlternateAlignStep(self))

    # ---- defaults (the scripts') ----
    def _tokenize_pairs(self, pairs: Sequence[AlignedPair]) -> AlignedPairDataset:
        """Aligned pairs -> `AlignedPairDataset` as the scripts build it: CLS/SEP links, and the tokenizer's
        limit capped by the model's positions."""
        tokenizer = self.processing_class
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError("align_dataset given as aligned pairs needs processing_class= a fast tokenizer")
        positions = getattr(self.model.config, "max_position_embeddings", None)
        return AlignedPairDataset(pairs, tokenizer, min(tokenizer.model_max_length, positions or int(1e9)))

    def _default_anchor_model(self):
        """f0 as the scripts load it: the original model of `model.name_or_path` (`resolve_anchor`)."""
        name = getattr(self.model, "name_or_path", None)
        if not name:
            raise ValueError("the model has no name_or_path to load f0 from: pass alignment_loss=AlignmentLoss(f0)")
        path, revision = resolve_anchor(name)
        logger.info("Anchor model f0: %s", path)
        return load_anchor_model(path, **({"revision": revision} if revision else {}))

    # ---- side batches ----
    def _side_indices(self, step: int) -> List[int]:
        """Pool indices of the side batch of optimisation step `step` on this process: with
        replacement, from a generator seeded by (seed, rank, step)."""
        rng = np.random.default_rng([self.args.seed, self.args.process_index, step])
        return rng.integers(0, len(self.align_dataset), size=self.align_batch_size).tolist()

    def _side_batch(self, step: int) -> Dict:
        batch = self.align_collator([self.align_dataset[i] for i in self._side_indices(step)])
        return self._prepare_inputs(batch)

    def _side_loss(self, model, step: Optional[int] = None) -> Dict[str, torch.Tensor]:
        batch = self._side_batch(self.state.global_step if step is None else step)
        # f0 is not prepared by the accelerator, and the bare encoder's forward is not wrapped either.
        with self.accelerator.autocast():
            return self.alignment_loss(encoder_of(model), batch)

    def _side_added(self) -> bool:
        """Whether this optimisation step's side loss has been added. (The state object is part of the key:
        a second train() starts a new one, from global_step 0.)"""
        done_state, done_step = self._side_done
        return done_state is self.state and done_step == self.state.global_step

    def _add_side_loss(self, model, loss: torch.Tensor, num_items_in_batch) -> torch.Tensor:
        """`loss` plus this step's side loss, scaled so that it counts once per optimisation step, whatever
        the Trainer then divides `loss` by (see the module docstring)."""
        self._side_done = (self.state, self.state.global_step)
        side = self._side_loss(model)
        scale = 1 if self._loss_is_scaled_for_ga(num_items_in_batch) else accumulation_steps(self)
        for key in ("align_loss", "anchor_loss"):
            self.record_metric(key, side[key])
        if side["num_links"] == 0:
            self.batches_without_links += 1
        return loss.float() + side["loss"] * scale

    def _alignment_step(self) -> None:
        """`--align_schedule alternate`: one optimizer step on the alignment loss alone, right after task step
        s (global_step is s+1 here), on the side batch that the sum schedule would add to step s. Same
        optimizer (Adam moments shared with the task steps) at the learning rate the scheduler now gives;
        the scheduler and `global_step` advance on task steps only. Gradient clipping as the task steps."""
        model = self.model
        was_training = model.training
        model.train()
        side = self._side_loss(model, step=self.state.global_step - 1)
        # Accelerator.backward divides by its accumulation steps (1 under the Trainer): undo it, one batch here
        self.accelerator.backward(side["loss"] * self.accelerator.gradient_accumulation_steps)
        if self.args.max_grad_norm is not None and self.args.max_grad_norm > 0:
            self.accelerator.clip_grad_norm_(model.parameters(), self.args.max_grad_norm)
        self.optimizer.step()
        model.zero_grad()
        model.train(was_training)
        self.align_steps += 1
        for key in ("align_loss", "anchor_loss"):
            self.record_metric(key, side[key])
        if side["num_links"] == 0:
            self.batches_without_links += 1

    def _check_side_added(self) -> None:
        if self._sum_side and not self._side_added():
            raise ContinualAlignmentError(
                f"continual alignment: optimisation step {self.state.global_step} ended without the side loss; "
                f"{type(self).__name__}.training_step must call super().training_step (ContinualAlignTrainer's)")

    # ---- gradient-accumulation bookkeeping ----
    def _loss_is_scaled_for_ga(self, num_items_in_batch) -> bool:
        """What the installed `Trainer.training_step` decides: True when it does not divide the loss it gets
        by the accumulation steps (in 5.x, when that loss is normalised over the accumulated batch; in
        4.46-4.47, always; see hf_xladjust.compat)."""
        return not trainer_divides_by_ga(self, num_items_in_batch)

    def _task_loss_is_trainers(self) -> bool:
        """Whether `super().compute_loss` here is `Trainer.compute_loss` (not a user override after us in the MRO)."""
        mro = type(self).__mro__
        after = mro[mro.index(ContinualAlignTrainer) + 1:]
        return next(c for c in after if "compute_loss" in vars(c)) is Trainer

    def _check_task_loss_scaling(self, model, inputs, num_items_in_batch):
        """If the Trainer would pass `num_items_in_batch` and skip its own division, make sure the task
        loss really is normalised by it: evaluate it (no grad, eval mode) with n and 2n items."""
        self._task_scaling_checked = True
        if (num_items_in_batch is None or not self.model_accepts_loss_kwargs
                or getattr(self, "compute_loss_func", None) is not None
                or getattr(self, "loss_is_scaled_for_ga", None) is not None
                or not self._task_loss_is_trainers()):
            return
        if self.args.gradient_accumulation_steps == 1 and self.args.world_size == 1:
            return  # nothing is scaled: the Trainer divides by 1 either way
        unwrapped = self.accelerator.unwrap_model(model)
        n = num_items_in_batch if torch.is_tensor(num_items_in_batch) \
            else torch.tensor(float(num_items_in_batch), device=self.args.device)
        was_training = unwrapped.training
        unwrapped.eval()
        try:
            with torch.no_grad():
                l1 = Trainer.compute_loss(self, unwrapped, dict(inputs), num_items_in_batch=n).float()
                l2 = Trainer.compute_loss(self, unwrapped, dict(inputs), num_items_in_batch=2 * n).float()
        finally:
            unwrapped.train(was_training)
        tol = 1e-3 * l1.abs().clamp_min(1e-12)
        if (l1 - l2).abs() <= tol and l1.abs() > 0:
            logger.warning("%s declares **kwargs but its loss ignores num_items_in_batch: treating it as a per-batch "
                           "mean, divided by the gradient accumulation steps (transformers#47688)",
                           type(unwrapped).__name__)
            self.model_accepts_loss_kwargs = False
            self.loss_is_scaled_for_ga = False
        elif not (l1 - 2 * l2).abs() <= tol:
            logger.warning("could not tell whether the task loss honours num_items_in_batch; keeping the "
                           "Trainer's choice")

    # ---- the loss ----
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training and not self._task_scaling_checked:
            self._check_task_loss_scaling(model, inputs, num_items_in_batch)
        out = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                   num_items_in_batch=num_items_in_batch)
        task_loss, outputs = out if return_outputs else (out, None)
        if model.training:  # a no-op where the Trainer's own GA division is right (see hf_xladjust.compat)
            task_loss = ga_corrected_loss(self, task_loss, num_items_in_batch)
        # The first micro-step of each optimisation step adds the side batch's loss, once.
        if self._sum_side and model.training and not self._side_added():
            task_loss = self._add_side_loss(model, task_loss, num_items_in_batch)
        return (task_loss, outputs) if return_outputs else task_loss

    def training_step(self, model, inputs, num_items_in_batch=None, *args, **kwargs):
        """The Trainer's step, with the side loss added to whatever `compute_loss` the class resolves to:
        also a user override before this class in the MRO that does not call `super().compute_loss`."""
        if not self._sum_side:  # no alignment, or its own steps (alternate)
            return super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        task_compute_loss = self.compute_loss  # bound through the MRO: the user's override, if any

        def compute_loss(model, inputs, return_outputs=False, num_items_in_batch=None, **loss_kwargs):
            out = task_compute_loss(model, inputs, return_outputs=return_outputs,
                                    num_items_in_batch=num_items_in_batch, **loss_kwargs)
            if not model.training or self._side_added():  # ContinualAlignTrainer.compute_loss added it
                return out
            if isinstance(out, tuple):
                return (self._add_side_loss(model, out[0], num_items_in_batch), *out[1:])
            return self._add_side_loss(model, out, num_items_in_batch)

        self.compute_loss = compute_loss  # an instance attribute shadows every class's, for this step only
        try:
            return super().training_step(model, inputs, num_items_in_batch, *args, **kwargs)
        finally:
            del self.compute_loss

    def train(self, *args, **kwargs):
        result = super().train(*args, **kwargs)
        if self.lora_model is not None:
            self._finish_lora()
        return result

    def _finish_lora(self) -> None:
        """--lora_r: save the adapter (+ head) in <output_dir>/adapter, then merge it into the task model in
        place, so that save_model(), evaluation and prediction use the plain model with the trained weights."""
        adapter_dir = os.path.join(self.args.output_dir, ADAPTER_SUBDIR) if self.args.should_save else None
        merged = merge_in_place(self.lora_model, adapter_dir)
        if merged is not self.accelerator.unwrap_model(self.model):
            raise RuntimeError("LoRA merge did not happen in the trained model")
        self.lora_model = None
        self.align_enabled = self._sum_side = False  # f0 (adapters off) is gone with the adapters
        self.model_wrapped = self.model

    def log(self, logs, *args, **kwargs):
        if self.align_enabled and "loss" in logs:  # training logs; every process logs (a collective)
            logs["batches_without_links"] = count_over_processes(self, self.batches_without_links)
            if self.align_schedule == "alternate":  # `loss` is the task loss; align_loss from alignment steps
                logs["align_steps"] = self.align_steps
        super().log(logs, *args, **kwargs)
