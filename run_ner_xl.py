#!/usr/bin/env python
"""Fine-tune a multilingual encoder on English WikiANN NER and evaluate it zero-shot on other languages;
optionally with continual cross-lingual alignment (Eq. 2).

A fork of the HF example `examples/pytorch/token-classification/run_ner.py`, kept in its shape (parse,
log, seed, data, model, preprocess, Trainer, train, evaluate, predict, metrics); the NER logic lives in
`hf_xladjust.tasks.ner` and the scores in `hf_xladjust.evaluation.tagging`. `--do_eval` evaluates on the
validation sets and `--do_predict` on the test sets of English and every `--eval_languages` language.
Every gold word is scored at the word level (a word cut off by `--max_seq_length` is predicted `O` and
counted); an unlabelled set (XTREME's test files) gets predictions only. `--representation_transform DIR` (a
rotation or normalisation of `python -m hf_xladjust.evaluation.transforms`) transforms the last hidden state of
every token of the non-English sets before the head. Examples:

    # Hub data
    python run_ner_xl.py --model_name_or_path google-bert/bert-base-multilingual-cased \\
        --dataset_name unimelb-nlp/wikiann --do_train --do_eval --do_predict --output_dir out/ner

    # XTREME's copy of WikiANN (PAN-X), with XTREME's splits
    python run_ner_xl.py --model_name_or_path google-bert/bert-base-multilingual-cased \\
        --dataset_name google/xtreme --dataset_config_pattern 'PAN-X.{lang}' --do_train --do_predict \\
        --output_dir out/ner-panx

    # local XTREME tsv files, continual alignment with Spanish
    python run_ner_xl.py --model_name_or_path out/adjusted-es --train_file wikiann/train-en.tsv \\
        --validation_file_pattern 'wikiann/dev-{lang}.tsv' --do_train --do_eval \\
        --align_source_file wiki.en --align_target_file wiki.es --target_lang es \\
        --anchor_model_name_or_path google-bert/bert-base-multilingual-cased --output_dir out/ner-cont
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
    AutoModelForTokenClassification,
    AutoTokenizer,
    DataCollatorForTokenClassification,
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
from hf_xladjust.evaluation.tagging import tagging_metrics
from hf_xladjust.evaluation.transforms import (
    RepresentationTransformArguments,
    load_for_heads,
    transform_input_files,
    transform_scope,
)
from hf_xladjust.files import check_input_files
from hf_xladjust.model_card import save_model_card
from hf_xladjust.tasks.ner import (
    LABELS,
    OUTSIDE,
    encode_examples,
    is_labelled,
    load_ner_examples,
    model_label_ids,
    word_predictions,
    write_predictions,
)
from hf_xladjust.tokenization import ensure_pad_token, require_fast
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
    """Which NER data to train and evaluate on, and how it is preprocessed."""

    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset with one config per language (unimelb-nlp/wikiann, or "
                                        "google/xtreme with --dataset_config_pattern 'PAN-X.{lang}'); files take "
                                        "precedence."}
    )
    dataset_config_pattern: str = field(
        default="{lang}", metadata={"help": "The Hub config of a language, '{lang}' its code: '{lang}' for "
                                            "unimelb-nlp/wikiann, 'PAN-X.{lang}' for google/xtreme."}
    )
    train_language: str = field(default="en", metadata={"help": "Training language (Hub config); English."})
    eval_languages: List[str] = field(
        default_factory=lambda: ["es", "ru", "vi", "hi"],
        metadata={"help": "Zero-shot evaluation languages; English is always evaluated too."},
    )
    train_file: Optional[str] = field(
        default=None,
        metadata={"help": "English training file, XTREME tsv: token<TAB>tag lines, a blank line between sentences."},
    )
    validation_file_pattern: Optional[str] = field(
        default=None,
        metadata={"help": "Validation files (--do_eval) with a '{lang}' slot, e.g. 'wikiann/dev-{lang}.tsv'."},
    )
    test_file_pattern: Optional[str] = field(
        default=None,
        metadata={"help": "Test files (--do_predict) with a '{lang}' slot, e.g. 'wikiann/test-{lang}.tsv'. Files "
                          "without a tag column (XTREME's test sets) get predictions only."},
    )
    tag_names: List[str] = field(
        default_factory=lambda: list(LABELS),
        metadata={"help": "The tag set, in the order of a new head's label ids (default: WikiANN's). A tag "
                          "outside it is an error; it must contain 'O'."},
    )
    max_seq_length: int = field(
        default=128,
        metadata={"help": "Maximum subword tokens per sentence; words beyond it are predicted 'O' and counted "
                          "(`{split}_{lang}_truncated_words`)."},
    )
    label_all_tokens: bool = field(
        default=False,
        metadata={"help": "Train on every subword of a word (B-X becomes I-X after the first) instead of the "
                          "first only (-100 on the others). Evaluation always reads the first subword."},
    )
    return_entity_level_metrics: bool = field(
        default=False, metadata={"help": "Also report seqeval's precision/recall/F1 per entity type."}
    )
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every sentence to max_seq_length instead of padding per batch."}
    )
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-run the tokenisation of cached datasets."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenisation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N training sentences."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N sentences of every validation set."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N sentences of every test set."}
    )

    def __post_init__(self):
        for name in ("validation_file_pattern", "test_file_pattern"):
            pattern = getattr(self, name)
            if pattern and "{lang}" not in pattern:
                raise ValueError(f"--{name} needs a '{{lang}}' slot, got {pattern!r}")
        if OUTSIDE not in self.tag_names or len(set(self.tag_names)) != len(self.tag_names):
            raise ValueError(f"--tag_names must be distinct tags including {OUTSIDE!r}, got {self.tag_names}")


@dataclass
class NERTrainingArguments(FineTuningArguments):
    """The paper's WikiANN fine-tuning: lr 2e-5, 3 epochs (and `FineTuningArguments`' optimiser settings)."""

    learning_rate: float = field(default=2e-5, metadata={"help": "Learning rate (paper: 2e-5)."})
    num_train_epochs: float = field(default=3.0, metadata={"help": "Epochs over the English data (paper: 3)."})


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser(
        (ModelArguments, DataTrainingArguments, RepresentationTransformArguments, ContinualAlignArguments,
         AlignmentDataArguments, RealignmentArguments, AlignmentLossArguments, NERTrainingArguments), __doc__
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
    # A bare encoder gets our tag set as its labels; an already fine-tuned tagger keeps its label ids, and
    # its tag set must be the data's.
    label_names = list(data_args.tag_names)
    config = load_pretrained(AutoConfig, *model_args.config_source(), finetuning_task="ner",
                             **model_args.hub_kwargs())
    label_to_id = model_label_ids(config, label_names, model_args.config_name or model_args.model_name_or_path)
    id_to_label = np.array([config.id2label[i] for i in range(len(config.id2label))], dtype=object)
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(),
                                use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    # Words are tokenised as running text (hf_xladjust.tokenization): no add_prefix_space needed.
    require_fast(tokenizer, "run_ner_xl.py")
    ensure_pad_token(tokenizer, config)
    check_realign_options(cont_args, loss_args, realign_args, training_args.do_train)
    if training_args.do_train:
        check_anchor_model(cont_args, loss_args, model_args.model_name_or_path, realign_args=realign_args,
                           **model_args.hub_kwargs())

    # Load the data: the English training set; validation and test sets of English and every evaluation language.
    hub_kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    languages = list(dict.fromkeys(["en"] + list(data_args.eval_languages)))
    train_examples = None
    if training_args.do_train:
        if not (data_args.train_file or data_args.dataset_name):
            raise ValueError("--do_train needs --train_file or --dataset_name")
        train_examples, train_source = load_ner_examples(
            data_args.train_file, data_args.dataset_name, data_args.train_language, "train",
            data_args.max_train_samples, label_names, data_args.dataset_config_pattern, **hub_kwargs)
        if not is_labelled(train_examples):
            raise ValueError(f"the training set {train_source} has no tags")

    eval_sets = {}  # split -> {language -> (examples, source)}
    for split, do_it, pattern, hub_split, max_samples in (
        ("eval", training_args.do_eval, data_args.validation_file_pattern, "validation", data_args.max_eval_samples),
        ("test", training_args.do_predict, data_args.test_file_pattern, "test", data_args.max_predict_samples),
    ):
        if not do_it:
            continue
        if not (pattern or data_args.dataset_name):
            flag = "--validation_file_pattern" if split == "eval" else "--test_file_pattern"
            raise ValueError(f"--do_{'eval' if split == 'eval' else 'predict'} needs {flag} or --dataset_name")
        eval_sets[split] = {lang: load_ner_examples(pattern.format(lang=lang) if pattern else None,
                                                    data_args.dataset_name, lang, hub_split, max_samples,
                                                    label_names, data_args.dataset_config_pattern, **hub_kwargs)
                            for lang in languages}

    # Load the pretrained model
    model = load_pretrained(AutoModelForTokenClassification, model_args.model_name_or_path,
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

    def tokenize_and_align_labels(examples, labelled):
        return encode_examples(tokenizer, examples["tokens"], examples["tags"] if labelled else None, label_to_id,
                               max_seq_length, data_args.label_all_tokens, padding)

    def to_features(examples, desc):
        labelled = is_labelled(examples)
        columns = {"tokens": [ex.tokens for ex in examples]}
        if labelled:
            columns["tags"] = [ex.tags for ex in examples]
        dataset = datasets.Dataset.from_dict(columns)
        with training_args.main_process_first(desc=desc):
            return dataset.map(tokenize_and_align_labels, batched=True, remove_columns=dataset.column_names,
                               fn_kwargs={"labelled": labelled}, num_proc=data_args.preprocessing_num_workers,
                               load_from_cache_file=not data_args.overwrite_cache, desc=desc)

    bookkeeping = ["word_index", "truncated_words", "untokenized_words"]  # ours, not the model's
    train_dataset = None
    if training_args.do_train:
        train_features = to_features(train_examples, "Running tokenizer on train dataset")
        cut = sum(train_features["truncated_words"])
        if cut:
            logger.warning(f"{cut} training words are beyond --max_seq_length {max_seq_length} and not trained on.")
        train_dataset = train_features.remove_columns(bookkeeping)
        # Log a few random samples from the training set:
        for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
            logger.info(f"Sample {index} of the training set: {train_dataset[index]}.")
    eval_features = {split: {lang: to_features(examples, f"Running tokenizer on {split} {lang}")
                             for lang, (examples, _) in sets.items()}
                     for split, sets in eval_sets.items()}

    # Data collator
    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorForTokenClassification(
            tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)

    # Metrics during training (--eval_strategy): over the labelled subwords, as upstream. The final
    # evaluation below scores words instead, truncated ones included.
    def compute_metrics(p: EvalPrediction):
        preds = p.predictions[0] if isinstance(p.predictions, tuple) else p.predictions
        preds = np.argmax(preds, axis=2)
        keep = [label != -100 for label in p.label_ids]
        gold = [list(id_to_label[label[k]]) for label, k in zip(p.label_ids, keep)]
        pred = [list(id_to_label[pr[k]]) for pr, k in zip(preds, keep)]
        return tagging_metrics(gold, pred)

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

    in_training_eval = {lang: features.remove_columns(bookkeeping)
                        for lang, features in eval_features.get("eval", {}).items()
                        if "labels" in features.column_names}

    # Initialize our Trainer
    trainer = ContinualAlignTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=in_training_eval or None,
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

    # Evaluation (validation sets) and prediction (test sets), scored at the word level: every gold
    # word, a word without a logit (cut off by the maximum length) predicted O.
    trainer.compute_metrics = None
    fill_id = label_to_id[OUTSIDE]
    for split, sets in eval_sets.items():
        logger.info(f"*** {'Evaluate' if split == 'eval' else 'Predict'} ***")
        metrics = {}
        for lang, (examples, source) in sets.items():
            prefix = f"{split}_{lang}"
            features = eval_features[split][lang]
            with transform_scope(transform, trainer, lang) as hook:
                output = trainer.predict(features.remove_columns(bookkeeping), metric_key_prefix=prefix)
            if hook is not None and hook.last_lang:
                metrics[f"{prefix}_transformed_tokens"] = hook.transformed_tokens
            logits = output.predictions[0] if isinstance(output.predictions, tuple) else output.predictions
            word_ids = word_predictions(np.argmax(logits, axis=2), features["word_index"],
                                        [len(ex.tokens) for ex in examples], fill_id)
            preds = [list(id_to_label[ids]) for ids in word_ids]
            truncated = features["truncated_words"]
            untokenized = features["untokenized_words"]
            metrics.update(output.metrics)
            metrics[f"{prefix}_samples"] = len(examples)
            metrics[f"{prefix}_words"] = sum(len(ex.tokens) for ex in examples)
            metrics[f"{prefix}_truncated_words"] = sum(truncated)
            metrics[f"{prefix}_truncated_sentences"] = sum(1 for n in truncated if n)
            metrics[f"{prefix}_untokenized_words"] = sum(untokenized)
            if sum(truncated) or sum(untokenized):
                logger.warning(f"{source}: {sum(truncated)} word(s) in {metrics[f'{prefix}_truncated_sentences']} "
                               f"sentence(s) beyond --max_seq_length {max_seq_length} and {sum(untokenized)} "
                               f"word(s) without any subword are predicted {OUTSIDE!r} and scored.")
            if is_labelled(examples):
                scores = tagging_metrics([ex.tags for ex in examples], preds, data_args.return_entity_level_metrics)
                metrics.update({f"{prefix}_{name}": value for name, value in scores.items()})
            else:
                logger.warning(f"{source} has no tags: predictions only, no score is computed for {prefix}.")
            if trainer.is_world_process_zero():
                write_predictions(os.path.join(training_args.output_dir, f"predictions_{prefix}.jsonl"),
                                  examples, preds, truncated)
        trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)

    if trainer.is_world_process_zero():
        continual = cont_args.enabled
        write_run_args(training_args.output_dir, model=model_args, data=data_args, labels=label_names,
                       max_seq_length_used=max_seq_length, continual=cont_args if continual else None,
                       alignment=align_data_args if continual else None, loss=loss_args if continual else None,
                       realign=realign_args if continual else None,
                       representation_transform=transform.describe(languages[1:]) if transform else None,
                       training=training_args, threads=threads)
    save_model_card(trainer, tasks="token-classification", dataset=data_args.dataset_name or "WikiANN")


if __name__ == "__main__":
    run_main(main)
