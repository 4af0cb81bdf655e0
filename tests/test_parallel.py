"""Parallel corpus reading: both input formats, line endings, every bad-input error, skip mode, sampling."""

import pytest
from conftest import FIXTURES, fixture_lines

from hf_xladjust.alignment.parallel import ParallelCorpus, read_parallel, sample_corpus
from hf_xladjust.errors import InputError
from hf_xladjust.files import read_text_lines
from hf_xladjust.sampling import subsample_indices


def write(path, text):
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return str(path)


def two_files(tmp_path, src_lines, tgt_lines):
    return (write(tmp_path / "src.txt", "".join(ln + "\n" for ln in src_lines)),
            write(tmp_path / "tgt.txt", "".join(ln + "\n" for ln in tgt_lines)))


def joint(tmp_path, lines, name="train.txt"):
    return write(tmp_path / name, "".join(ln + "\n" for ln in lines))


def raises_at(path, line, fn, *args, **kwargs):
    """Call fn, expect an InputError at path:line, return it."""
    with pytest.raises(InputError) as info:
        fn(*args, **kwargs)
    err = info.value
    assert err.path == str(path) and err.line == line, str(err)
    assert f"{path}:{line}: " in str(err)
    return err


def test_two_files_and_joint_file_give_the_same_corpus(tmp_path):
    en, es = fixture_lines("en"), fixture_lines("es")
    a = read_parallel(str(FIXTURES / "en.txt"), str(FIXTURES / "es.txt"))
    b = read_parallel(train_file=joint(tmp_path, [f"{s} ||| {t}" for s, t in zip(en, es)]))
    assert len(a) == len(b) == 12
    assert a.src == b.src == [ln.split() for ln in en]
    assert a.tgt == b.tgt == [ln.split() for ln in es]
    assert a.line_numbers == b.line_numbers == list(range(1, 13))
    assert a.skipped == b.skipped == {}
    assert a.source_path.endswith("en.txt") and a.target_path.endswith("es.txt")
    assert b.source_path == b.target_path


def test_crlf_bom_whitespace_and_last_line_without_newline(tmp_path):
    src = write(tmp_path / "s.txt", b"\xef\xbb\xbfthe  cat\r\nsleeps\there\r\nend")
    tgt = write(tmp_path / "t.txt", "el gato\r\nduerme aqu\u00ed\r\nfin\r\n")
    c = read_parallel(src, tgt)
    assert c.src == [["the", "cat"], ["sleeps", "here"], ["end"]]
    assert c.tgt == [["el", "gato"], ["duerme", "aqu\u00ed"], ["fin"]]
    j = read_parallel(train_file=write(tmp_path / "j.txt", "the cat ||| el gato\r\nend|x ||| fin\r\n"))
    assert j.src == [["the", "cat"], ["end|x"]] and j.tgt == [["el", "gato"], ["fin"]]


def test_read_text_lines_shared_by_the_tsv_readers(tmp_path):
    """The line handling every reader shares: split on the newline byte only (U+2028 and a lone CR inside
    a line stay), CRLF and stray CRs before the newline dropped, the BOM dropped from line 1 only,
    numbering from 1, a last line without a newline kept."""
    path = write(tmp_path / "x.tsv", "\ufeffa\tb\r\n\ufeffc\u2028d\re\r\r\n\nlast")
    assert read_text_lines(path) == [(1, "a\tb"), (2, "\ufeffc\u2028d\re"), (3, ""), (4, "last")]
    assert read_text_lines(write(tmp_path / "empty.txt", "")) == []
    bad = write(tmp_path / "bad.txt", b"ok\nca\xf1a\n")
    err = raises_at(bad, 2, read_text_lines, bad)
    assert "UTF-8" in str(err) and "\\xf1" in str(err) and "byte 3 of the line" in str(err)
    assert read_text_lines(bad, encoding="latin-1")[1] == (2, "ca\u00f1a")
    with pytest.raises(InputError, match="cannot read") as info:
        read_text_lines(str(tmp_path / "absent.txt"))
    assert info.value.path == str(tmp_path / "absent.txt")


def test_unequal_line_counts_name_both_files_counts_and_line(tmp_path):
    src, tgt = two_files(tmp_path, ["a", "b", "c", "d"], ["x", "y", "z"])
    err = raises_at(src, 4, read_parallel, src, tgt)
    msg = str(err)
    assert src in msg and tgt in msg and "has 4 lines" in msg and "has 3" in msg
    assert f"{tgt} ends after line 3" in msg
    # the other way round, and never skippable
    tgt2 = write(tmp_path / "tgt2.txt", "x\ny\nz\nw\nv\n")
    raises_at(tgt2, 5, read_parallel, src, tgt2, skip_bad_lines=True)


def test_empty_side_two_files(tmp_path):
    src, tgt = two_files(tmp_path, ["a b", "c", "e"], ["x", " \t ", "z"])
    err = raises_at(tgt, 2, read_parallel, src, tgt)
    assert "empty target" in str(err)
    src, tgt = two_files(tmp_path, ["a b", "c", ""], ["x", "y", "z"])
    assert "empty source" in str(raises_at(src, 3, read_parallel, src, tgt))


def test_empty_side_joint(tmp_path):
    path = joint(tmp_path, ["a ||| x", "b ||| y", "c |||"])
    assert "empty target" in str(raises_at(path, 3, read_parallel, train_file=path))
    path = joint(tmp_path, ["||| x"], name="j2.txt")
    assert "empty source" in str(raises_at(path, 1, read_parallel, train_file=path))


@pytest.mark.parametrize("bad", ["no separator here", "a ||| b ||| c", "a|||b"])
def test_malformed_separator(tmp_path, bad):
    path = joint(tmp_path, ["a ||| x", bad, "c ||| z"])
    err = raises_at(path, 2, read_parallel, train_file=path)
    assert "exactly one" in str(err)


def test_undecodable_line_reports_its_line_number(tmp_path):
    src = write(tmp_path / "src.txt", b"ok one\nok two\nbad \xff\xfe bytes\nok four\n")
    tgt = write(tmp_path / "tgt.txt", "x\ny\nz\nw\n")
    err = raises_at(src, 3, read_parallel, src, tgt)
    assert "utf-8" in str(err)
    path = write(tmp_path / "j.txt", b"a ||| x\nb ||| \xc3\n")
    raises_at(path, 2, read_parallel, train_file=path)


def test_empty_corpus(tmp_path):
    src, tgt = write(tmp_path / "src.txt", ""), write(tmp_path / "tgt.txt", "")
    with pytest.raises(InputError, match="no sentence pairs") as info:
        read_parallel(src, tgt)
    assert src in str(info.value) and tgt in str(info.value)
    path = joint(tmp_path, ["a |||", "no separator"])
    with pytest.raises(InputError, match="no sentence pairs .2 bad line") as info:
        read_parallel(train_file=path, skip_bad_lines=True)
    assert path in str(info.value)


def test_skip_mode_counts_and_keeps_line_numbers(tmp_path):
    path = write(tmp_path / "j.txt", b"a ||| x\n|||  y\nb c ||| y z\nno sep\nd ||| \xff\nx ||| y ||| z\ne ||| w\n")
    c = read_parallel(train_file=path, skip_bad_lines=True)
    assert c.src == [["a"], ["b", "c"], ["e"]] and c.tgt == [["x"], ["y", "z"], ["w"]]
    assert c.line_numbers == [1, 3, 7]
    assert c.skipped == {"empty_side": 1, "malformed_separator": 2, "undecodable": 1}
    src = write(tmp_path / "s.txt", b"a\n\nb\nc \x80\nd\n")
    tgt = write(tmp_path / "t.txt", b"x\ny\n\nz\nw\n")
    c = read_parallel(src, tgt, skip_bad_lines=True)
    assert c.src == [["a"], ["d"]] and c.tgt == [["x"], ["w"]] and c.line_numbers == [1, 5]
    assert c.skipped == {"empty_side": 2, "undecodable": 1}


def test_argument_errors(tmp_path):
    with pytest.raises(ValueError):
        read_parallel()
    with pytest.raises(ValueError):
        read_parallel(str(FIXTURES / "en.txt"))
    with pytest.raises(ValueError):
        read_parallel(str(FIXTURES / "en.txt"), str(FIXTURES / "es.txt"), train_file=str(FIXTURES / "en.txt"))


def corpus_of(n):
    return ParallelCorpus([[f"s{k}"] for k in range(n)], [[f"t{k}"] for k in range(n)],
                          [k + 3 for k in range(n)], "s", "t", {"empty_side": 1})


def test_sampling_is_seeded_deterministic_and_file_ordered():
    corpus = corpus_of(100)
    a, b, c = sample_corpus(corpus, 10, 1), sample_corpus(corpus, 10, 1), sample_corpus(corpus, 10, 2)
    assert a.src == b.src and a.line_numbers == b.line_numbers
    assert a.src != c.src
    expected = subsample_indices(100, 10, 1)
    assert a.src == [[f"s{k}"] for k in expected] and a.tgt == [[f"t{k}"] for k in expected]
    assert a.line_numbers == [k + 3 for k in expected] == sorted(a.line_numbers)
    assert a.skipped == {"empty_side": 1} and len(a) == 10


def test_sampling_no_op_and_subset():
    corpus = corpus_of(5)
    assert sample_corpus(corpus, None, 0) is corpus
    assert sample_corpus(corpus, 5, 0) is corpus and sample_corpus(corpus, 50, 0) is corpus
    with pytest.raises(ValueError):
        sample_corpus(corpus, 0, 0)
    sub = corpus.subset([4, 1])
    assert sub.src == [["s4"], ["s1"]] and sub.line_numbers == [7, 4] and sub.source_path == "s"


def test_subsample_indices_is_one_draw_for_every_caller():
    idx = subsample_indices(100, 10, 1)
    assert len(set(idx)) == 10 and idx == sorted(idx) and all(0 <= i < 100 for i in idx)
    assert subsample_indices(100, 10, 1) == idx and subsample_indices(100, 10, 2) != idx
    assert subsample_indices(5, None, 0) == subsample_indices(5, 9, 0) == [0, 1, 2, 3, 4]
