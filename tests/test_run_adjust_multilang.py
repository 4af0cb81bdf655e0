"""run_adjust.py --parallel: several target languages in one adjustment (Cao et al.), each corpus
sampled and aligned on its own, pooled into one training set."""
import json
import math
import random
import sys
from collections import Counter

import pytest
from conftest import FIXTURES, fixture_lines
from test_run_adjust import diagonal_pharaoh, joined_corpus, run_adjust

from hf_xladjust.alignment.multilingual import proportional_budget
from hf_xladjust.alignment.pairs import AlignmentDataArguments, build_aligned_pairs, read_aligned_pairs


def alone(tmp_path, lang, max_sentences, seed, **files):
    """What a one-language run builds from the same corpus with the same seed."""
    args = AlignmentDataArguments(target_lang=lang, aligner="pharaoh", max_sentences=max_sentences,
                                  alignment_file=str(diagonal_pharaoh(tmp_path / f"alone-{lang}.al", "en", lang)))
    pairs, stats = build_aligned_pairs(args, seed=seed, **{k: str(v) for k, v in files.items()})
    return pairs, stats


def test_two_languages_each_sampled_alone_then_pooled(tmp_path, tiny_model_dir):
    """es from one '|||' file, ru from two files; 5 of 12 sentences each with seed 7: the pooled file holds
    exactly the pairs build_aligned_pairs gives for each corpus alone, tagged with their language."""
    es_file, out = joined_corpus(tmp_path, "es"), tmp_path / "out"
    run_adjust("--model_name_or_path", tiny_model_dir, "--output_dir", out,
               "--parallel", f"es={es_file}", f"ru={FIXTURES / 'en.txt'},{FIXTURES / 'ru.txt'}",
               "--aligner", "pharaoh", "--alignment_files", f"es={diagonal_pharaoh(tmp_path / 'es.al')}",
               f"ru={diagonal_pharaoh(tmp_path / 'ru.al', 'en', 'ru')}",
               "--max_sentences", "5", "--seed", "7", "--per_device_train_batch_size", "4")
    pooled = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    assert Counter(p.lang for p in pooled) == {"es": 5, "ru": 5}
    es_alone, _ = alone(tmp_path, "es", 5, 7, train_file=es_file)
    ru_alone, _ = alone(tmp_path, "ru", 5, 7, source_file=FIXTURES / "en.txt", target_file=FIXTURES / "ru.txt")
    for p in es_alone + ru_alone:
        assert p.lang is None
    assert [(p.src, p.tgt, p.links) for p in pooled if p.lang == "es"] == [(p.src, p.tgt, p.links) for p in es_alone]
    assert [(p.src, p.tgt, p.links) for p in pooled if p.lang == "ru"] == [(p.src, p.tgt, p.links) for p in ru_alone]
    assert all(p.src[0] in {line.split()[0] for line in fixture_lines("en")} for p in pooled)  # English is src

    stats = json.loads((out / "alignment_stats.json").read_text())
    assert {lang: (s["sentences_read"], s["sentences_kept"], s["links_kept"], s["links_truncated"])
            for lang, s in stats["languages"].items()} == {"es": (5, 5, 34, 0), "ru": (5, 5, 29, 0)}
    assert (stats["sentences_kept"], stats["links_kept"], stats["links_special_tokens"]) == (10, 63, 20)
    assert stats["languages"]["es"]["links_identical_words"] == 1 and stats["sampling"] == "per_language"
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3  # ceil(10 / 4)
    assert json.loads((out / "run_args.json").read_text())["alignment"]["parallel"][0] == f"es={es_file}"


def test_proportional_sampling_trains_on_the_split_budget(tmp_path, tiny_model_dir):
    """es has 12 pairs, ru 6: a budget of 10 is 6.67 + 3.33, so es 7 and ru 3 (largest remainder); the pooled
    10 pairs at 3 a batch over 2 epochs make 2 * ceil(10 / 3) = 8 steps."""
    ru_file = tmp_path / "en-ru.txt"
    ru_file.write_text("".join(f"{a} ||| {b}\n" for a, b in list(zip(fixture_lines("en"), fixture_lines("ru")))[:6]),
                       encoding="utf-8")
    ru_al = diagonal_pharaoh(tmp_path / "ru.al", "en", "ru")
    ru_al.write_text("".join(line + "\n" for line in ru_al.read_text().splitlines()[:6]))
    es_file, out = joined_corpus(tmp_path, "es"), tmp_path / "out"
    run_adjust("--model_name_or_path", tiny_model_dir, "--output_dir", out,
               "--parallel", f"es={es_file}", f"ru={ru_file}", "--sample_proportionally", "true",
               "--aligner", "pharaoh", "--alignment_files", f"es={diagonal_pharaoh(tmp_path / 'es.al')}",
               f"ru={ru_al}", "--max_sentences", "10", "--seed", "3",
               "--per_device_train_batch_size", "3", "--num_train_epochs", "2")
    stats = json.loads((out / "alignment_stats.json").read_text())
    assert {lang: s["sentences_read"] for lang, s in stats["languages"].items()} == {"es": 7, "ru": 3}
    assert stats["languages"]["ru"]["sentences_in_corpus"] == 6 and stats["sampling"] == "proportional"
    pooled = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    args = AlignmentDataArguments(target_lang="ru", aligner="pharaoh", alignment_file=str(ru_al), max_sentences=3)
    ru_alone, _ = build_aligned_pairs(args, train_file=str(ru_file), seed=3)
    assert [p.tgt for p in pooled if p.lang == "ru"] == [p.tgt for p in ru_alone] and len(ru_alone) == 3
    assert (out / "train_results.json").is_file()
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == 10
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 8


@pytest.mark.parametrize("sizes, budget, expected", [
    ([12, 7, 5], 10, [5, 3, 2]),  # quotas 5, 2.92, 2.08: the one left over goes to the largest remainder
    ([2, 2], 3, [2, 1]),  # a tie goes to the language listed first
    ([3, 3, 6], 5, [1, 1, 3]),  # 1.25, 1.25, 2.5
    ([4, 5], 20, [4, 5]),  # a budget over the total takes every corpus whole
    ([250000, 180000, 70000], 30000, [15000, 10800, 4200]),  # exact quotas stay as they are
])
def test_proportional_budget_largest_remainder(sizes, budget, expected):
    assert proportional_budget(sizes, budget) == expected


def test_proportional_budget_adds_up_on_random_sizes():
    rng = random.Random(0)
    for _ in range(500):
        sizes = [rng.randint(1, 1000) for _ in range(rng.randint(1, 6))]
        budget = rng.randint(1, sum(sizes))
        counts = proportional_budget(sizes, budget)
        assert sum(counts) == budget
        for n, k in zip(sizes, counts):
            assert k <= n and math.floor(budget * n / sum(sizes)) <= k <= math.floor(budget * n / sum(sizes)) + 1


@pytest.mark.parametrize("args, message", [
    (["--parallel", "es={es},x,y"], "--parallel 'es={es},x,y': expected LANG=FILE (one 'en ||| xx' file) or "
                                    "LANG=SOURCE_FILE,TARGET_FILE (two line-aligned files)"),
    (["--parallel", "{es}"], "--parallel '{es}': expected LANG=FILE (one 'en ||| xx' file) or "
                             "LANG=SOURCE_FILE,TARGET_FILE (two line-aligned files)"),
    (["--parallel", "es={es},"], "--parallel 'es={es},': expected LANG=FILE (one 'en ||| xx' file) or "
                                 "LANG=SOURCE_FILE,TARGET_FILE (two line-aligned files)"),
    (["--parallel", "Spanish={es}"],
     "--parallel 'Spanish={es}': 'Spanish' is not a language code (2 or 3 lowercase letters such as es, ru, hi, "
     "optionally with a subtag such as zh-Hans)"),
    (["--parallel", "en={es}"], "--parallel 'en={es}': English is the anchored side of every corpus; name each "
                                "corpus by its other language"),
    (["--parallel", "es={es}", "es={es}"], "--parallel names es twice"),
    (["--parallel", "es={es}", "--source_file", "{es}"],
     "--parallel replaces --source_file, --target_file, --train_file and --parallel_dataset; give one or the other"),
    (["--parallel", "es={es}", "--parallel_dataset", "Helsinki-NLP/opus-100"],
     "--parallel replaces --source_file, --target_file, --train_file and --parallel_dataset; give one or the other"),
    (["--train_file", "{es}", "--parallel_dataset", "Helsinki-NLP/opus-100", "--target_lang", "es"],
     "give one of --train_file, --source_file with --target_file, or --parallel_dataset (or --parallel)"),
    (["--source_file", "{es}", "--target_lang", "es"], "--source_file and --target_file go together"),
    (["--parallel", "es={es}", "--target_lang", "es"],
     "--parallel names each corpus's language; drop --source_lang/--target_lang (--english_side target for "
     "'xx ||| en' corpora)"),
    (["--parallel", "es={es}", "ru={es}", "--aligner", "pharaoh", "--alignment_files", "es={es}"],
     "--aligner pharaoh needs an alignment file for every --parallel language; missing: ru "
     "(--alignment_files ru=FILE)"),
    (["--parallel", "es={es}", "--aligner", "pharaoh", "--alignment_files", "es={es}", "vi={es}"],
     "--alignment_files 'vi={es}': vi is not a --parallel language (es)"),
    (["--train_file", "{es}", "--target_lang", "es", "--sample_proportionally", "true"],
     "--alignment_files and --sample_proportionally go with --parallel"),
])
def test_bad_parallel_arguments_are_one_line_errors(tmp_path, tiny_model_dir, monkeypatch, args, message):
    import run_adjust

    es, out = str(joined_corpus(tmp_path, "es")), tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_adjust.py", "--model_name_or_path", str(tiny_model_dir),
                                      "--output_dir", str(out), *(a.format(es=es) for a in args)])
    with pytest.raises(SystemExit) as err:
        run_adjust.run_main(run_adjust.main)
    assert err.value.code == f"run_adjust.py: error: {message.format(es=es)}"
    assert not out.exists()


def test_a_missing_file_names_it(tmp_path, tiny_model_dir):
    """Every language's files are checked before any is aligned: a bad path is a one-line error naming it."""
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--output_dir", out, "--parallel",
                      f"es={joined_corpus(tmp_path, 'es')}", f"ru={tmp_path / 'absent.txt'}", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"run_adjust.py: error: {tmp_path / 'absent.txt'}: no such file (--parallel ru)")
    assert not (out / "aligned_pairs.jsonl").exists()


def test_a_missing_one_corpus_file_is_a_one_line_error(tmp_path, tiny_model_dir):
    out = tmp_path / "out"
    proc = run_adjust("--model_name_or_path", tiny_model_dir, "--output_dir", out, "--train_file",
                      tmp_path / "absent.txt", "--target_lang", "es", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        f"run_adjust.py: error: {tmp_path / 'absent.txt'}: no such file (--train_file)")
    assert not out.exists()
