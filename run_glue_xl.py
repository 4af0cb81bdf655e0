#!/usr/bin/env python
"""Fine-tune a multilingual encoder on English NLI and evaluate it zero-shot on XNLI, including the
mixed-language sets of Efimov et al.; optionally with continual cross-lingual alignment (Eq. 2).

A fork of the HF example `examples/pytorch/text-classification/run_xnli.py`, kept in its shape
(parse, log, seed, data, model, preprocess, Trainer, train, evaluate, predict, metrics); the NLI
logic lives in `hf_xladjust.tasks.xnli`. `--do_eval` evaluates on the validation sets and
`--do_predict` on the test sets of English and every `--eval_languages` language, plus, with
`--mixed_language_eval`, the mixed-language sets (one per language and split, drawn with a fixed seed
and recorded in `mixed_language_sets/`, so that every run seed evaluates the same set).
`--representation_transform DIR` (a rotation or normalisation of `python -m hf_xladjust.evaluation.transforms`)
transforms the last hidden state of the non-English inputs before the head; on a mixed-language set only the
tokens of the non-English segment (by the tokenizer's sequence ids). Examples:

    # Hub data
    python run_glue_xl.py --model_name_or_path google-bert/bert-base-multilingual-cased --dataset_name facebook/xnli \\
        --do_train --do_predict --mixed_language_eval --output_dir out/xnli

    # local XTREME tsv files, continual alignment with Spanish
    python run_glue_xl.py --model_name_or_path out/adjusted-es --train_file train-en.tsv \\
        --test_file_pattern 'xnli/test-{lang}.tsv' --do_train --do_predict --mixed_language_eval \\
        --align_source_file wiki.en --align_target_file wiki.es --target_lang es \\
        --anchor_model_name_or_path google-bert/bert-base-multilingual-cased --output_dir out/xnli-cont
"""
import logging
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional

import datasets
import numpy as np
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    EvalPrediction,
    HfArgumentParser,
    default_data_collator,
    set_seed,
)

from hf_xladjust.alignment.loss import AlignmentLossArguments
from hf_xladjust.alignment.pairs import AlignmentDataArguments
from hf_xladjust.alignment.realign import RealignmentArguments
from hf_xladjust.cli import (
    ModelArguments,
    check_output_dir,
    load_pretrained,
    merged_arguments,
    parse_arguments,
    run_main,
    set_cpu_threads,
    setup_logging,
    task_input_files,
    write_run_args,
)
from hf_xladjust.evaluation.transforms import (
    RepresentationTransformArguments,
    load_for_heads,
    segment_masks,
    transform_input_files,
    transform_scope,
)
from hf_xladjust.files import check_input_files
from hf_xladjust.model_card import save_model_card
from hf_xladjust.tasks.xnli import (
    LABELS,
    MIXED_LANGUAGE_SEED,
    MixedNLIExample,
    examples_to_columns,
    load_nli_examples,
    mixed_language_set,
    model_label_ids,
    write_predictions,
)
from hf_xladjust.tokenization import ensure_pad_token
from hf_xladjust.trainers.continual import (
    ContinualAlignArguments,
    ContinualAlignTrainer,
    FineTuningArguments,
    check_anchor_model,
    check_realign_options,
    continual_input_files,
    continual_kwargs,
)

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Which NLI data to train and evaluate on, and how it is preprocessed."""

    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset with one config per language (facebook/xnli); files take "
                                        "precedence."}
    )
    train_language: str = field(default="en", metadata={"help": "Training language (Hub config); English."})
    eval_languages: List[str] = field(
        default_factory=lambda: ["es", "ru", "vi", "hi"],
        metadata={"help": "Zero-shot evaluation languages; English is always evaluated too."},
    )
    train_file: Optional[str] = field(
        default=None, metadata={"help": "English training file, XTREME tsv: premise<TAB>hypothesis<TAB>label."}
    )
    validation_file_pattern: Optional[str] = field(
        default=None,
        metadata={"help": "Validation files (--do_eval) with a '{lang}' slot, e.g. 'xnli/dev-{lang}.tsv'."},
    )
    test_file_pattern: Optional[str] = field(
        default=None, metadata={"help": "Test files (--do_predict) with a '{lang}' slot, e.g. 'xnli/test-{lang}.tsv'."}
    )
    mixed_language_eval: bool = field(
        default=False,
        metadata={"help": "Also evaluate on mixed-language sets: per example, the premise or the hypothesis "
                          "(seeded random choice) is replaced by the English original of the same line."},
    )
    mixed_language_seed: int = field(
        default=MIXED_LANGUAGE_SEED,
        metadata={"help": "Seed of the premise/hypothesis choice; fixed, independent of --seed, so that every run "
                          "seed evaluates the same mixed-language set (as the paper)."},
    )
    mixed_language_sets: Optional[str] = field(
        default=None,
        metadata={"help": "Folder of recorded mixed-language choices, '{split}_mixed_{lang}.json': used when "
                          "present, written when absent. Default: <output_dir>/mixed_language_sets. Point all "
                          "runs of an experiment at one folder to pin the sets."},
    )
    max_seq_length: int = field(
        default=128, metadata={"help": "Maximum tokens of premise + hypothesis; longer pairs are truncated."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every pair to max_seq_length instead of padding per batch."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-run the tokenisation of cached datasets."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenisation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N training examples."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N examples of every validation set."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N examples of every test set."}
    )

    def __post_init__(self):
        for name in ("validation_file_pattern", "test_file_pattern"):
            pattern = getattr(self, name)
            if pattern and "{lang}" not in pattern:
                raise ValueError(f"--{name} needs a '{{lang}}' slot, got {pattern!r}")


@dataclass
class NLITrainingArguments(FineTuningArguments):
    """The paper's XNLI fine-tuning: lr 5e-5, 2 epochs (and `FineTuningArguments`' optimiser settings)."""

    learning_rate: float = field(default=5e-5, metadata={"help": "Learning rate (paper: 5e-5)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over the English data (paper: 2)."})


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser(
        (ModelArguments, DataTrainingArguments, RepresentationTransformArguments, ContinualAlignArguments,
         AlignmentDataArguments, RealignmentArguments, AlignmentLossArguments, NLITrainingArguments), __doc__
    )


def input_files(args):
    """The files this run reads (`args`: the parsed arguments as one namespace): checked before anything
    loads, and by the grid's dry run on each step's arguments."""
    return (task_input_files(args, ["en"] + list(args.eval_languages)) + transform_input_files(args)
            + continual_input_files(args))


def main():
    parser = build_parser()
    model_args, data_args, transform_args, cont_args, align_data_args, realign_args, loss_args, training_args = \
        parse_arguments(parser)
    check_output_dir(training_args.output_dir, "all_results.json", training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint)
    check_input_files(input_files(merged_arguments(data_args, transform_args, cont_args, align_data_args,
                                                   training_args)))

    # Setup logging
    setup_logging(training_args, logger)
    threads = set_cpu_threads(training_args.device.type)
    logger.warning(f"Process rank: {training_args.local_process_index}, device: {training_args.device}, "
                   f"n_gpu: {training_args.n_gpu}, distributed training: {training_args.parallel_mode.value}, "
                   f"16-bits training: {training_args.fp16 or training_args.bf16}")
    logger.info(f"Training/evaluation parameters {training_args}")

    # Set seed before initializing model.
    set_seed(training_args.seed)

    # Load the config and tokenizer before the data (a bad path fails in seconds; the model loads below).
    # Our label ids are fixed (entailment, neutral, contradiction); a model with its own label names keeps
    # its order and the data is mapped to it.
    config = load_pretrained(AutoConfig, *model_args.config_source(), finetuning_task="xnli",
                             **model_args.hub_kwargs())
    model_label_of = model_label_ids(config, model_args.config_name or model_args.model_name_or_path)
    our_label_of = np.argsort(model_label_of)  # model id -> our id
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(),
                                use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    ensure_pad_token(tokenizer, config)
    check_realign_options(cont_args, loss_args, realign_args, training_args.do_train)
    if training_args.do_train:
        check_anchor_model(cont_args, loss_args, model_args.model_name_or_path, realign_args=realign_args,
                           **model_args.hub_kwargs())

    # Load the data: English training set; validation and test sets for English and every evaluation
    # language, and the mixed-language sets built from the target and English sets of the same split.
    hub_kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    languages = list(dict.fromkeys(["en"] + list(data_args.eval_languages)))
    mixed_seed = data_args.mixed_language_seed
    mixed_dir = data_args.mixed_language_sets or os.path.join(training_args.output_dir, "mixed_language_sets")
    train_examples = None
    if training_args.do_train:
        if not (data_args.train_file or data_args.dataset_name):
            raise ValueError("--do_train needs --train_file or --dataset_name")
        train_examples, _ = load_nli_examples(data_args.train_file, data_args.dataset_name,
                                              data_args.train_language, "train", data_args.max_train_samples,
                                              **hub_kwargs)

    eval_sets = {}  # split -> {set name -> examples}
    for split, do_it, pattern, hub_split, max_samples in (
        ("eval", training_args.do_eval, data_args.validation_file_pattern, "validation", data_args.max_eval_samples),
        ("test", training_args.do_predict, data_args.test_file_pattern, "test", data_args.max_predict_samples),
    ):
        if not do_it:
            continue
        if not (pattern or data_args.dataset_name):
            flag = "--validation_file_pattern" if split == "eval" else "--test_file_pattern"
            raise ValueError(f"--do_{'eval' if split == 'eval' else 'predict'} needs {flag} or --dataset_name")
        loaded = {lang: load_nli_examples(pattern.format(lang=lang) if pattern else None, data_args.dataset_name,
                                          lang, hub_split, max_samples, **hub_kwargs)
                  for lang in languages}
        sets = {lang: examples for lang, (examples, _) in loaded.items()}
        if data_args.mixed_language_eval:
            english, english_source = loaded["en"]
            with training_args.main_process_first(desc="mixed-language sets"):
                for lang in languages[1:]:
                    target, target_source = loaded[lang]
                    sets[f"mixed_{lang}"] = mixed_language_set(
                        target, english, mixed_seed, os.path.join(mixed_dir, f"{split}_mixed_{lang}.json"),
                        target_source, english_source, write=training_args.process_index == 0)
        eval_sets[split] = sets

    # Load the pretrained model
    model = load_pretrained(AutoModelForSequenceClassification, model_args.model_name_or_path,
                            "--model_name_or_path", config=config, **model_args.hub_kwargs())
    # --representation_transform: a hook on the last hidden state, active while a non-English set is predicted.
    transform = load_for_heads(transform_args.representation_transform, model, languages if eval_sets else [])

    # Preprocessing the datasets
    padding = "max_length" if data_args.pad_to_max_length else False
    max_seq_length = data_args.max_seq_length
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(f"--max_seq_length {max_seq_length} is longer than the model's maximum "
                       f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}.")
        max_seq_length = tokenizer.model_max_length

    def preprocess_function(examples):
        # Tokenize the texts
        result = tokenizer(examples["premise"], examples["hypothesis"], padding=padding,
                           max_length=max_seq_length, truncation=True)
        result["labels"] = [int(model_label_of[label]) for label in examples["label"]]
        if "english_side" in examples:  # mixed-language set: transform only the target-language segment
            result["transform_mask"] = segment_masks(result, [int(s == "premise") for s in examples["english_side"]])
        return result

    def to_features(examples, desc):
        columns = examples_to_columns(examples)
        if transform and isinstance(examples[0], MixedNLIExample):
            columns["english_side"] = [ex.english_side for ex in examples]
        dataset = datasets.Dataset.from_dict(columns)
        with training_args.main_process_first(desc=desc):
            return dataset.map(preprocess_function, batched=True, remove_columns=dataset.column_names,
                               num_proc=data_args.preprocessing_num_workers,
                               load_from_cache_file=not data_args.overwrite_cache, desc=desc)

    train_dataset = None
    if training_args.do_train:
        train_dataset = to_features(train_examples, "Running tokenizer on train dataset")
        # Log a few random samples from the training set:
        for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
            logger.info(f"Sample {index} of the training set: {train_dataset[index]}.")
    eval_features = {split: {name: to_features(examples, f"Running tokenizer on {split} {name}")
                             for name, examples in sets.items()}
                     for split, sets in eval_sets.items()}

    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        return {"accuracy": float((np.argmax(preds, axis=1) == p.label_ids).mean())}

    # Data collator will default to DataCollatorWithPadding, so we change it if we already did the padding.
    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorWithPadding(
            tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)

    # Continual mode (Eq. 2): a side batch of aligned sentence pairs at every step, f0 as the anchor
    # (the original model, also when fine-tuning starts from an adjusted one, as in the paper's code).
    # Without aligned data ContinualAlignTrainer is the plain Trainer, plus its check that the task
    # loss is scaled right under gradient accumulation: baseline and continual runs train alike.
    trainer_kwargs = {}
    if cont_args.enabled and training_args.do_train:
        with training_args.main_process_first(desc="aligned pairs for continual alignment"):
            trainer_kwargs = continual_kwargs(
                cont_args, align_data_args, loss_args, tokenizer, model_args.model_name_or_path,
                seed=training_args.seed, realign_args=realign_args, model=model,
                alignment_cache_dir=os.path.join(training_args.output_dir, "alignment_cache"),
                **model_args.hub_kwargs(),
            )
        logger.info(f"Continual alignment on {len(trainer_kwargs['align_dataset'])} sentence pairs, "
                    f"weight {cont_args.align_weight}")
    elif cont_args.enabled:
        logger.warning("Aligned data given without --do_train: continual alignment is not used.")

    # Initialize our Trainer
    trainer = ContinualAlignTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_features.get("eval") or None,
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=data_collator,
        **trainer_kwargs,
    )

    # Training
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_dataset)
        trainer.save_model()  # Saves the tokenizer too, and the config with label2id/id2label
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    # Evaluation (validation sets) and prediction (test sets): accuracy and per-example predictions.
    for split, sets in eval_sets.items():
        logger.info(f"*** {'Evaluate' if split == 'eval' else 'Predict'} ***")
        metrics = {}
        for name, examples in sets.items():
            prefix = f"{split}_{name}"
            mixed = name.startswith("mixed_")
            with transform_scope(transform, trainer, name[len("mixed_"):] if mixed else name, masked=mixed) as hook:
                output = trainer.predict(eval_features[split][name], metric_key_prefix=prefix)
            if hook is not None and hook.last_lang:
                metrics[f"{prefix}_transformed_tokens"] = hook.transformed_tokens
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            probs = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
            model_preds = probs.argmax(axis=1)
            metrics.update(output.metrics)
            metrics[f"{prefix}_samples"] = len(examples)
            if trainer.is_world_process_zero():
                path = os.path.join(training_args.output_dir, f"predictions_{prefix}.jsonl")
                metrics[f"{prefix}_accuracy"] = write_predictions(
                    path, examples, our_label_of[model_preds], probs[np.arange(len(probs)), model_preds])
        trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)

    if trainer.is_world_process_zero():
        continual = cont_args.enabled
        write_run_args(training_args.output_dir, model=model_args, data=data_args, mixed_language_seed=mixed_seed,
                       labels=list(LABELS), max_seq_length_used=max_seq_length,
                       continual=cont_args if continual else None,
                       alignment=align_data_args if continual else None, loss=loss_args if continual else None,
                       realign=realign_args if continual else None,
                       representation_transform=transform.describe(languages[1:]) if transform else None,
                       training=training_args, threads=threads)
    save_model_card(trainer, tasks="text-classification", dataset=data_args.dataset_name or "XNLI")


if __name__ == "__main__":
    run_main(main)
