"""Symmetrisation worked out by hand, Pharaoh files, eflomal end to end, the alignment cache, fast_align."""
import logging
import random
import subprocess
import sys

import pytest
from conftest import fixture_lines

from hf_xladjust.alignment import aligners
from hf_xladjust.alignment.aligners import align_corpus, read_pharaoh, symmetrize, write_pharaoh
from hf_xladjust.errors import InputError

# --- symmetrisation -------------------------------------------------------------------------------
#
# 4 source x 4 target words.        forward F = {0-0, 1-1, 3-1, 2-3}     reverse R = {0-0, 3-1, 1-3}
#   intersect = {0-0, 3-1}
#   union     = {0-0, 1-1, 1-3, 2-3, 3-1}
#   grow-diag: from 0-0 the diagonal neighbour 1-1 is in the union and source word 1 is unaligned -> added
#              (it is no direct neighbour of any point, and target word 1 is already aligned to 3, so
#              neither plain "grow" nor "final-and" would add it). Nothing else touches an aligned point.
#   final-and: forward 2-3 has both words unaligned -> added; reverse 1-3 has source word 1 aligned -> not.
F = [(0, 0), (1, 1), (3, 1), (2, 3)]
R = [(0, 0), (3, 1), (1, 3)]


def test_intersect_and_union_by_hand():
    assert symmetrize(F, R, "intersect", 4, 4) == [(0, 0), (3, 1)]
    assert symmetrize(F, R, "union", 4, 4) == [(0, 0), (1, 1), (1, 3), (2, 3), (3, 1)]


def test_grow_diag_final_and_adds_a_diagonal_neighbour_and_a_final_and_link():
    assert symmetrize(F, R, "grow-diag-final-and", 4, 4) == [(0, 0), (1, 1), (2, 3), (3, 1)]


def test_grow_diag_direct_neighbour_and_chain():
    # 1-0 touches 0-0 and source word 1 is unaligned: grown, although target word 0 is aligned
    # (so final-and alone would refuse it). 2-1 then touches the new point 1-0 diagonally: grown too.
    # 3-3 touches nothing and shares no word with the alignment: only final-and (reverse) adds it.
    fwd, rev = [(0, 0), (1, 0), (2, 1)], [(0, 0), (3, 3)]
    assert symmetrize(fwd, rev, "intersect", 4, 4) == [(0, 0)]
    assert symmetrize(fwd, rev, "grow-diag-final-and", 4, 4) == [(0, 0), (1, 0), (2, 1), (3, 3)]
    # final-and adds forward 2-2 (both words free, touching nothing), then refuses reverse 2-0
    # (both its words are aligned by then; target 0 already was): union would keep it.
    assert symmetrize([(0, 0), (2, 2)], [(0, 0), (2, 0)], "grow-diag-final-and", 3, 3) == [(0, 0), (2, 2)]


def test_symmetrize_is_order_free_and_checks_input():
    assert symmetrize(list(reversed(F)), R + R, "grow-diag-final-and", 4, 4) == [(0, 0), (1, 1), (2, 3), (3, 1)]
    assert symmetrize([], [], "grow-diag-final-and", 2, 2) == []
    with pytest.raises(ValueError, match="out of range"):
        symmetrize([(0, 4)], [], "union", 4, 4)
    with pytest.raises(ValueError, match="unknown symmetrization"):
        symmetrize(F, R, "grow-diag", 4, 4)


# --- Pharaoh files --------------------------------------------------------------------------------

SRC = [["a", "b", "c"], ["d"], ["e", "f"]]
TGT = [["x", "y"], ["z", "w"], ["v"]]


def test_pharaoh_round_trip(tmp_path):
    links = [[(2, 1), (0, 0)], [], [(1, 0), (0, 0)]]
    path = tmp_path / "a.pharaoh"
    write_pharaoh(path, links)
    assert path.read_text() == "0-0 2-1\n\n0-0 1-0\n"
    assert read_pharaoh(path, SRC, TGT) == [[(0, 0), (2, 1)], [], [(0, 0), (1, 0)]]
    assert read_pharaoh(str(path)) == [[(0, 0), (2, 1)], [], [(0, 0), (1, 0)]]
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind
    path.write_bytes(b"0-0  2-1 0-0\r\n\r\n1-0\t0-0")  # CRLF, duplicates, no final newline
    assert read_pharaoh(path, SRC, TGT) == [[(0, 0), (2, 1)], [], [(0, 0), (1, 0)]]


@pytest.mark.parametrize("line2, side, index, length", [("0-0 1-0", "source", 1, 1), ("0-2", "target", 2, 2)])
def test_pharaoh_index_out_of_range(tmp_path, line2, side, index, length):
    path = tmp_path / "a.pharaoh"
    path.write_text(f"0-0\n{line2}\n0-0\n")
    with pytest.raises(InputError) as info:
        read_pharaoh(path, SRC, TGT)
    err = info.value
    assert err.path == str(path) and err.line == 2 and f"{path}:2:" in str(err)
    assert f"{side} index {index}" in str(err) and f"{side} sentence has {length} words" in str(err)


@pytest.mark.parametrize("text, line", [("0-0\n0-0\n", 3), ("0-0\n0-0\n0-0\n0-0\n", 4), ("", 1)])
def test_pharaoh_wrong_line_count(tmp_path, text, line):
    path = tmp_path / "a.pharaoh"
    path.write_text(text)
    with pytest.raises(InputError, match="alignment lines for 3 sentence pairs") as info:
        read_pharaoh(path, SRC, TGT)
    assert info.value.line == line and info.value.path == str(path)


@pytest.mark.parametrize("token", ["0-x", "-1-0", "1:2", "0-0-1", "0-"])
def test_pharaoh_bad_token(tmp_path, token):
    path = tmp_path / "a.pharaoh"
    path.write_text(f"0-0\n0-0\n0-0 {token}\n")
    with pytest.raises(InputError, match="expected i-j") as info:
        read_pharaoh(path, SRC, TGT)
    assert info.value.line == 3 and repr(token) in str(info.value)


def test_align_corpus_pharaoh(tmp_path):
    path = tmp_path / "a.pharaoh"
    path.write_text("0-0 2-1\n0-1\n1-0\n")
    assert align_corpus(SRC, TGT, "pharaoh", "union", alignment_file=str(path)) == [[(0, 0), (2, 1)], [(0, 1)],
                                                                                    [(1, 0)]]
    with pytest.raises(ValueError, match="alignment_file"):
        align_corpus(SRC, TGT, "pharaoh")
    with pytest.raises(ValueError, match="only read with aligner='pharaoh'"):
        align_corpus(SRC, TGT, "eflomal", alignment_file=str(path))
    with pytest.raises(ValueError, match="unknown aligner"):
        align_corpus(SRC, TGT, "giza")


def test_align_corpus_rejects_words_the_aligner_would_split():
    with pytest.raises(ValueError, match="whitespace"):
        align_corpus([["a b"]], [["x"]])
    with pytest.raises(ValueError, match="empty"):
        align_corpus([[]], [["x"]])


# --- eflomal ---------------------------------------------------------------------------------------

def corpus_with_identical_pairs(n=40, seed=0):
    """The fixture en/es lines plus n pairs whose two sides are the same words."""
    rng = random.Random(seed)
    vocab = [f"w{k}" for k in range(40)]
    same = [rng.sample(vocab, rng.randint(4, 8)) for _ in range(n)]
    src = [ln.split() for ln in fixture_lines("en")] + same
    tgt = [ln.split() for ln in fixture_lines("es")] + [list(s) for s in same]
    return src, tgt


def test_eflomal_links_in_range_and_identical_sentences_on_the_diagonal():
    src, tgt = corpus_with_identical_pairs()
    for sym in ("intersect", "grow-diag-final-and"):
        links = align_corpus(src, tgt, "eflomal", sym)
        assert len(links) == len(src)
        for s, t, sent in zip(src, tgt, links):
            assert sent == sorted(set(sent))
            assert all(0 <= i < len(s) and 0 <= j < len(t) for i, j in sent)
        assert sum(map(len, links[:12])) >= 40  # the fixture pairs get aligned too
        identical = links[12:]
        assert all(i == j for sent in identical for i, j in sent), identical
        linked = sum(map(len, identical))
        assert linked >= 0.95 * sum(len(s) for s in src[12:])


def test_cache_is_reused_without_running_the_aligner(tmp_path, monkeypatch, caplog):
    src, tgt = [ln.split() for ln in fixture_lines("en")], [ln.split() for ln in fixture_lines("es")]
    cache = tmp_path / "cache"
    first = align_corpus(src, tgt, "eflomal", "intersect", seed=3, cache_dir=str(cache))
    files = list(cache.iterdir())
    assert len(files) == 1 and files[0].suffix == ".pharaoh"
    assert read_pharaoh(files[0], src, tgt) == first

    def no_aligner(*args, **kwargs):
        raise AssertionError(f"the aligner ran: {args}")

    monkeypatch.setattr(subprocess, "run", no_aligner)
    with caplog.at_level(logging.INFO, logger="hf_xladjust.alignment.aligners"):
        assert align_corpus(src, tgt, "eflomal", "intersect", seed=3, cache_dir=str(cache)) == first
    assert "using cached" in caplog.text
    # the key covers the symmetrisation, the seed and the corpus: each of these misses the cache
    for kwargs in ({"symmetrization": "union", "seed": 3}, {"seed": 4}):
        with pytest.raises(AssertionError, match="the aligner ran"):
            align_corpus(src, tgt, "eflomal", cache_dir=str(cache), **kwargs)
    with pytest.raises(AssertionError, match="the aligner ran"):
        align_corpus(src[:-1] + [src[-1] + ["extra"]], tgt, "eflomal", seed=3, cache_dir=str(cache))
    assert list(cache.iterdir()) == files


def test_eflomal_failure_is_reported(monkeypatch):
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "boom"))
    aligners._eflomal_options.cache_clear()
    try:
        with pytest.raises(RuntimeError, match="eflomal-align failed with exit status 1: boom"):
            align_corpus([["a"]], [["x"]])
    finally:
        aligners._eflomal_options.cache_clear()


# --- fast_align (systran-align) ---------------------------------------------------------------------

def test_fast_align_only_offers_grow_diag_final_and():
    with pytest.raises(ValueError, match="only returns grow-diag-final-and"):
        align_corpus(SRC, TGT, "fast_align", "intersect")


def test_fast_align_missing_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "systran_align", None)
    with pytest.raises(ImportError, match="pip install systran-align"):
        align_corpus(SRC, TGT, "fast_align", "grow-diag-final-and")


def test_fast_align_end_to_end():
    pytest.importorskip("systran_align")
    src, tgt = corpus_with_identical_pairs()
    links = align_corpus(src, tgt, "fast_align", "grow-diag-final-and")
    assert len(links) == len(src)
    for s, t, sent in zip(src, tgt, links):
        assert sent and all(0 <= i < len(s) and 0 <= j < len(t) for i, j in sent)
    for s, sent in zip(src[12:], links[12:]):
        assert sent == [(i, i) for i in range(len(s))]
