#!/usr/bin/env python
"""Cross-lingual sentence retrieval (Tatoeba) at every layer of an encoder: MRR and acc@1 per layer.

Shaped like the HF example scripts (parse, log, load data, load model, evaluate, save metrics); the
retrieval itself is `hf_xladjust.evaluation.retrieval.SentenceRetrievalEvaluator`, which can also
run inside training. Any checkpoint works: the original or an adjusted encoder, a model fine-tuned
on SQuAD (as XTREME-R), a continual-learning run; a task checkpoint loads as its base encoder.
Examples:

    # LASER's files (tatoeba.spa-eng.spa / tatoeba.spa-eng.eng ...)
    python run_xsr.py --model_name_or_path out/adjusted-es --tatoeba_dir data/tatoeba \\
        --languages es ru vi hi --output_dir out/xsr

    # the Hub (XTREME's tatoeba.spa configs), both directions, bf16 on a GPU
    python run_xsr.py --model_name_or_path google-bert/bert-base-multilingual-cased --dataset_name google/xtreme \\
        --languages es --direction both --bf16 --output_dir out/xsr

    # any two line-parallel files
    python run_xsr.py --model_name_or_path M --source_file test.es --target_file test.en --source_lang es \\
        --output_dir out/xsr

Writes `all_results.json` (`xsr_es_mrr_layer{L}`, `xsr_es_acc1_layer{L}`, `xsr_es_best_layer`,
`xsr_es_mrr` and `xsr_es_acc1` at the best layer, ...), `predictions_es.jsonl` (per query `id`,
`ranks`: the gold candidate's rank at every layer, index 0 = embeddings, `gold`, `pred`) and
`run_args.json`. The English-to-X direction is named `en-es`. `--representation_transform DIR` (a rotation
or normalisation of `python -m hf_xladjust.evaluation.transforms`) transforms every layer's sentence vectors
before ranking, and run_args.json records it.
"""
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import List, Optional

import datasets
import torch
import transformers
from transformers import AutoConfig, AutoModel, AutoTokenizer, HfArgumentParser

from hf_xladjust.cli import (
    OVERWRITE_HELP,
    ModelArguments,
    check_output_dir,
    load_pretrained,
    merged_arguments,
    parse_arguments,
    run_main,
    set_cpu_threads,
    write_run_args,
)
from hf_xladjust.evaluation.retrieval import (
    POOLINGS,
    SentenceRetrievalEvaluator,
    format_layer_table,
    read_parallel_lines,
    read_tatoeba,
    tatoeba_code,
    tatoeba_files,
    tatoeba_from_hub,
)
from hf_xladjust.evaluation.transforms import (
    RepresentationTransform,
    RepresentationTransformArguments,
    retrieval_transform,
    transform_input_files,
)
from hf_xladjust.files import InputPath, check_input_files, write_json, write_jsonl
from hf_xladjust.model_card import save_model_card
from hf_xladjust.precision import check_cpu_bf16, precision_record
from hf_xladjust.precision import describe as describe_precision
from hf_xladjust.tokenization import ensure_pad_token

logger = logging.getLogger(__name__)

DIRECTION_CHOICES = {"xx-en": ("forward",), "en-xx": ("reverse",), "both": ("forward", "reverse")}


@dataclass
class DataArguments:
    """Which sentence pairs to retrieve: LASER's Tatoeba files, a Hub dataset, or two line-parallel files."""

    languages: List[str] = field(
        default_factory=lambda: ["es", "ru", "vi", "hi"],
        metadata={"help": "Languages to evaluate (two-letter codes such as es, or Tatoeba's three-letter spa)."},
    )
    tatoeba_dir: Optional[str] = field(
        default=None, metadata={"help": "Folder with LASER's tatoeba.xxx-eng.xxx and tatoeba.xxx-eng.eng files."}
    )
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Hub dataset with one config per language (e.g. google/xtreme)."}
    )
    dataset_config_pattern: str = field(
        default="tatoeba.{lang3}",
        metadata={"help": "Hub config per language; {lang} and {lang3} are the two- and three-letter codes."},
    )
    dataset_split: str = field(default="validation", metadata={"help": "Hub split (XTREME's Tatoeba: validation)."})
    source_column: str = field(
        default="source_sentence", metadata={"help": "Hub column of the non-English side (XTREME: source_sentence)."}
    )
    target_column: str = field(
        default="target_sentence", metadata={"help": "Hub column of the English side (XTREME: target_sentence)."}
    )
    source_file: Optional[str] = field(
        default=None, metadata={"help": "One sentence a line, line-parallel to --target_file (replaces --languages)."}
    )
    target_file: Optional[str] = field(default=None, metadata={"help": "The candidates' side, line-parallel."})
    source_lang: Optional[str] = field(
        default=None, metadata={"help": "Language of --source_file; names the results (required with the files)."}
    )
    target_lang: str = field(default="en", metadata={"help": "Language of --target_file."})
    max_samples: Optional[int] = field(default=None, metadata={"help": "Keep the first N pairs of every set."})

    def __post_init__(self):
        if bool(self.source_file) != bool(self.target_file):
            raise ValueError("--source_file and --target_file go together")
        given = [bool(self.tatoeba_dir), bool(self.dataset_name), bool(self.source_file)]
        if sum(given) != 1:
            raise ValueError("give one of --tatoeba_dir, --dataset_name, or --source_file with --target_file")
        if self.source_file and not self.source_lang:
            raise ValueError("--source_file needs --source_lang (it names the results, e.g. es)")
        if not self.source_file:
            if not self.languages:
                raise ValueError("--languages is empty")
            for lang in self.languages:
                tatoeba_code(lang)
        if self.max_samples is not None and self.max_samples < 1:
            raise ValueError(f"--max_samples must be positive, got {self.max_samples}")


@dataclass
class RetrievalArguments:
    """How sentences are embedded and ranked, and where the results go."""

    output_dir: str = field(metadata={"help": "Where all_results.json and the prediction files go."})
    direction: str = field(
        default="xx-en",
        metadata={"help": "xx-en: queries in the language, English candidates (the paper's code); en-xx; or both."},
    )
    pooling: str = field(
        default="mean",
        metadata={"help": f"Sentence vector, one of {POOLINGS}: mean over all non-padding tokens including the "
                          f"special ones (the paper's code and XTREME), mean_no_special, or cls."},
    )
    batch_size: int = field(default=64, metadata={"help": "Sentences per forward pass (batches sorted by length)."})
    max_length: int = field(
        default=512, metadata={"help": "Longest input in tokens (the paper's 512), capped by the model's limit."}
    )
    device: Optional[str] = field(default=None, metadata={"help": "cpu, cuda, cuda:1 ... (default: cuda if any)."})
    fp16: bool = field(default=False, metadata={"help": "Forward pass under fp16 autocast (scores stay fp32)."})
    bf16: bool = field(default=False, metadata={"help": "Forward pass under bf16 autocast (scores stay fp32)."})
    seed: int = field(default=42, metadata={"help": "Recorded only: retrieval draws nothing at random."})
    log_level: str = field(default="info", metadata={"help": "debug, info, warning, error."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": OVERWRITE_HELP})

    def __post_init__(self):
        if self.direction not in DIRECTION_CHOICES:
            raise ValueError(f"--direction must be one of {list(DIRECTION_CHOICES)}, got {self.direction!r}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"--pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if self.fp16 and self.bf16:
            raise ValueError("--fp16 and --bf16 exclude each other")
        if self.batch_size < 1 or self.max_length < 3:
            raise ValueError("--batch_size must be positive and --max_length at least 3")


def build_parser() -> HfArgumentParser:
    """The script's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser((ModelArguments, DataArguments, RetrievalArguments, RepresentationTransformArguments),
                         __doc__)


def input_files(args):
    """The files this run reads (`args`: the parsed arguments as one namespace): checked before anything
    loads, and by the grid's dry run on each step's arguments."""
    inputs = [InputPath(f"--{name}", getattr(args, name)) for name in ("source_file", "target_file")
              if getattr(args, name)]
    if not args.source_file and args.tatoeba_dir:
        inputs.append(InputPath("--tatoeba_dir", args.tatoeba_dir, "folder"))
        inputs += [InputPath(f"--tatoeba_dir ({lang})", path) for lang in dict.fromkeys(args.languages)
                   for path in tatoeba_files(args.tatoeba_dir, lang)]
    return inputs + transform_input_files(args)


def main():
    parser = build_parser()
    model_args, data_args, xsr_args, transform_args = parse_arguments(parser)
    check_output_dir(xsr_args.output_dir, "all_results.json", xsr_args.overwrite_output_dir)
    check_input_files(input_files(merged_arguments(data_args, transform_args)))

    # Setup logging
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
                        datefmt="%m/%d/%Y %H:%M:%S", handlers=[logging.StreamHandler(sys.stdout)])
    log_level = logging.getLevelName(xsr_args.log_level.upper())
    for name in (__name__, "hf_xladjust"):
        logging.getLogger(name).setLevel(log_level)
    # transformers and datasets speak at --log_level debug only, as the examples' default "passive" level
    library_level = log_level if log_level <= logging.DEBUG else max(log_level, logging.WARNING)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    device = torch.device(xsr_args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = set_cpu_threads(device.type)
    amp = "fp16" if xsr_args.fp16 else "bf16" if xsr_args.bf16 else None
    if amp == "bf16" and device.type == "cpu":
        check_cpu_bf16()  # one line where the CPU has no native bf16
    precision = precision_record(xsr_args.bf16, xsr_args.fp16, device.type)
    logger.info(f"device: {device}, autocast: {amp or 'no'}, pooling: {xsr_args.pooling}, "
                f"direction: {xsr_args.direction}; {describe_precision(precision)}")

    # The tokenizer and config first (a bad path fails in seconds); the model loads after the data.
    tokenizer = load_pretrained(AutoTokenizer, *model_args.tokenizer_source(),
                                use_fast=model_args.use_fast_tokenizer, **model_args.hub_kwargs())
    config = load_pretrained(AutoConfig, *model_args.config_source(), **model_args.hub_kwargs())
    ensure_pad_token(tokenizer, config)

    # Load the data: every set is read and checked before the model is loaded or anything is written.
    hub_kwargs = {"cache_dir": model_args.cache_dir, "token": model_args.token}
    sets = {}  # forward name -> (ParallelSentences, source lang, target lang)
    if data_args.source_file:
        pairs = read_parallel_lines(data_args.source_file, data_args.target_file)
        sets[data_args.source_lang] = (pairs, data_args.source_lang, data_args.target_lang)
    else:
        for lang in dict.fromkeys(data_args.languages):
            if data_args.tatoeba_dir:
                pairs = read_tatoeba(data_args.tatoeba_dir, lang)
            else:
                pairs = tatoeba_from_hub(data_args.dataset_name, lang, data_args.dataset_config_pattern,
                                         data_args.dataset_split, data_args.source_column, data_args.target_column,
                                         **hub_kwargs)
            sets[lang] = (pairs, lang, "en")
    for name, (pairs, src, tgt) in list(sets.items()):
        sets[name] = (pairs.head(data_args.max_samples), src, tgt)
        logger.info(f"{name}: {len(sets[name][0])} sentence pairs from {pairs.source} and {pairs.target}")

    # The representation transform, if any: every language it would touch must be in the file.
    transform = None
    if transform_args.representation_transform:
        transform = RepresentationTransform.load(transform_args.representation_transform)
        transform.require([lang for _, src, tgt in sets.values() for lang in (src, tgt)], standardize_english=True)

    # Load the pretrained model (a task checkpoint, e.g. fine-tuned on SQuAD, loads as its encoder).
    model = load_pretrained(AutoModel, model_args.model_name_or_path, "--model_name_or_path", config=config,
                            **model_args.hub_kwargs()).to(device)
    if transform is not None:
        transform.check_model(model.config)

    # Evaluate: all layers in one forward pass per batch, all candidates ranked per query.
    directions = DIRECTION_CHOICES[xsr_args.direction]
    metrics, results = {}, {}
    start = time.perf_counter()
    for name, (pairs, src, tgt) in sets.items():
        forward = name if tgt == "en" else f"{src}-{tgt}"
        evaluator = SentenceRetrievalEvaluator(
            pairs.sources, pairs.targets, tokenizer, name=forward, reverse_name=f"{tgt}-{src}",
            directions=directions, pooling=xsr_args.pooling, batch_size=xsr_args.batch_size,
            max_length=xsr_args.max_length, amp=amp, prefix="xsr_",
            source_transform=retrieval_transform(transform, src), target_transform=retrieval_transform(transform, tgt))
        set_start = time.perf_counter()
        metrics.update(evaluator(model))
        logger.info(f"{name}: {len(pairs)} pairs in {time.perf_counter() - set_start:.1f} s")
        results.update(evaluator.results)
    metrics["xsr_runtime"] = round(time.perf_counter() - start, 4)

    # Save metrics and per-query predictions.
    os.makedirs(xsr_args.output_dir, exist_ok=True)
    for name, result in results.items():
        write_jsonl(os.path.join(xsr_args.output_dir, f"predictions_{name}.jsonl"), result.prediction_records())
    write_json(os.path.join(xsr_args.output_dir, "all_results.json"), metrics)
    write_run_args(xsr_args.output_dir, model=model_args, data=data_args, retrieval=xsr_args,
                   sources={name: [p.source, p.target] for name, (p, _, _) in sets.items()},
                   representation_transform=transform.describe(
                       [lang for _, s, t in sets.values() for lang in (s, t) if retrieval_transform(transform, lang)]
                   ) if transform else None, threads=threads, precision=precision)
    logger.info("***** xsr metrics: MRR (acc@1) per layer, * = best layer by MRR *****\n"
                + format_layer_table(results))
    for name, result in results.items():
        b = result.best_layer
        logger.info(f"  {name}: best layer {b}, MRR {result.mrr[b]:.4f}, acc@1 {result.acc1[b]:.4f}")
    save_model_card(output_dir=xsr_args.output_dir, dataset="Tatoeba")  # README.md: what was evaluated, results


if __name__ == "__main__":
    run_main(main)
