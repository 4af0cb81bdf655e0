#!/usr/bin/env python
"""Stage 1 of cross-lingual adjustment: parallel data -> aligned word pairs -> adjusted encoder.

Shaped like the HF `examples/pytorch/*/run_*.py` scripts (parse, log, seed, data, model, train,
save); the reusable parts live in `hf_xladjust`. Example:

    python run_adjust.py --model_name_or_path google-bert/bert-base-multilingual-cased \\
        --source_file wiki.en --target_file wiki.es --source_lang en --target_lang es \\
        --output_dir out/adjusted-es

The paper's `xx ||| en` files work as they are with `--target_lang en` (or `--english_side target`):
English is the side the anchor term keeps near the original model. Several target languages in one
run, as Cao et al.: `--parallel es=en-es.txt ru=wiki.en,wiki.ru` instead of the corpus flags. A Hub
dataset with a `translation` column instead of files (the same filters, sampling and alignment):
`--parallel_dataset Helsinki-NLP/opus-100 --parallel_config en-es --target_lang es`.

Output: a checkpoint whose config names a ...ForMaskedLM or ...ForPreTraining architecture keeps that head:
its encoder is adjusted and the whole model saved, so `pipeline("fill-mask")` works on --output_dir
(the decoder is tied to the adjusted input embeddings; the rest of the head is the checkpoint's own, untrained
by the alignment loss). `--save_encoder_only` saves the bare encoder instead. AutoModel loads either.
"""
import json
import logging
import os

from transformers import AutoConfig, AutoTokenizer, HfArgumentParser, set_seed

from hf_xladjust.alignment.lora import save_merged
from hf_xladjust.alignment.loss import AlignmentLossArguments, encoder_of
from hf_xladjust.alignment.multilingual import (
    AdjustDataArguments,
    adjust_input_files,
    build_multilingual_pairs,
    links_trained_by_language,
)
from hf_xladjust.alignment.pairs import (
    AlignedPairCollator,
    AlignedPairDataset,
    build_aligned_pairs,
    write_aligned_pairs,
)
from hf_xladjust.alignment.realign import RealignmentArguments, prepare_model
from hf_xladjust.alignment.sentence import build_alignment_loss, check_sentence_options
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
from hf_xladjust.files import check_input_files, write_json
from hf_xladjust.model_card import save_model_card
from hf_xladjust.tokenization import ensure_pad_token
from hf_xladjust.trainers.adjust import (
    AdjustTrainer,
    AdjustTrainingArguments,
    count_over_processes,
    load_model_to_adjust,
)

logger = logging.getLogger(__name__)


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser((ModelArguments, AdjustDataArguments, AlignmentLossArguments, AdjustTrainingArguments,
                          RealignmentArguments), __doc__)


def input_files(args):
    """The files this run reads (`args`: the parsed arguments as one namespace): checked before anything
    loads, and by the grid's dry run on each step's arguments."""
    return adjust_input_files(args)


def main():
    parser = build_parser()
    model_args, data_args, loss_args, training_args, realign_args = parse_arguments(parser)
    check_sentence_options(loss_args, realign_args)
    # run_args.json is the last file this script writes.
    check_output_dir(training_args.output_dir, "run_args.json", training_args.overwrite_output_dir,
                     training_args.resume_from_checkpoint)
    check_input_files(input_files(merged_arguments(data_args)))

    setup_logging(training_args, logger)
    threads = set_cpu_threads(training_args.device.type)
    logger.info(f"Training/evaluation parameters {training_args}")

    set_seed(training_args.seed)

    # Tokenizer and config before the data: a bad path fails in seconds, not after the word aligner.
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(),
                                use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    config = load_pretrained(AutoConfig, *model_args.config_source(), **model_args.hub_kwargs())
    ensure_pad_token(tokenizer, config)

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

    # With the checkpoint's masked-LM / pretraining head if it has one (saved whole), unless --save_encoder_only
    # or --lora_r (then the output is the encoder's adapter).
    whole = load_model_to_adjust(model_args.model_name_or_path, config,
                                 training_args.save_encoder_only or realign_args.enabled, **model_args.hub_kwargs())
    # f0: a frozen copy of the bare encoder, or with --lora_r the same weights with the adapters off; never saved.
    # --freeze_layers freezes layers of the encoder in place.
    need_f0 = loss_args.anchor_weight != 0 or loss_args.pull_target == "frozen"
    model, original = prepare_model(encoder_of(whole), realign_args, need_f0, loss_args.align_layer)

    max_length = min(data_args.align_max_length or tokenizer.model_max_length,
                     getattr(model.config, "max_position_embeddings", tokenizer.model_max_length))
    train_dataset = AlignedPairDataset(pairs, tokenizer, max_length, data_args.link_special_tokens)
    stats["links_truncated"] = train_dataset.links_lost
    stats["links_special_tokens"] = train_dataset.special_links  # CLS<->CLS, SEP<->SEP (--link_special_tokens)
    stats["special_tokens_added"] = train_dataset.special_tokens  # by the tokenizer; [] means no special links
    if data_args.parallel:
        for lang, links in links_trained_by_language(train_dataset).items():
            stats["languages"][lang]["links_truncated"] = stats["languages"][lang]["links_kept"] - links

    trainer = AdjustTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        data_collator=AlignedPairCollator(tokenizer.pad_token_id),
        processing_class=tokenizer,
        alignment_loss=build_alignment_loss(loss_args, realign_args, anchor_model=original),
        model_to_save=None if realign_args.enabled else whole,
    )

    if trainer.is_world_process_zero():
        os.makedirs(training_args.output_dir, exist_ok=True)
        write_aligned_pairs(os.path.join(training_args.output_dir, "aligned_pairs.jsonl"), pairs)
        write_json(os.path.join(training_args.output_dir, "alignment_stats.json"), stats)

    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()  # the adjusted model (with its head; with --lora_r the adapter) + tokenizer
    metrics = train_result.metrics
    metrics["train_samples"] = len(train_dataset)
    metrics["trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    metrics["batches_without_links"] = count_over_processes(trainer, trainer.batches_without_links)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if trainer.is_world_process_zero():
        out_dirs = [training_args.output_dir]
        if realign_args.merge_lora:  # W + (α/r)·B·A in <output_dir>/merged, for AutoModel without PEFT
            out_dirs.append(save_merged(trainer.model, training_args.output_dir, tokenizer))
        for out_dir in out_dirs:  # merged/ traces back to its f0 as well
            write_run_args(out_dir, model=model_args, alignment=data_args,
                           loss=loss_args, training=training_args, realign=realign_args, threads=threads)
    save_model_card(trainer)  # README.md: the Trainer's card + ours; --push_to_hub pushes the finished folder


if __name__ == "__main__":
    run_main(main)
