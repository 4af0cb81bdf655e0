"""Every tokenizer family: words -> subwords from the running text (issue 16.2, 16.4).

Tiny random models with tokenizers trained on the fly (tests/archs.py). The mapping is checked against
numbers computed here from the tokenizer's character offsets alone, and each family goes through every
script for a few steps."""
import json
import sys
from pathlib import Path

import pytest
import torch
from archs import ARCHS, DECODERS, build_arch
from conftest import FIXTURES, diagonal_pharaoh, fixture_lines
from transformers import AutoModel, AutoTokenizer

from hf_xladjust.alignment.loss import pair_word_vectors
from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairCollator, AlignedPairDataset, read_aligned_pairs
from hf_xladjust.errors import InputError
from hf_xladjust.tokenization import ensure_pad_token, tokenize_running_text

ROOT = Path(__file__).resolve().parents[1]
BYTE_LEVEL = ("modernbert", "llama", "qwen2")
SCRIPT_FLAGS = ("--report_to", "none", "--use_cpu", "--disable_tqdm", "true", "--save_strategy", "no",
                "--logging_steps", "1", "--seed", "0")


@pytest.fixture(scope="module")
def arch_dirs(tmp_path_factory):
    built = {}

    def get(name):
        if name not in built:
            built[name] = build_arch(name, tmp_path_factory.mktemp(name))
        return built[name]
    return get


def fixture_pairs(n=12):
    """English-Spanish fixture sentences with diagonal links (word k <-> word k)."""
    return [AlignedPair(a.split(), b.split(), [(k, k) for k in range(min(len(a.split()), len(b.split())))])
            for a, b in list(zip(fixture_lines("en"), fixture_lines("es")))[:n]]


def by_offsets(model, tokenizer, words):
    """Word vectors and the added tokens' vectors computed plainly from character offsets: word k spans
    the characters of " ".join(words) it occupies and the space before it (a lone '▁' or 'Ġ' starts the
    word that follows); its vector is the mean of the last-layer vectors of the tokens (not added by
    the tokenizer) whose offsets overlap that span."""
    text = " ".join(words)
    enc = tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
    with torch.no_grad():
        h = model(input_ids=torch.tensor([enc["input_ids"]])).last_hidden_state[0].float()
    spans, pos = [], 0
    for w in words:
        spans.append((max(pos - 1, 0), pos + len(w)))
        pos += len(w) + 1
    added = [m == 1 and s == e for m, (s, e) in zip(enc["special_tokens_mask"], enc["offset_mapping"])]
    words_out = []
    for a, b in spans:
        tokens = [t for t, (s, e) in enumerate(enc["offset_mapping"]) if not added[t] and s < b and e > a]
        words_out.append(h[tokens].mean(0))
    return torch.stack(words_out), h[[t for t, x in enumerate(added) if x]]


@pytest.mark.parametrize("arch", ARCHS)
def test_pooled_ids_and_vectors_follow_the_running_text(arch, arch_dirs):
    path = arch_dirs(arch)
    tok = ensure_pad_token(AutoTokenizer.from_pretrained(path))
    model = AutoModel.from_pretrained(path).eval()
    pairs = fixture_pairs()
    dataset = AlignedPairDataset(pairs, tok, 64, link_special_tokens=True)
    for pair, feature in zip(pairs, dataset.features):
        assert feature["src_input_ids"] == tok(" ".join(pair.src))["input_ids"]
        assert feature["tgt_input_ids"] == tok(" ".join(pair.tgt))["input_ids"]
    if arch in BYTE_LEVEL:  # the old word-by-word tokenisation gives other ids: this test tells them apart
        assert any(f["tgt_input_ids"] != tok(p.tgt, is_split_into_words=True)["input_ids"]
                   for p, f in zip(pairs, dataset.features))
    # the added tokens, read from the tokenizer's output
    expected_added = {"qwen2": [], "llama": ["<|begin_of_text|>"]}.get(arch, [tok.cls_token, tok.sep_token])
    assert dataset.special_tokens == expected_added
    assert dataset.special_links == len(expected_added) * len(pairs)
    # one pair's pooled vectors (word slots, then added-token slots) against the offsets computed by hand
    k = 2
    batch = AlignedPairCollator(tok.pad_token_id)([dataset[k]])
    with torch.no_grad():
        src, tgt = pair_word_vectors(model.base_model, batch)
    for side, vectors in (("src", src), ("tgt", tgt)):
        words, added = by_offsets(model, tok, getattr(pairs[k], side))
        assert len(vectors) == len(words) + len(added)
        torch.testing.assert_close(vectors, torch.cat([words, added]), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("arch", ["llama", "xlmr"])
def test_ner_labels_first_subword_of_the_running_text(arch, arch_dirs):
    from hf_xladjust.tasks.ner import LABELS, encode_examples

    tok = AutoTokenizer.from_pretrained(arch_dirs(arch))
    sentences = [["Maria", "Lopez", "reads", "café"], ["el", "gato", "duerme", "en", "Madrid"]]
    tags = [["B-PER", "I-PER", "O", "O"], ["O", "O", "O", "O", "B-LOC"]]
    label_to_id = {t: i for i, t in enumerate(LABELS)}
    enc = encode_examples(tok, sentences, tags, label_to_id, 64)
    for words, gold, ids, labels, index in zip(sentences, tags, enc["input_ids"], enc["labels"], enc["word_index"]):
        assert ids == tok(" ".join(words))["input_ids"]
        offsets = tok(" ".join(words), return_offsets_mapping=True)["offset_mapping"]
        firsts = [t for t, k in enumerate(index) if k >= 0]
        assert [index[t] for t in firsts] == list(range(len(words)))
        assert [labels[t] for t in firsts] == [label_to_id[g] for g in gold]
        assert sum(lab != -100 for lab in labels) == len(words)
        starts, pos = [], 0
        for w in words:  # each first subword starts at its word or at the space before it (a lone 'Ġ')
            starts.append(pos)
            pos += len(w) + 1
        assert all(max(starts[index[t]] - 1, 0) <= offsets[t][0] <= starts[index[t]] <= offsets[t][1]
                   and offsets[t][0] < offsets[t][1] for t in firsts)


def test_truncation_drops_cut_words_and_counts_their_links(arch_dirs):
    tok = AutoTokenizer.from_pretrained(arch_dirs("qwen2"))
    pairs = fixture_pairs()
    dataset = AlignedPairDataset(pairs, tok, max_length=6)
    kept = 0
    for pair, slots in zip(pairs, zip(dataset.word_slots["src"], dataset.word_slots["tgt"])):
        full = [tokenize_running_text(tok, [getattr(pair, side)], None, truncation=False).token_word[0]
                for side in ("src", "tgt")]
        # a word keeps its slot iff all its subwords are within the first 6 tokens (Qwen2 adds none)
        complete = [{w for w in set(f[:6].tolist()) if (f[6:] != w).all()} for f in full]
        for side, (side_slots, done) in enumerate(zip(slots, complete)):
            assert {i for i, s in enumerate(side_slots) if s >= 0} == done
        kept += sum(i in complete[0] and j in complete[1] for i, j in pair.links)
    assert sum(len(f["links"]) for f in dataset.features) == kept
    assert dataset.links_lost == sum(len(p.links) for p in pairs) - kept > 0


def test_pad_token_fallback_and_refusal(arch_dirs, caplog):
    from transformers import AutoConfig

    path = arch_dirs("llama")
    tok, config = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    config.pad_token_id = None
    assert tok.pad_token is None
    with pytest.raises(InputError, match="no pad token"):
        ensure_pad_token(tok, config, refuse=True)
    with caplog.at_level("WARNING", logger="hf_xladjust"):
        ensure_pad_token(tok, config)
    assert tok.pad_token == "<|end_of_text|>" and config.pad_token_id == tok.eos_token_id
    assert sum("no pad token" in r.getMessage() for r in caplog.records) == 1


def test_slow_tokenizer_is_one_line_error():
    from transformers import ByT5Tokenizer  # a Python ("slow") tokenizer that needs no vocabulary file

    tok = ByT5Tokenizer()
    assert not tok.is_fast
    with pytest.raises(InputError, match="needs a fast tokenizer"):
        AlignedPairDataset(fixture_pairs(2), tok)


def test_byte_level_align_loss_equals_eq1_from_offsets(tmp_path, arch_dirs):
    """Acceptance (issue 16): byte-level BPE without prefix space, learning rate 0: the first logged
    align_loss is Eq. 1's pull term computed independently from running-text offsets."""
    import run_adjust

    model_dir = arch_dirs("llama")  # no pad token either: the logged fallback, not a traceback
    al = diagonal_pharaoh(tmp_path / "al.txt")
    out = tmp_path / "out"
    run_script(run_adjust, "--model_name_or_path", model_dir, "--source_file", FIXTURES / "en.txt",
               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", al, "--output_dir", out, "--learning_rate", "0",
               "--per_device_train_batch_size", "32", "--max_steps", "1")
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "align_loss" in h]
    pairs = read_aligned_pairs(str(out / "aligned_pairs.jsonl"))
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModel.from_pretrained(model_dir).eval()
    diffs = []
    for p in pairs:
        (s_words, s_added), (t_words, t_added) = by_offsets(model, tok, p.src), by_offsets(model, tok, p.tgt)
        diffs += [t_words[j] - s_words[i] for i, j in p.links] + list(t_added - s_added)  # BOS <-> BOS
    expected = torch.stack(diffs).double().pow(2).mean().item()
    assert expected > 0
    assert abs(logged[0]["align_loss"] - expected) / expected < 1e-4
    # the word-by-word tokenisation (is_split_into_words) gives another loss: the check tells them apart
    split = []
    for p in pairs:
        vecs = []
        for words in (p.src, p.tgt):
            enc = tok(words, is_split_into_words=True, return_tensors="pt")
            with torch.no_grad():
                h = model(input_ids=enc["input_ids"]).last_hidden_state[0]
            ids = enc.word_ids()
            vecs.append([h[[t for t, w in enumerate(ids) if w == k]].mean(0) for k in range(len(words))] + [h[0]])
        split += [vecs[1][j] - vecs[0][i] for i, j in p.links] + [vecs[1][-1] - vecs[0][-1]]
    assert abs(torch.stack(split).double().pow(2).mean().item() - expected) / expected > 1e-2
    assert logged[0]["anchor_loss"] == pytest.approx(0.0, abs=1e-9)


def run_script(module, *args):
    argv = sys.argv
    sys.argv = [f"{module.__name__}.py", *map(str, args), *SCRIPT_FLAGS]
    try:
        module.main()
    finally:
        sys.argv = argv


def run_matrix(arch, tmp_path, model_dir):
    """run_adjust.py (with truncation) -> run_glue_xl.py with continual alignment, run_ner_xl.py,
    run_qa_xl.py, run_xsr.py, a few steps each; returns run_adjust.py's output folder."""
    import run_adjust
    import run_glue_xl
    import run_ner_xl
    import run_qa_xl
    import run_xsr

    al = diagonal_pharaoh(tmp_path / "al.txt")
    adjusted = tmp_path / "adjusted"
    run_script(run_adjust, "--model_name_or_path", model_dir, "--source_file", FIXTURES / "en.txt",
               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", al, "--output_dir", adjusted, "--align_max_length", "9",
               "--per_device_train_batch_size", "4", "--max_steps", "2")
    run_script(run_glue_xl, "--model_name_or_path", adjusted, "--train_file", ROOT / "examples/demo_xnli/train-en.tsv",
               "--test_file_pattern", ROOT / "examples/demo_xnli/test-{lang}.tsv", "--eval_languages", "es",
               "--do_train", "--do_predict", "--max_steps", "2", "--per_device_train_batch_size", "4",
               "--max_predict_samples", "8", "--max_seq_length", "64", "--aligned_pairs",
               adjusted / "aligned_pairs.jsonl", "--align_batch_size", "4", "--anchor_model_name_or_path", model_dir,
               "--output_dir", tmp_path / "xnli")
    ner = FIXTURES / "ner"
    run_script(run_ner_xl, "--model_name_or_path", adjusted, "--train_file", ner / "train-en.tsv",
               "--validation_file_pattern", ner / "dev-{lang}.tsv", "--eval_languages", "es", "--do_train",
               "--do_eval", "--max_steps", "2", "--per_device_train_batch_size", "4", "--max_seq_length", "32",
               "--output_dir", tmp_path / "ner")
    qa = FIXTURES / "qa"
    run_script(run_qa_xl, "--model_name_or_path", adjusted, "--train_file", qa / "train.json", "--xquad_dir", qa,
               "--eval_languages", "es", "--no_cross_lingual_eval", "--do_train", "--do_predict", "--max_steps", "2",
               "--per_device_train_batch_size", "4", "--max_seq_length", "64", "--doc_stride", "16",
               "--output_dir", tmp_path / "qa")
    argv = sys.argv
    sys.argv = ["run_xsr.py", "--model_name_or_path", str(adjusted), "--source_file", str(FIXTURES / "es.txt"),
                "--target_file", str(FIXTURES / "en.txt"), "--source_lang", "es",
                "--output_dir", str(tmp_path / "xsr")]
    try:
        run_xsr.main()
    finally:
        sys.argv = argv
    return adjusted


def check_matrix(arch, tmp_path, adjusted):
    stats = json.loads((adjusted / "alignment_stats.json").read_text())
    tok = AutoTokenizer.from_pretrained(adjusted)
    ensure_pad_token(tok)
    dataset = AlignedPairDataset(read_aligned_pairs(str(adjusted / "aligned_pairs.jsonl")), tok, 9, True)
    word_links = sum(int((~f["link_is_special"]).sum()) for f in dataset.features)
    assert stats["links_truncated"] > 0
    assert word_links == stats["links_kept"] - stats["links_truncated"]
    expected_added = {"qwen2": 0, "llama": 1}.get(arch, 2)
    assert len(stats["special_tokens_added"]) == expected_added
    assert stats["links_special_tokens"] == expected_added * stats["sentences_kept"]
    logged = json.loads((tmp_path / "xnli" / "trainer_state.json").read_text())["log_history"]
    assert any(h.get("align_loss", 0) > 0 for h in logged)  # the continual side batch trained
    for task in ("xnli", "ner", "qa", "xsr"):
        assert (tmp_path / task / "all_results.json").is_file(), task


@pytest.mark.parametrize("arch", ARCHS)
def test_every_script_runs_with_each_architecture(arch, tmp_path, arch_dirs):
    """run_adjust.py -> run_glue_xl.py (continual), run_ner_xl.py, run_qa_xl.py, run_xsr.py for a few steps
    (4-10 s per family on one CPU thread, under a minute for the eight: not marked slow)."""
    adjusted = run_matrix(arch, tmp_path, arch_dirs(arch))
    check_matrix(arch, tmp_path, adjusted)
    if arch in DECODERS:
        from transformers import AutoConfig

        assert AutoConfig.from_pretrained(tmp_path / "xnli").pad_token_id is not None
