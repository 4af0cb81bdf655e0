#!/usr/bin/env python
"""Fine-tune a multilingual encoder on English extractive QA (SQuAD v1.1) and evaluate it zero-shot on
XQuAD, MLQA and TyDi QA GoldP, including cross-lingual QA (question and paragraph in different
languages); optionally with continual cross-lingual alignment (Eq. 2).

A fork of the HF example `examples/pytorch/question-answering/run_qa.py`, kept in its shape (parse, log,
seed, data, model, preprocess, Trainer, train, evaluate, predict, metrics); the QA logic lives in
`hf_xladjust.tasks.qa` (reading, features, post-processing), `hf_xladjust.evaluation.qa_metrics` (SQuAD
and MLQA EM/F1) and `hf_xladjust.trainers.qa` (upstream's QA evaluation loop on ContinualAlignTrainer).
`--do_eval` evaluates the validation sets (SQuAD dev, MLQA dev, `--eval_sets`), `--do_predict` the test
sets (XQuAD, TyDi QA GoldP, MLQA test, `--test_sets`). Examples:

    # Hub SQuAD; XQuAD with both cross-lingual directions, MLQA dev and test, TyDi QA GoldP from google/xtreme
    python run_qa_xl.py --model_name_or_path google-bert/bert-base-multilingual-cased \\
        --dataset_name rajpurkar/squad --xquad_dataset google/xtreme --mlqa_dataset google/xtreme \\
        --tydiqa_dataset google/xtreme --do_train --do_eval --do_predict --output_dir out/qa

    # the same evaluation sets from local files
    python run_qa_xl.py --model_name_or_path out/qa --xquad_dir xquad --mlqa_dir MLQA_V1 --tydiqa_dir tydiqa \\
        --do_eval --do_predict --output_dir out/qa-eval

    # local SQuAD JSON, continual alignment with Spanish
    python run_qa_xl.py --model_name_or_path out/adjusted-es --train_file train-v1.1.json \\
        --xquad_dir xquad --eval_languages es --do_train --do_predict \\
        --aligned_pairs out/adjusted-es/aligned_pairs.jsonl --output_dir out/qa-cont
"""
import logging
import os
import random
from dataclasses import dataclass, field
from typing import List, Optional

from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
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
    write_run_args,
)
from hf_xladjust.files import check_input_files
from hf_xladjust.hub_data import canonical_dataset_id, load_hub_split
from hf_xladjust.model_card import save_model_card
from hf_xladjust.tasks.qa import (
    QASet,
    check_unique_names,
    examples_from_hub,
    load_qa_set,
    mlqa_hub_sets,
    mlqa_sets,
    named_sets,
    postprocess_qa_predictions,
    qa_input_files,
    read_squad_json,
    score_set,
    train_features,
    tydiqa_hub_sets,
    tydiqa_sets,
    validation_features,
    write_qa_predictions,
    xquad_hub_sets,
    xquad_sets,
)
from hf_xladjust.tokenization import ensure_pad_token, require_fast
from hf_xladjust.trainers.continual import (
    ContinualAlignArguments,
    FineTuningArguments,
    check_anchor_model,
    check_realign_options,
    continual_input_files,
    continual_kwargs,
)
from hf_xladjust.trainers.qa import QuestionAnsweringTrainer

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    """Which QA data to train and evaluate on, and how it is preprocessed and post-processed."""

    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset in the `squad` layout (e.g. rajpurkar/squad): its train split "
                                        "for --do_train, its validation split (set `en`) for --do_eval."}
    )
    dataset_config_name: Optional[str] = field(default=None, metadata={"help": "Config of the Hub dataset."})
    train_file: Optional[str] = field(
        default=None, metadata={"help": "English training data, SQuAD v1.1-format JSON (e.g. train-v1.1.json)."}
    )
    validation_file: Optional[str] = field(
        default=None, metadata={"help": "English validation set (--do_eval, set name `en`), SQuAD-format JSON."}
    )
    test_file: Optional[str] = field(
        default=None, metadata={"help": "English test set (--do_predict, set name `en`), SQuAD-format JSON."}
    )
    eval_sets: List[str] = field(
        default_factory=list,
        metadata={"help": "More validation sets (--do_eval) as NAME=PATH (SQuAD-format JSON). A NAME "
                          "mlqa_C-c_Q-q is scored with MLQA's normalisation for language C, others as SQuAD v1.1."},
    )
    test_sets: List[str] = field(
        default_factory=list, metadata={"help": "More test sets (--do_predict) as NAME=PATH, as --eval_sets."}
    )
    eval_languages: List[str] = field(
        default_factory=lambda: ["es", "ru", "vi", "hi"],
        metadata={"help": "Languages of the XQuAD, MLQA and TyDi QA sets (add `en` for the English ones)."},
    )
    xquad_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of xquad.{lang}.json: test sets xquad_X (and cross-lingual ones)."}
    )
    mlqa_dir: Optional[str] = field(
        default=None,
        metadata={"help": "MLQA_V1 folder (dev/, test/) or a folder of {dev,test}-context-C-question-Q.json: "
                          "dev files with --do_eval, test files with --do_predict, as mlqa_C-c_Q-q."},
    )
    tydiqa_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder of tydiqa.goldp.{lang}.dev.json (XTREME): test sets tydiqa_X."}
    )
    xquad_dataset: Optional[str] = field(
        default=None, metadata={"help": "Or: a Hub dataset with configs XQuAD.{lang} (google/xtreme): test sets "
                                        "xquad_X and the cross-lingual ones, as --xquad_dir."}
    )
    mlqa_dataset: Optional[str] = field(
        default=None, metadata={"help": "Or: a Hub dataset with configs MLQA.{context}.{question} (google/xtreme): "
                                        "validation split with --do_eval, test with --do_predict, as --mlqa_dir."}
    )
    tydiqa_dataset: Optional[str] = field(
        default=None, metadata={"help": "Or: a Hub dataset with the config tydiqa (google/xtreme; all languages in "
                                        "one validation split, filtered by id): test sets tydiqa_X."}
    )
    cross_lingual_eval: bool = field(
        default=True,
        metadata={"help": "With XQuAD and MLQA, also evaluate question-in-X with the English paragraph "
                          "(xquad_X-q_en-c, mlqa_en-c_X-q) and the English question with the paragraph in X "
                          "(xquad_en-q_X-c, mlqa_X-c_en-q)."},
    )
    max_seq_length: int = field(
        default=384, metadata={"help": "Tokens per window (question + context part); longer contexts are split."}
    )
    doc_stride: int = field(default=128, metadata={"help": "Overlap in tokens between the windows of a context."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every window to max_seq_length instead of padding per batch."}
    )
    n_best_size: int = field(
        default=20, metadata={"help": "Start and end candidates per window considered in post-processing."}
    )
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-run the tokenisation of cached datasets."})
    preprocessing_num_workers: Optional[int] = field(default=None, metadata={"help": "Processes for tokenisation."})
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N training questions."})
    max_eval_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N questions of every validation set."}
    )
    max_predict_samples: Optional[int] = field(
        default=None, metadata={"help": "Keep the first N questions of every test set."}
    )

    def __post_init__(self):
        if self.doc_stride >= self.max_seq_length:
            raise ValueError(f"--doc_stride ({self.doc_stride}) must be smaller than --max_seq_length "
                             f"({self.max_seq_length})")
        if self.n_best_size < 1 or self.max_answer_length < 1:
            raise ValueError("--n_best_size and --max_answer_length must be positive")


@dataclass
class QATrainingArguments(FineTuningArguments):
    """The paper's SQuAD fine-tuning: lr 3e-5, 2 epochs (and `FineTuningArguments`' optimiser settings)."""

    learning_rate: float = field(default=3e-5, metadata={"help": "Learning rate (paper: 3e-5)."})
    num_train_epochs: float = field(default=2.0, metadata={"help": "Epochs over SQuAD (paper: 2)."})


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser(
        (ModelArguments, DataTrainingArguments, ContinualAlignArguments, AlignmentDataArguments,
         RealignmentArguments, AlignmentLossArguments, QATrainingArguments), __doc__
    )


def input_files(args):
    """The files this run reads (`args`: the parsed arguments as one namespace): checked before anything
    loads, and by the grid's dry run on each step's arguments."""
    return qa_input_files(args) + continual_input_files(args)


def main():
    parser = build_parser()
    model_args, data_args, cont_args, align_data_args, realign_args, loss_args, training_args = \
        parse_arguments(parser)
    check_output_dir(training_args.output_dir, "all_results.json", training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint)
    check_input_files(input_files(merged_arguments(data_args, cont_args, align_data_args, training_args)))

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
    config = load_pretrained(AutoConfig, *model_args.config_source(), **model_args.hub_kwargs())
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(),
                                use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    require_fast(tokenizer, "run_qa_xl.py (offset mappings)")
    ensure_pad_token(tokenizer, config)
    check_realign_options(cont_args, loss_args, realign_args, training_args.do_train)
    if training_args.do_train:
        check_anchor_model(cont_args, loss_args, model_args.model_name_or_path, realign_args=realign_args,
                           **model_args.hub_kwargs())

    # Get the datasets: English training questions (SQuAD JSON or a Hub dataset in the `squad` layout);
    # validation and test sets, each a named QASet that knows how it is scored.
    hub_kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    if data_args.dataset_name:
        data_args.dataset_name = canonical_dataset_id(data_args.dataset_name)

    def hub_split(split, require_answers):
        config_name = data_args.dataset_config_name
        source = data_args.dataset_name + (f"[{config_name}]" if config_name else "")
        dataset = load_hub_split(data_args.dataset_name, config_name, split, **hub_kwargs)
        return examples_from_hub(dataset, f"{source}:{split}", require_answers)

    train_examples = None
    if training_args.do_train:
        if data_args.train_file:
            train_examples, _ = read_squad_json(data_args.train_file, require_answers=True)
        elif data_args.dataset_name:
            train_examples, _ = hub_split("train", True)
        else:
            raise ValueError("--do_train needs --train_file or --dataset_name")
        if data_args.max_train_samples is not None:
            train_examples = train_examples[:data_args.max_train_samples]

    languages = list(dict.fromkeys(data_args.eval_languages))
    eval_sets = {}  # split -> [QASet]
    if training_args.do_eval:
        sets = []
        if data_args.validation_file:
            sets.append(load_qa_set("en", data_args.validation_file))
        elif data_args.dataset_name:
            examples, labelled = hub_split("validation", False)
            sets.append(QASet("en", examples, f"{data_args.dataset_name}:validation", labelled=labelled))
        sets += named_sets(data_args.eval_sets, "--eval_sets")
        if data_args.mlqa_dir:
            sets += mlqa_sets(data_args.mlqa_dir, "dev", languages, data_args.cross_lingual_eval)
        if data_args.mlqa_dataset:
            sets += mlqa_hub_sets(data_args.mlqa_dataset, "dev", languages, data_args.cross_lingual_eval,
                                  **hub_kwargs)
        if not sets:
            raise ValueError("--do_eval needs --validation_file, --dataset_name, --eval_sets, --mlqa_dir or "
                             "--mlqa_dataset")
        eval_sets["eval"] = [s.head(data_args.max_eval_samples) for s in sets]
    if training_args.do_predict:
        sets = [load_qa_set("en", data_args.test_file)] if data_args.test_file else []
        sets += named_sets(data_args.test_sets, "--test_sets")
        if data_args.xquad_dir:
            sets += xquad_sets(data_args.xquad_dir, languages, data_args.cross_lingual_eval)
        if data_args.xquad_dataset:
            sets += xquad_hub_sets(data_args.xquad_dataset, languages, data_args.cross_lingual_eval, **hub_kwargs)
        if data_args.mlqa_dir:
            sets += mlqa_sets(data_args.mlqa_dir, "test", languages, data_args.cross_lingual_eval)
        if data_args.mlqa_dataset:
            sets += mlqa_hub_sets(data_args.mlqa_dataset, "test", languages, data_args.cross_lingual_eval,
                                  **hub_kwargs)
        if data_args.tydiqa_dir:
            sets += tydiqa_sets(data_args.tydiqa_dir, languages)
        if data_args.tydiqa_dataset:
            sets += tydiqa_hub_sets(data_args.tydiqa_dataset, languages, **hub_kwargs)
        if not sets:
            raise ValueError("--do_predict found no test set: give --test_file, --test_sets, --xquad_dir, "
                             "--mlqa_dir (with test files), --tydiqa_dir or their *_dataset options")
        eval_sets["test"] = [s.head(data_args.max_predict_samples) for s in sets]
    for sets in eval_sets.values():
        check_unique_names(sets)

    # Load the pretrained model
    model = load_pretrained(AutoModelForQuestionAnswering, model_args.model_name_or_path, "--model_name_or_path",
                            config=config, **model_args.hub_kwargs())

    # Preprocessing the datasets.
    max_seq_length = data_args.max_seq_length
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(f"--max_seq_length {max_seq_length} is longer than the model's maximum "
                       f"({tokenizer.model_max_length}); using {tokenizer.model_max_length}.")
        max_seq_length = tokenizer.model_max_length
    doc_stride = data_args.doc_stride
    if doc_stride >= max_seq_length:
        raise ValueError(f"--doc_stride {doc_stride} must be smaller than the window length {max_seq_length}")
    map_kwargs = {"num_proc": data_args.preprocessing_num_workers,
                  "load_from_cache_file": not data_args.overwrite_cache}

    train_dataset = None
    if training_args.do_train:
        source = data_args.train_file or f"{data_args.dataset_name}:train"
        with training_args.main_process_first(desc="train dataset map pre-processing"):
            train_dataset = train_features(train_examples, source, tokenizer, max_seq_length, doc_stride,
                                           data_args.pad_to_max_length,
                                           dict(map_kwargs, desc="Running tokenizer on train dataset"))
        logger.info(f"{len(train_examples)} training questions -> {len(train_dataset)} windows")
        # Log a few random samples from the training set:
        for index in random.sample(range(len(train_dataset)), min(3, len(train_dataset))):
            logger.info(f"Sample {index} of the training set: {train_dataset[index]}.")

    for split, sets in eval_sets.items():
        for qa_set in sets:
            with training_args.main_process_first(desc=f"{split} {qa_set.name} pre-processing"):
                validation_features(qa_set, tokenizer, max_seq_length, doc_stride, data_args.pad_to_max_length,
                                    dict(map_kwargs, desc=f"Running tokenizer on {split} {qa_set.name}"))

    # Data collator: we have already padded to max length if the corresponding flag is True.
    if data_args.pad_to_max_length:
        data_collator = default_data_collator
    else:
        data_collator = DataCollatorWithPadding(
            tokenizer, pad_to_multiple_of=8 if training_args.fp16 or training_args.bf16 else None)

    # Post-processing: we match the start logits and end logits to answers in the original context.
    def post_processing_function(qa_set: QASet, features, predictions, stage="eval"):
        texts, scores = postprocess_qa_predictions(
            [ex.context for ex in qa_set.examples], qa_set.features.example_index, qa_set.features.offsets,
            predictions, n_best_size=data_args.n_best_size, max_answer_length=data_args.max_answer_length)
        formatted = [{"id": ex.id, "prediction_text": t, "score": float(s)}
                     for ex, t, s in zip(qa_set.examples, texts, scores)]
        return EvalPrediction(predictions=formatted, label_ids=qa_set)

    # The metric step keeps each set's per-question (f1, em), so that its predictions file reuses them
    # instead of scoring the set a second time.
    per_question_scores = {}

    def compute_metrics(p: EvalPrediction):
        totals, per_question_scores[p.label_ids.name] = score_set(
            p.label_ids, [pred["prediction_text"] for pred in p.predictions])
        return totals

    # Continual mode (Eq. 2): a side batch of aligned sentence pairs at every step, f0 as the anchor
    # (the original model, also when fine-tuning starts from an adjusted one, as in the paper's code).
    # Without aligned data the trainer is the plain QA trainer, so baseline and continual runs train alike.
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
    eval_named = {s.name: s for s in eval_sets.get("eval", [])}
    trainer = QuestionAnsweringTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset={name: s.features.dataset for name, s in eval_named.items()} or None,
        eval_examples=eval_named or None,
        processing_class=tokenizer,
        data_collator=data_collator,
        post_process_function=post_processing_function,
        compute_metrics=compute_metrics,
        **trainer_kwargs,
    )

    # Training
    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        trainer.save_model()  # Saves the tokenizer too for easy upload
        metrics = train_result.metrics
        metrics["train_samples"] = len(train_examples)
        metrics["train_windows"] = len(train_dataset)
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()

    # Evaluation (validation sets) and prediction (test sets): EM/F1 and per-question predictions.
    for split, sets in eval_sets.items():
        logger.info(f"*** {'Evaluate' if split == 'eval' else 'Predict'} ***")
        metrics = {}
        for qa_set in sets:
            prefix = f"{split}_{qa_set.name}"
            output = trainer.predict(qa_set.features.dataset, qa_set, metric_key_prefix=prefix)
            metrics.update(output.metrics)
            metrics[f"{prefix}_samples"] = len(qa_set.examples)
            metrics[f"{prefix}_windows"] = len(qa_set.features.dataset)
            if not qa_set.labelled:
                logger.warning(f"{prefix}: {qa_set.source} has no gold answers; predictions only, no score")
            per_question = per_question_scores.pop(qa_set.name)  # scored by trainer.predict's compute_metrics
            if trainer.is_world_process_zero():
                texts = [pred["prediction_text"] for pred in output.predictions]
                write_qa_predictions(os.path.join(training_args.output_dir, f"predictions_{prefix}.jsonl"), qa_set,
                                     texts, [pred["score"] for pred in output.predictions], per_question)
        trainer.log_metrics(split, metrics)
        trainer.save_metrics(split, metrics)

    if trainer.is_world_process_zero():
        continual = cont_args.enabled
        write_run_args(training_args.output_dir, model=model_args, data=data_args,
                       max_seq_length_used=max_seq_length,
                       eval_sets={split: {s.name: {"source": s.source, "metric": s.metric, "lang": s.lang,
                                                   "labelled": s.labelled, "questions": len(s.examples)}
                                          for s in sets} for split, sets in eval_sets.items()},
                       continual=cont_args if continual else None,
                       alignment=align_data_args if continual else None, loss=loss_args if continual else None,
                       realign=realign_args if continual else None,
                       training=training_args, threads=threads)
    save_model_card(trainer, tasks="question-answering", dataset=data_args.dataset_name or "SQuAD")


if __name__ == "__main__":
    run_main(main)

