"""Link filters, statistics and the aligned_pairs.jsonl round trip."""
import pytest

from hf_xladjust.alignment.pairs import (
    AlignedPair,
    AlignmentDataArguments,
    filter_links,
    filter_pairs,
    read_aligned_pairs,
    write_aligned_pairs,
)
from hf_xladjust.errors import InputError


def test_one_to_one_keeps_only_unshared_links():
    src, tgt = "a b c d".split(), "w x y z".split()
    links = [(0, 0), (1, 1), (1, 2), (2, 3), (3, 3)]
    counts = {}
    assert filter_links(src, tgt, links, one_to_one=True, drop_identical=False, counts=counts) == [(0, 0)]
    assert counts["links_not_one_to_one"] == 4
    assert filter_links(src, tgt, links, one_to_one=False, drop_identical=False) == sorted(links)


def test_identical_strings_are_dropped():
    src, tgt = "Paris is big".split(), "Paris es grande".split()
    counts = {}
    assert filter_links(src, tgt, [(0, 0), (1, 1), (2, 2)], counts=counts) == [(1, 1), (2, 2)]
    assert counts["links_identical_words"] == 1
    assert filter_links(src, tgt, [(0, 0)], drop_identical=False) == [(0, 0)]


def test_sentence_filters_and_stats():
    src = ["a b".split(), ("x " * 70).split(), "c d".split()]
    tgt = ["e f".split(), ("y " * 3).split(), "c d".split()]
    links = [[(0, 0), (1, 1)], [(0, 0)], [(0, 0), (1, 1)]]  # the third has only identical words
    pairs, stats = filter_pairs(src, tgt, links, AlignmentDataArguments(target_lang="xx"))
    assert [p.src for p in pairs] == [["a", "b"]]
    assert stats["sentences_too_long"] == 1 and stats["sentences_without_links"] == 1
    assert stats["sentences_kept"] == 1 and stats["links_kept"] == 2 and stats["links_identical_words"] == 2
    pairs, stats = filter_pairs(src, tgt, links, AlignmentDataArguments(
        target_lang="xx", max_words=None, drop_unlinked=False))
    assert len(pairs) == 3 and pairs[2].links == [] and stats["sentences_too_long"] == 0


def test_jsonl_round_trip_and_errors(tmp_path):
    pairs = [AlignedPair(["el", "gato"], ["the", "cat"], [(0, 0), (1, 1)])]
    path = tmp_path / "aligned_pairs.jsonl"
    write_aligned_pairs(str(path), pairs)
    assert read_aligned_pairs(str(path)) == pairs
    path.write_text(path.read_text() + '{"src": ["a"], "tgt": ["b"], "links": [[0, 3]]}\n')
    with pytest.raises(InputError, match=r"aligned_pairs.jsonl:2: link 0-3 out of range"):
        read_aligned_pairs(str(path))


def test_target_lang_en_alone_puts_english_in_src(tmp_path):
    """`--target_lang en` is enough for the paper's `es ||| en` files: the source is then not English by default."""
    from transformers import HfArgumentParser

    from hf_xladjust.alignment.pairs import build_aligned_pairs

    (tmp_path / "es-en.txt").write_text("el gato negro ||| the black cat\nla casa ||| the house\n", encoding="utf-8")
    (tmp_path / "es-en.al").write_text("0-0 1-1 2-2\n0-0 1-1\n", encoding="utf-8")
    parser = HfArgumentParser(AlignmentDataArguments)
    (args,) = parser.parse_args_into_dataclasses(["--target_lang", "en", "--aligner", "pharaoh",
                                                  "--alignment_file", str(tmp_path / "es-en.al")])
    assert args.source_lang is None and args.english_is_target
    pairs, stats = build_aligned_pairs(args, train_file=str(tmp_path / "es-en.txt"))
    assert stats["english_side"] == "target"
    assert [p.src for p in pairs] == [["the", "black", "cat"], ["the", "house"]]
    assert pairs[0].tgt == ["el", "gato", "negro"] and pairs[0].links == [(0, 0), (1, 1), (2, 2)]

    # the other defaults are unchanged: English is the source unless said otherwise, explicitly or by the languages
    assert not AlignmentDataArguments(target_lang="es").english_is_target
    assert AlignmentDataArguments(target_lang="es", english_side="target").english_is_target
    assert AlignmentDataArguments(source_lang="es", target_lang="en").english_is_target
    with pytest.raises(ValueError, match="both 'en'"):
        AlignmentDataArguments(source_lang="en", target_lang="en")
    with pytest.raises(ValueError, match="contradicts"):  # an explicit English source is the source
        AlignmentDataArguments(source_lang="en", target_lang="es", english_side="target")
