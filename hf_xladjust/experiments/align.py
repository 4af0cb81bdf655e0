"""Word-align a whole parallel corpus once and write Pharaoh links, one line per corpus line.

The grid's shared alignment step: every seed's `run_adjust.py --aligner pharaoh --alignment_file ...`
then samples its sentences from this one alignment, so the runs of a language differ only by their
seed (eflomal has no seed of its own) and a rerun reproduces the first run.

    python -m hf_xladjust.experiments.align --train_file en-es.txt --output_dir out/align/es
    python -m hf_xladjust.experiments.align --parallel_dataset Helsinki-NLP/opus-100 --parallel_config en-es \
        --target_lang es --output_dir out/align/es
"""
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from transformers import HfArgumentParser

from hf_xladjust.alignment.aligners import align_corpus, write_pharaoh
from hf_xladjust.alignment.multilingual import adjust_input_files
from hf_xladjust.alignment.parallel import ParallelDatasetArguments, read_parallel
from hf_xladjust.cli import run_main, write_run_args
from hf_xladjust.files import check_input_files, write_json

logger = logging.getLogger(__name__)


@dataclass
class AlignArguments:
    output_dir: str = field(metadata={"help": "Where alignment.pharaoh and alignment_stats.json are written."})
    train_file: Optional[str] = field(default=None, metadata={"help": "One file of 'source ||| target' lines."})
    source_file: Optional[str] = field(default=None, metadata={"help": "Source side, one sentence a line."})
    target_file: Optional[str] = field(default=None, metadata={"help": "Target side, line-aligned."})
    aligner: str = field(default="eflomal", metadata={"help": "eflomal or fast_align."})
    symmetrization: Optional[str] = field(
        default=None, metadata={"help": "Default: intersect for eflomal, grow-diag-final-and for fast_align."}
    )
    skip_bad_lines: bool = field(
        default=False, metadata={"help": "Skip empty/undecodable lines, as run_adjust.py --skip_bad_lines does "
                                         "(the two must agree, or the lines no longer match)."}
    )
    source_lang: Optional[str] = field(
        default=None, metadata={"help": "With --parallel_dataset: the source side's language, as run_adjust.py's."}
    )
    target_lang: Optional[str] = field(
        default=None, metadata={"help": "With --parallel_dataset: the target side's language, as run_adjust.py's."}
    )


def build_parser() -> HfArgumentParser:
    """The step's arguments; the grid's dry run checks each step's flags against it."""
    from hf_xladjust.cli import script_parser

    return script_parser((AlignArguments, ParallelDatasetArguments),
                         __doc__.replace("\n\n    python", " Example:\n\n    python", 1),
                         prog="python -m hf_xladjust.experiments.align")


def input_files(args):
    """The corpus the step reads, checked first (and by the grid's dry run on each step's arguments)."""
    return adjust_input_files(args)


def main():
    args, hub_data = build_parser().parse_args_into_dataclasses()
    check_input_files(input_files(args))
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO,
                        handlers=[logging.StreamHandler(sys.stdout)])
    start = time.time()
    dataset = hub_data.translation_dataset()
    if dataset is not None:  # one row a "line", in the languages run_adjust.py reads it in
        corpus = dataset.read(args.source_lang, args.target_lang, skip_bad_lines=args.skip_bad_lines)
    else:
        corpus = read_parallel(args.source_file, args.target_file, args.train_file,
                               skip_bad_lines=args.skip_bad_lines)
    symmetrization = args.symmetrization or ("grow-diag-final-and" if args.aligner == "fast_align" else "intersect")
    links = align_corpus(corpus.src, corpus.tgt, args.aligner, symmetrization)
    os.makedirs(args.output_dir, exist_ok=True)
    write_pharaoh(os.path.join(args.output_dir, "alignment.pharaoh"), links)
    stats = {"sentence_pairs": len(links), "links": sum(map(len, links)), "aligner": args.aligner,
             "symmetrization": symmetrization, "lines_skipped": dict(corpus.skipped),
             "seconds": round(time.time() - start, 2)}
    write_json(os.path.join(args.output_dir, "alignment_stats.json"), stats)
    write_run_args(args.output_dir, align=args, parallel_dataset=hub_data)
    logger.info("aligned %d sentence pairs (%d links) in %.1f s", stats["sentence_pairs"], stats["links"],
                stats["seconds"])


if __name__ == "__main__":
    run_main(main)
