"""Word alignment of a parallel corpus, symmetrisation, and Pharaoh (``i-j``) alignment files.

Three sources of links:

* ``eflomal`` (default): the ``eflomal-align`` command from the ``eflomal`` PyPI package, run in
  both directions (``-f``/``-r``, both written in source-target orientation) and symmetrised here.
  eflomal 2.0 has no seed option: its sampler seeds itself from ``/dev/urandom``, so two runs can
  differ slightly. Pass ``cache_dir`` to reuse one run's links.
* ``fast_align``: the ``systran-align`` PyPI binding of fast_align (extra ``fast_align``). Its API
  trains both directions (``generate_alignment_probabilities``) but returns only their
  grow-diag-final-and symmetrisation (fast_align's ``atools``); the directional links are not
  exposed, so only ``symmetrization="grow-diag-final-and"`` is possible with it. For the paper's
  fast_align + ``atools -c intersect``, run fast_align yourself and use ``aligner="pharaoh"``.
* ``pharaoh``: an alignment file already symmetrised, one line of ``i-j`` links per sentence pair.

Links are ``(source_word_index, target_word_index)`` pairs, 0-based, sorted.
"""
from __future__ import annotations

import functools
import hashlib
import heapq
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import FrozenSet, Iterable, List, Optional, Sequence, Set, Tuple

from hf_xladjust.errors import InputError
from hf_xladjust.files import atomic_write, decode_line, read_lines

logger = logging.getLogger(__name__)

Links = List[Tuple[int, int]]
Sentences = Sequence[Sequence[str]]

ALIGNERS = ("eflomal", "fast_align", "pharaoh")
SYMMETRIZATIONS = ("intersect", "union", "grow-diag-final-and")
_CACHE_FORMAT = "hf_xladjust-alignment-cache-v1"
_LINK = re.compile(r"([0-9]+)-([0-9]+)")
# Koehn's order: the four direct neighbours, then the four diagonal ones.
_NEIGHBOURS = ((-1, 0), (0, -1), (1, 0), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1))


def align_corpus(src: Sentences, tgt: Sentences, aligner: str = "eflomal", symmetrization: str = "intersect", *,
                 seed: int = 42, cache_dir: Optional[str] = None,
                 alignment_file: Optional[str] = None) -> List[Links]:
    """Word-align each sentence pair: one sorted list of ``(i, j)`` links per pair.

    ``src``/``tgt`` are word lists (whitespace-free words, as :func:`read_parallel` gives them).
    ``aligner="pharaoh"`` reads ``alignment_file`` (already symmetrised: ``symmetrization`` is
    ignored). Otherwise, with ``cache_dir``, the symmetrised links are stored there under a hash of
    the corpus, aligner, symmetrisation and seed, and reused on a rerun without running the aligner.
    """
    if aligner not in ALIGNERS:
        raise ValueError(f"unknown aligner {aligner!r}; choose one of {', '.join(ALIGNERS)}")
    if len(src) != len(tgt):
        raise ValueError(f"{len(src)} source sentences but {len(tgt)} target sentences")
    if aligner == "pharaoh":
        if alignment_file is None:
            raise ValueError("aligner='pharaoh' needs alignment_file (one line of i-j links per sentence pair)")
        links = read_pharaoh(alignment_file, src, tgt)
        logger.info("read %d links for %d sentence pairs from %s", sum(map(len, links)), len(links), alignment_file)
        return links
    if alignment_file is not None:
        raise ValueError(f"alignment_file is only read with aligner='pharaoh', not aligner={aligner!r}")
    if symmetrization not in SYMMETRIZATIONS:
        raise ValueError(f"unknown symmetrization {symmetrization!r}; choose one of {', '.join(SYMMETRIZATIONS)}")
    if aligner == "fast_align" and symmetrization != "grow-diag-final-and":
        raise ValueError(
            f"aligner='fast_align' (the systran-align binding) only returns grow-diag-final-and links, not "
            f"{symmetrization!r}; use aligner='eflomal', or run fast_align and `atools -c {symmetrization}` "
            f"yourself and pass the result with aligner='pharaoh'")
    _check_sentences(src, tgt)

    cache_path = None
    if cache_dir is not None:
        cache_path = Path(cache_dir) / _cache_name(src, tgt, aligner, symmetrization, seed)
        if cache_path.is_file():
            try:
                links = read_pharaoh(cache_path, src, tgt)
            except InputError as e:
                logger.warning("ignoring an unreadable alignment cache file (%s); aligning again", e)
            else:
                logger.info("using cached %s/%s word alignments from %s", aligner, symmetrization, cache_path)
                return links

    if aligner == "eflomal":
        links = _align_eflomal(src, tgt, symmetrization, seed)
    else:
        links = _align_fast_align(src, tgt)
    logger.info("%s (%s): %d links for %d sentence pairs", aligner, symmetrization,
                sum(map(len, links)), len(links))

    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        write_pharaoh(cache_path, links)
        logger.info("cached the word alignments in %s", cache_path)
    return links


def symmetrize(forward: Iterable[Tuple[int, int]], reverse: Iterable[Tuple[int, int]], method: str,
               src_len: int, tgt_len: int) -> Links:
    """Combine two directional alignments, both given in source-target orientation.

    ``intersect`` (the paper's ``atools -c intersect``), ``union``, or ``grow-diag-final-and``
    (Koehn's heuristic as in Moses: grow the intersection into union points next to it, diagonals
    included, while one of the two words is unaligned; then add forward, then reverse, links whose
    two words are both still unaligned).
    """
    fwd = _link_set(forward, src_len, tgt_len, "forward")
    rev = _link_set(reverse, src_len, tgt_len, "reverse")
    if method == "intersect":
        return sorted(fwd & rev)
    if method == "union":
        return sorted(fwd | rev)
    if method == "grow-diag-final-and":
        return sorted(_grow_diag_final_and(fwd, rev))
    raise ValueError(f"unknown symmetrization {method!r}; choose one of {', '.join(SYMMETRIZATIONS)}")


def read_pharaoh(path, src: Optional[Sentences] = None, tgt: Optional[Sentences] = None) -> List[Links]:
    """Read one line of ``i-j`` links per sentence pair.

    With ``src``/``tgt`` the file must have one line per sentence pair and every index must be
    within its sentence; any fault raises :class:`InputError` with the file and line.
    """
    path = str(path)
    if src is not None and tgt is not None and len(src) != len(tgt):
        raise ValueError(f"{len(src)} source sentences but {len(tgt)} target sentences")
    try:
        lines = read_lines(path)
    except OSError as e:
        raise InputError(f"cannot read ({e.strerror})", path) from None
    expected = len(src) if src is not None else (len(tgt) if tgt is not None else None)
    if expected is not None and len(lines) != expected:
        if len(lines) > expected:
            raise InputError(f"{len(lines)} alignment lines for {expected} sentence pairs: "
                             f"line {expected + 1} has no sentence pair", path, expected + 1)
        raise InputError(f"only {len(lines)} alignment lines for {expected} sentence pairs: "
                         f"sentence pair {len(lines) + 1} has no alignment line", path, len(lines) + 1)
    out: List[Links] = []
    for k, raw in enumerate(lines):
        line_no = k + 1
        links: Set[Tuple[int, int]] = set()
        for token in decode_line(raw, path, line_no).split():
            m = _LINK.fullmatch(token)
            if m is None:
                raise InputError(f"bad alignment token {token!r}: expected i-j with non-negative integers",
                                 path, line_no)
            i, j = int(m.group(1)), int(m.group(2))
            for side, index, sents in (("source", i, src), ("target", j, tgt)):
                if sents is not None and index >= len(sents[k]):
                    raise InputError(f"{side} index {index} in link {token} is out of range: the {side} "
                                     f"sentence has {len(sents[k])} words", path, line_no)
            links.add((i, j))
        out.append(sorted(links))
    return out


def write_pharaoh(path, links: Iterable[Iterable[Tuple[int, int]]]) -> None:
    """Write one line of sorted ``i-j`` links per sentence pair, atomically (temp file + rename)."""
    path = Path(path)
    text = "".join(" ".join(f"{int(i)}-{int(j)}" for i, j in sorted(sent)) + "\n" for sent in links)
    with atomic_write(str(path)) as f:
        f.write(text)


# --- symmetrisation -----------------------------------------------------------------------------

def _link_set(links: Iterable[Tuple[int, int]], src_len: int, tgt_len: int, name: str) -> Set[Tuple[int, int]]:
    out = set()
    for i, j in links:
        if not (0 <= i < src_len and 0 <= j < tgt_len):
            raise ValueError(f"{name} link {i}-{j} is out of range for {src_len} source / {tgt_len} target words")
        out.add((int(i), int(j)))
    return out


def _grow_diag_final_and(fwd: Set[Tuple[int, int]], rev: Set[Tuple[int, int]]) -> Set[Tuple[int, int]]:
    union = fwd | rev
    alignment = fwd & rev
    src_aligned = {i for i, _ in alignment}
    tgt_aligned = {j for _, j in alignment}

    def add(i, j):
        alignment.add((i, j))
        src_aligned.add(i)
        tgt_aligned.add(j)

    # GROW-DIAG: sweep the aligned points in (source, target) order, as Koehn's loop over the grid
    # does (a point added ahead of the sweep is visited in the same sweep); repeat until stable.
    added = True
    while added:
        added = False
        pending = sorted(alignment)
        while pending:
            i, j = heapq.heappop(pending)
            for di, dj in _NEIGHBOURS:
                p = (i + di, j + dj)
                if p in union and p not in alignment and (p[0] not in src_aligned or p[1] not in tgt_aligned):
                    add(*p)
                    added = True
                    if p > (i, j):
                        heapq.heappush(pending, p)
    # FINAL-AND, forward links first, then reverse links.
    for directional in (fwd, rev):
        for i, j in sorted(directional):
            if i not in src_aligned and j not in tgt_aligned:
                add(i, j)
    return alignment


# --- aligners ------------------------------------------------------------------------------------

def _check_sentences(src: Sentences, tgt: Sentences) -> None:
    """The aligners see the words joined by spaces: a word with whitespace would shift every index."""
    for side, sents in (("source", src), ("target", tgt)):
        for k, sent in enumerate(sents):
            if not sent:
                raise ValueError(f"{side} sentence {k} is empty")
            if " ".join(sent).split() != list(sent):
                raise ValueError(f"{side} sentence {k} has an empty word or a word with whitespace in it: {sent!r}")


def _cache_name(src: Sentences, tgt: Sentences, aligner: str, symmetrization: str, seed: int) -> str:
    h = hashlib.sha256(f"{_CACHE_FORMAT}\n{aligner}\n{symmetrization}\n{seed}\n{len(src)}\n".encode("utf-8"))
    for s, t in zip(src, tgt):
        h.update(" ".join(s).encode("utf-8"))
        h.update(b"\t")
        h.update(" ".join(t).encode("utf-8"))
        h.update(b"\n")
    return f"{aligner}.{symmetrization}.{h.hexdigest()[:32]}.pharaoh"


def _write_sentences(path: Path, sents: Sentences) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for sent in sents:
            f.write(" ".join(sent) + "\n")


def _find_eflomal() -> str:
    exe = shutil.which("eflomal-align", path=str(Path(sys.executable).parent)) or shutil.which("eflomal-align")
    if exe is None:
        raise FileNotFoundError("the eflomal-align command was not found next to the Python interpreter or on "
                                "PATH; install it with `pip install eflomal`")
    return exe


@functools.lru_cache(maxsize=None)
def _eflomal_options(exe: str) -> FrozenSet[str]:
    """The options ``eflomal-align --help`` lists (eflomal 2.0.0 has no seed option)."""
    try:
        proc = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(re.findall(r"--[a-z][a-z-]*", proc.stdout))


def _align_eflomal(src: Sentences, tgt: Sentences, symmetrization: str, seed: int) -> List[Links]:
    exe = _find_eflomal()
    with tempfile.TemporaryDirectory(prefix="xladjust-eflomal-") as tmp:
        tmp = Path(tmp)
        src_path, tgt_path, fwd_path, rev_path = (tmp / n for n in ("source.txt", "target.txt", "fwd", "rev"))
        _write_sentences(src_path, src)
        _write_sentences(tgt_path, tgt)
        cmd = [exe, "-s", str(src_path), "-t", str(tgt_path), "-f", str(fwd_path), "-r", str(rev_path),
               "--overwrite"]
        if "--seed" in _eflomal_options(exe):
            cmd += ["--seed", str(seed)]
        else:
            logger.info("eflomal-align has no --seed option: its sampler is seeded from /dev/urandom, so "
                        "alignments may differ slightly between runs (cache_dir keeps one run's links)")
        logger.info("aligning %d sentence pairs with eflomal", len(src))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"eflomal-align failed with exit status {proc.returncode}: "
                               f"{(proc.stderr or proc.stdout)[-2000:].strip()}")
        forward = read_pharaoh(fwd_path, src, tgt)
        reverse = read_pharaoh(rev_path, src, tgt)
    return [symmetrize(f, r, symmetrization, len(s), len(t)) for f, r, s, t in zip(forward, reverse, src, tgt)]


def _align_fast_align(src: Sentences, tgt: Sentences) -> List[Links]:
    try:
        import systran_align
    except ImportError as e:
        raise ImportError("aligner='fast_align' needs the systran-align package (a fast_align binding): "
                          "pip install systran-align   (or: pip install 'hf-xladjust[fast_align]')") from e
    for side, sents in (("source", src), ("target", tgt)):
        for k, sent in enumerate(sents):
            if "|||" in sent:
                raise ValueError(f"{side} sentence {k} has the word '|||', which fast_align's input format "
                                 f"reserves as the separator")
    with tempfile.TemporaryDirectory(prefix="xladjust-fast_align-") as tmp:
        corpus, fwd_probs, rev_probs = (os.path.join(tmp, n) for n in ("corpus.txt", "fwd.probs", "rev.probs"))
        with open(corpus, "w", encoding="utf-8", newline="\n") as f:
            for s, t in zip(src, tgt):
                f.write(f"{' '.join(s)} ||| {' '.join(t)}\n")
        logger.info("aligning %d sentence pairs with fast_align (systran-align)", len(src))
        # fast_align -d -o -v, as in Cao et al.'s and the usual fast_align recipes.
        systran_align.generate_alignment_probabilities(corpus, fwd_probs, rev_probs, favor_diagonal=True,
                                                       optimize_tension=True, variational_bayes=True)
        results = systran_align.Aligner(fwd_probs, rev_probs).align_batch([list(s) for s in src],
                                                                          [list(t) for t in tgt])
    links = []
    for k, (result, s, t) in enumerate(zip(results, src, tgt)):
        pairs = {(int(i), int(j)) for i, j in result["alignments"]}
        bad = [(i, j) for i, j in pairs if not (0 <= i < len(s) and 0 <= j < len(t))]
        if bad:
            raise RuntimeError(f"fast_align returned out-of-range links {bad} for sentence pair {k}")
        links.append(sorted(pairs))
    return links
