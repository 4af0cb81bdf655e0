#!/usr/bin/env python
"""Wall time of a tiny real run_adjust.py under each CPU thread setting, alone and two at once.

A random BERT (default 2 layers x 64 hidden) with a whole-word WordPiece vocabulary of the demo
corpus, trained by the real CLI for --max_steps steps of 32 sentence pairs of demo_data/en-es.txt
(diagonal Pharaoh links, so no aligner runs). Each setting starts the script as a subprocess with
OMP_NUM_THREADS as given ("unset" removes it, so the script chooses); "x2" starts two such runs
at once, as two grid processes sharing a box do. The settings are interleaved, --repeats rounds;
each run's numbers are printed as they come, then per setting the medians of the wall time of the
process (imports included) and of the Trainer's train_runtime (the steps only), each also as a
ratio to the OMP_NUM_THREADS=1 run alone. The threads a run used are those its run_args.json
records (`threads`; null for a script that does not); what a plain `import torch` gets under each
setting is printed first. TOKENIZERS_PARALLELISM is the caller's (false where unset). The
machine's other load changes every number: compare ratios within one run, round by round.

    python benchmarks/bench_threads.py [--layers 2 --hidden 64 --max_steps 60 --repeats 2]
        [--settings unset 1 2 2,passive unset,x2 1,x2 2,x2 2,x2,passive]

",passive" adds OMP_WAIT_POLICY=PASSIVE (libgomp threads sleep at a barrier instead of spinning).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "disabled"}
PROBE = ("import json, os, torch; print(json.dumps({'torch_threads': torch.get_num_threads(), "
         "'interop_threads': torch.get_num_interop_threads(), 'affinity': len(os.sched_getaffinity(0))}))")


def build_model(out_dir, corpus, layers, hidden):
    """A random BERT whose vocabulary is every whole word of the corpus (one token per word)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    os.makedirs(out_dir, exist_ok=True)
    words = sorted({w for line in open(corpus, encoding="utf-8") for side in line.split("|||") for w in side.split()})
    path = os.path.join(out_dir, "vocab.txt")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(SPECIALS + words) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=path, do_lower_case=False, strip_accents=False,
                                  tokenize_chinese_chars=False, model_max_length=128)
    config = BertConfig(vocab_size=len(SPECIALS) + len(words), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=max(1, hidden // 32), intermediate_size=4 * hidden,
                        max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def diagonal_links(corpus, path):
    with open(corpus, encoding="utf-8") as f, open(path, "w", encoding="utf-8") as out:
        for line in f:
            src, tgt = line.split("|||")
            out.write(" ".join(f"{k}-{k}" for k in range(min(len(src.split()), len(tgt.split())))) + "\n")
    return path


def setting_env(setting):
    """The environment of one setting: '1' -> OMP_NUM_THREADS=1, 'unset' -> none; ',passive' adds the wait policy."""
    parts = setting.split(",")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(OFFLINE)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    if parts[0] != "unset":
        env["OMP_NUM_THREADS"] = parts[0]
    if "passive" in parts:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env, 2 if "x2" in parts else 1


def run_setting(setting, args, model, corpus, links, work):
    """Start the setting's process(es) at once; return [(wall s, train_runtime s, threads)] per process."""
    env, n = setting_env(setting)
    procs = []
    for k in range(n):
        out = tempfile.mkdtemp(prefix="run-", dir=work)
        cmd = [sys.executable, os.path.join(ROOT, "run_adjust.py"), "--model_name_or_path", model,
               "--train_file", corpus, "--target_lang", "es", "--aligner", "pharaoh", "--alignment_file", links,
               "--output_dir", out, "--max_steps", str(args.max_steps), "--per_device_train_batch_size", "32",
               "--save_strategy", "no", "--report_to", "none", "--use_cpu", "--disable_tqdm", "true",
               "--logging_steps", str(args.max_steps), "--seed", str(k)]
        log = open(os.path.join(out, "log.txt"), "w")
        procs.append((time.perf_counter(), subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                            cwd=ROOT), out, log))
    results = []
    for start, proc, out, log in procs:
        rc = proc.wait()
        wall = time.perf_counter() - start
        log.close()
        if rc != 0:
            sys.exit(f"bench_threads: {setting}: run_adjust.py failed (exit {rc}), log {out}/log.txt")
        with open(os.path.join(out, "train_results.json"), encoding="utf-8") as f:
            runtime = json.load(f)["train_runtime"]
        with open(os.path.join(out, "run_args.json"), encoding="utf-8") as f:
            threads = json.load(f).get("threads")
        results.append((wall, runtime, threads))
        shutil.rmtree(out, ignore_errors=True)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--max_steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=2, help="rounds over all settings (medians are reported)")
    parser.add_argument("--corpus", default=os.path.join(ROOT, "demo_data", "en-es.txt"))
    parser.add_argument("--settings", nargs="+",
                        default=["unset", "1", "2", "2,passive", "unset,x2", "1,x2", "2,x2", "2,x2,passive"],
                        help="OMP_NUM_THREADS value or 'unset', ',x2' for two processes at once, ',passive' "
                             "for OMP_WAIT_POLICY=PASSIVE")
    args = parser.parse_args()
    if "1" not in args.settings:
        parser.error("--settings needs '1' (the reference of the ratios)")

    work = tempfile.mkdtemp(prefix="bench_threads_")
    model = build_model(os.path.join(work, "model"), args.corpus, args.layers, args.hidden)
    links = diagonal_links(args.corpus, os.path.join(work, "links.txt"))
    print(f"machine: os.cpu_count()={os.cpu_count()}, sched_getaffinity={len(os.sched_getaffinity(0))} cores, "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (other processes share these cores)")
    for setting in args.settings:
        env, _ = setting_env(setting)
        probe = json.loads(subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                                          check=True).stdout)
        print(f"  {setting:>16}: python -c 'import torch' sees {probe}")
    print(f"run: run_adjust.py, BERT {args.layers} layers x {args.hidden} hidden, {args.max_steps} steps of 32 "
          f"pairs, {args.repeats} interleaved rounds", flush=True)

    walls = {s: [] for s in args.settings}
    runtimes = {s: [] for s in args.settings}
    threads = {s: set() for s in args.settings}
    for _ in range(args.repeats):
        for setting in args.settings:
            for wall, runtime, used in run_setting(setting, args, model, args.corpus, links, work):
                print(f"  {setting}: wall {wall:.1f} s, train_runtime {runtime:.2f} s, threads {used}", flush=True)
                walls[setting].append(wall)
                runtimes[setting].append(runtime)
                threads[setting].add(json.dumps(used))
    shutil.rmtree(work, ignore_errors=True)

    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    ref_wall, ref_run = statistics.median(walls["1"]), statistics.median(runtimes["1"])
    print("| OMP_NUM_THREADS | processes at once | threads (run_args.json) | wall s (median, range) | "
          "train_runtime s (median, range) | wall / OMP=1 alone | train_runtime / OMP=1 alone |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for s in args.settings:
        env, n = setting_env(s)
        value = env.get("OMP_NUM_THREADS", "unset") + (" +PASSIVE" if "OMP_WAIT_POLICY" in env else "")
        w, r = statistics.median(walls[s]), statistics.median(runtimes[s])
        used = ", ".join(sorted(threads[s]))
        print(f"| {value} | {n} | {used} | {w:.1f} ({min(walls[s]):.1f}-{max(walls[s]):.1f}) | "
              f"{r:.2f} ({min(runtimes[s]):.2f}-{max(runtimes[s]):.2f}) | {w / ref_wall:.2f} | {r / ref_run:.2f} |")


if __name__ == "__main__":
    main()
