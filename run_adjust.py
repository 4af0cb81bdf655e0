#!/usr/bin/env python
"""Stage 1 of cross-lingual adjustment: parallel data -> aligned word pairs -> adjusted encoder.

Shaped like the HF `examples/pytorch/*/run_*.py` scripts (parse, log, seed, data, model, train,
save); the reusable parts live in `hf_xladjust`. Example:

    python run_adjust.py --model_name_or_path bert-base-multilingual-cased \\
        --source_file wiki.en --target_file wiki.es --source_lang en --target_lang es \\
        --output_dir out/adjusted-es

The paper's `xx ||| en` files work as they are with `--target_lang en` (or `--english_side target`):
English is the side the anchor term keeps near the original model. Several target languages in one
run, as Cao et al.: `--parallel es=en-es.txt ru=wiki.en,wiki.ru` instead of the corpus flags. A Hub
dataset with a `translation` column instead of files (the same filters, sampling and alignment):
`--parallel_dataset Helsinki-NLP/opus-100 --parallel_config en-es --target_lang es`.
"""
import copy
import json
import logging
import os

from transformers import AutoConfig, AutoModel, AutoTokenizer, HfArgumentParser, set_seed

from hf_xladjust.alignment.loss import AlignmentLoss, AlignmentLossArguments
from hf_xladjust.alignment.multilingual import AdjustDataArguments, build_multilingual_pairs, links_trained_by_language
from hf_xladjust.alignment.pairs import (
    AlignedPairCollator,
    AlignedPairDataset,
    build_aligned_pairs,
    write_aligned_pairs,
)
from hf_xladjust.cli import (
    ModelArguments,
    check_output_dir,
    parse_arguments,
    run_main,
    set_cpu_threads,
    setup_logging,
    write_run_args,
)
from hf_xladjust.files import write_json
from hf_xladjust.trainers.adjust import AdjustTrainer, AdjustTrainingArguments, count_over_processes

logger = logging.getLogger(__name__)


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    return HfArgumentParser((ModelArguments, AdjustDataArguments, AlignmentLossArguments, AdjustTrainingArguments))


def main():
    parser = build_parser()
    model_args, data_args, loss_args, training_args = parse_arguments(parser)
    # run_args.json is the last file this script writes.
    check_output_dir(training_args.output_dir, "run_args.json", training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint)

    setup_logging(training_args, logger)
    threads = set_cpu_threads(training_args.device.type)
    logger.info(f"Training/evaluation parameters {training_args}")

    set_seed(training_args.seed)

    # Parallel data -> aligned word pairs. Everything is read and checked before anything is written.
    # With --parallel, each language's corpus on its own, then pooled (the Trainer's sampler shuffles the pool).
    cache_dir = os.path.join(training_args.output_dir, "alignment_cache")
    with training_args.main_process_first(desc="word alignment"):
        if data_args.parallel:
            pairs, stats = build_multilingual_pairs(data_args, seed=training_args.seed, cache_dir=cache_dir)
        else:
            pairs, stats = build_aligned_pairs(
                data_args, data_args.source_file, data_args.target_file, data_args.train_file,
                seed=training_args.seed, cache_dir=cache_dir,
                dataset=data_args.translation_dataset(cache_dir=model_args.cache_dir, token=model_args.token))
    logger.info("Aligned pairs: %s", json.dumps(stats))

    tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name or model_args.model_name_or_path,
                                              use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    config = AutoConfig.from_pretrained(model_args.config_name or model_args.model_name_or_path,
                                        **model_args.hub_kwargs())
    model = AutoModel.from_pretrained(model_args.model_name_or_path, config=config, **model_args.hub_kwargs())
    original = copy.deepcopy(model)  # f0: frozen, never saved

    max_length = min(data_args.align_max_length or tokenizer.model_max_length,
                     getattr(model.config, "max_position_embeddings", tokenizer.model_max_length))
    train_dataset = AlignedPairDataset(pairs, tokenizer, max_length, data_args.link_special_tokens)
    stats["links_truncated"] = train_dataset.links_lost
    stats["links_special_tokens"] = train_dataset.special_links  # CLS<->CLS, SEP<->SEP (--link_special_tokens)
    if data_args.parallel:
        for lang, links in links_trained_by_language(train_dataset).items():
            stats["languages"][lang]["links_truncated"] = stats["languages"][lang]["links_kept"] - links

    trainer = AdjustTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=AlignedPairCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        alignment_loss=AlignmentLoss.from_args(loss_args, anchor_model=original),
    )

    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_aligned_pairs(os.path.join(training_args.output_dir, "aligned_pairs.jsonl"), pairs)
        write_json(os.path.join(training_args.output_dir, "alignment_stats.json"), stats)

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the adjusted encoder + tokenizer, loadable with AutoModel / AutoModelFor...
    metrics = train_result.metrics
    metrics["train_samples"] = len(train_dataset)
    metrics["batches_without_links"] = count_over_processes(trainer, trainer.batches_without_links)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        write_run_args(training_args.output_dir, model=model_args, alignment=data_args,
                       loss=loss_args, training=training_args, threads=threads)


if __name__ == "__main__":
    run_main(main)
