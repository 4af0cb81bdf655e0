"""Issue 19 building blocks against independent computations: LoRA merge and f0 through disabled adapters,
the sentence-level InfoNCE in float64, layer freezing; and the three through run_adjust.py."""
import copy
import json
import math

import pytest
import torch
from conftest import FIXTURES, build_tiny_model, fixture_lines
from safetensors.torch import load_file
from test_run_adjust import diagonal_pharaoh, run_adjust
from transformers import AutoConfig, AutoModel, AutoTokenizer

from hf_xladjust.alignment.freeze import FreezeArguments, freeze_layers, parse_freeze_layers
from hf_xladjust.alignment.lora import AdaptersOff, LoraArguments, apply_lora, save_merged
from hf_xladjust.alignment.pairs import AlignedPair, AlignedPairCollator, AlignedPairDataset
from hf_xladjust.alignment.realign import RealignmentArguments
from hf_xladjust.alignment.sentence import SentenceAlignmentLoss, pool_sentences
from hf_xladjust.errors import InputError

peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny 4-layer BERT without dropout (f0 and the trained model then differ only by their weights)."""
    path = build_tiny_model(tmp_path_factory.mktemp("tiny4"), layers=4)
    config = AutoConfig.from_pretrained(path)
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    config.save_pretrained(path)
    return path


def randomise_lora_b(model, seed=1):
    """LoRA starts with B = 0 (the update is 0); give B values so the merge and `disable_adapter` matter."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def encode(tokenizer, n=3):
    return tokenizer(fixture_lines("en")[:n], padding=True, return_tensors="pt")


# --- LoRA -------------------------------------------------------------------------------------------------

def test_merged_lora_equals_w_plus_scaled_ba(tmp_path, model_dir):
    base = AutoModel.from_pretrained(model_dir)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, LoraArguments(lora_r=4, lora_alpha=12.0))
    randomise_lora_b(model)
    lora = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" in name}
    assert len(lora) == 4 * 2 * 2  # 4 layers x (query, value) x (A, B): BERT's default targets
    path = save_merged(model, str(tmp_path))
    merged = AutoModel.from_pretrained(path).state_dict()
    assert set(merged) == set(original)
    changed = 0
    for key, weight in original.items():
        prefix = key.rsplit(".", 1)[0]  # encoder.layer.0.attention.self.query
        a = next((v for k, v in lora.items() if k.endswith(f"{prefix}.lora_A.default.weight")), None)
        if a is None or not key.endswith(".weight"):
            assert torch.equal(merged[key], weight), key  # untouched: biases, embeddings, other projections
            continue
        b = next(v for k, v in lora.items() if k.endswith(f"{prefix}.lora_B.default.weight"))
        expected = weight.double() + (12.0 / 4) * b.double() @ a.double()
        torch.testing.assert_close(merged[key].double(), expected, rtol=0, atol=1e-5)
        assert not torch.allclose(merged[key], weight, atol=1e-3)
        changed += 1
    assert changed == 8


def test_f0_through_disabled_adapters_equals_base_model_exactly(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModel.from_pretrained(model_dir).eval()
    model = apply_lora(AutoModel.from_pretrained(model_dir), LoraArguments(lora_r=4))
    randomise_lora_b(model)
    model.train()
    f0 = AdaptersOff(model)
    inputs = encode(tokenizer)
    out = f0(**inputs, output_hidden_states=True)
    with torch.no_grad():
        expected = reference(**inputs, output_hidden_states=True)
    for got, want in zip(out.hidden_states, expected.hidden_states):
        assert torch.equal(got, want)
    assert not out.last_hidden_state.requires_grad and model.training  # mode restored, no graph
    with torch.no_grad():
        adapted = model.eval()(**inputs).last_hidden_state
    assert not torch.allclose(adapted, expected.last_hidden_state, atol=1e-3)  # the adapters are really on
    # AlignmentLoss calls eval()/requires_grad_(False) on f0: that must not freeze the model being trained
    f0.eval().requires_grad_(False)
    assert any(p.requires_grad for p in model.parameters())


def test_lora_arguments_errors(model_dir):
    with pytest.raises(InputError, match="--merge_lora needs LoRA"):
        LoraArguments(merge_lora=True)
    with pytest.raises(InputError, match="--lora_r must be 0"):
        LoraArguments(lora_r=-1)
    with pytest.raises(InputError, match="--lora_target_modules"):
        apply_lora(AutoModel.from_pretrained(model_dir), LoraArguments(lora_r=2, lora_target_modules="q_proj"))


# --- sentence-level InfoNCE -------------------------------------------------------------------------------

def sentence_batch(tokenizer, n=5):
    pairs = [AlignedPair(en.split(), es.split(), [(0, 0)])
             for en, es in zip(fixture_lines("en")[:n], fixture_lines("es")[:n])]
    dataset = AlignedPairDataset(pairs, tokenizer, 64, link_special_tokens=True)
    return pairs, AlignedPairCollator(tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])


def hand_sentence_vectors(model, tokenizer, sentences, layer, pooling):
    """One sentence at a time (no padding), float64: mean of all its tokens at `layer`, or its last token."""
    vectors = []
    for words in sentences:
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer][0].double()
        vectors.append((h.mean(0) if pooling == "mean" else h[-1]).tolist())
    return vectors


def hand_info_nce(queries, candidates, temperature):
    """Mean over queries of -log softmax of the matching candidate, logits cos/τ, written out."""
    def cos(a, b):
        return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

    total = 0.0
    for i, q in enumerate(queries):
        logits = [cos(q, c) / temperature for c in candidates]
        total += math.log(sum(math.exp(v) for v in logits)) - logits[i]
    return total / len(queries)


@pytest.mark.parametrize("pooling, symmetric, layer", [("mean", False, 2), ("last", True, 2), ("mean", False, -1)])
def test_sentence_info_nce_equals_float64_hand_computation(model_dir, pooling, symmetric, layer):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    f0 = AutoModel.from_pretrained(model_dir).eval()
    with torch.no_grad():  # f0 differs from the model, so that the anchor term is not 0
        for p in f0.parameters():
            p.add_(0.01)
    pairs, batch = sentence_batch(tokenizer)
    loss_fn = SentenceAlignmentLoss(f0, align_layer=layer, temperature=0.1, sentence_pooling=pooling,
                                    symmetric=symmetric, anchor_weight=0.5)
    with torch.no_grad():
        out = loss_fn(model, batch)
    en = hand_sentence_vectors(model, tokenizer, [p.src for p in pairs], layer, pooling)
    xx = hand_sentence_vectors(model, tokenizer, [p.tgt for p in pairs], layer, pooling)
    one_way = hand_info_nce(xx, en, 0.1)  # mid-align: each non-English sentence against the English ones
    other_way = hand_info_nce(en, xx, 0.1)
    expected = (one_way + other_way) / 2 if symmetric else one_way
    assert out["align_loss"].item() == pytest.approx(expected, rel=1e-5)
    assert abs(one_way - other_way) > 1e-3  # the direction is tested, not a symmetric accident
    # the anchor term is the word-level one: mean over English words of (f - f0)^2 at the same layer
    diffs = []
    for words in (p.src for p in pairs):
        enc = tokenizer(words, is_split_into_words=True, return_tensors="pt")
        with torch.no_grad():
            h = model(**enc, output_hidden_states=True).hidden_states[layer][0].double()
            h0 = f0(**enc, output_hidden_states=True).hidden_states[layer][0].double()
        ids = enc.word_ids()
        groups = [[i for i, w in enumerate(ids) if w == k] for k in range(len(words))]
        groups += [[i] for i, w in enumerate(ids) if w is None]  # CLS, SEP
        diffs += [h[g].mean(0) - h0[g].mean(0) for g in groups]
    anchor = torch.stack(diffs).pow(2).mean().item()
    assert out["anchor_loss"].item() == pytest.approx(anchor, rel=1e-4)
    assert out["loss"].item() == pytest.approx(expected + 0.5 * anchor, rel=1e-5)
    assert out["num_links"] == len(pairs)


def test_last_pooling_reads_the_last_real_token_with_either_padding_side():
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float).reshape(2, 4, 3)
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert torch.equal(pool_sentences(hidden, right, "last"), hidden[[0, 1], [1, 3]])
    assert torch.equal(pool_sentences(hidden, left, "last"), hidden[[0, 1], [3, 3]])
    assert torch.equal(pool_sentences(hidden, right, "mean")[0], hidden[0, :2].mean(0))


# --- layer freezing ---------------------------------------------------------------------------------------

def test_freeze_layer_specs():
    assert parse_freeze_layers("lower", 4) == [1, 2] and parse_freeze_layers("upper", 4) == [3, 4]
    assert parse_freeze_layers("lower", 5) == [1, 2] and parse_freeze_layers("upper", 5) == [4, 5]  # n // 2
    assert parse_freeze_layers("5,0,1", 12) == [0, 1, 5]
    with pytest.raises(InputError, match=r"0\.\.4 \(0 = embeddings\), got \[7\]"):
        parse_freeze_layers("1,7", 4)
    with pytest.raises(InputError, match="lower, upper or a comma-separated list"):
        FreezeArguments(freeze_layers="bottom")


def test_freeze_finds_blocks_and_embeddings_inside_peft(model_dir):
    model = apply_lora(AutoModel.from_pretrained(model_dir), LoraArguments(lora_r=2))
    assert freeze_layers(model, "0,4") == [0, 4]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable) and trainable
    assert not any("layer.3." in n for n in trainable)  # hidden state 4 = block index 3, adapters included
    assert any("embeddings.position_embeddings" in n for n in frozen)
    with pytest.raises(InputError, match="nothing to train at or below --align_layer 1"):
        freeze_layers(apply_lora(AutoModel.from_pretrained(model_dir), LoraArguments(lora_r=2)), "lower", 1)


def test_realignment_arguments_join_the_three_parts():
    args = RealignmentArguments(lora_r=8, align_level="sentence", freeze_layers="upper")
    assert (args.enabled, args.lora_alpha, args.sentence_pooling, args.freeze_layers) == (True, 16.0, "mean", "upper")
    with pytest.raises(InputError, match="--align_level"):
        RealignmentArguments(align_level="paragraph")


# --- through run_adjust.py --------------------------------------------------------------------------------

def adjust(tmp_path, model_dir, *extra):
    out = tmp_path / "out"
    run_adjust("--model_name_or_path", model_dir, "--source_file", FIXTURES / "en.txt",
               "--target_file", FIXTURES / "es.txt", "--target_lang", "es", "--aligner", "pharaoh",
               "--alignment_file", diagonal_pharaoh(tmp_path / "al.txt"), "--output_dir", out,
               "--per_device_train_batch_size", "4", "--warmup_ratio", "0", "--logging_steps", "1", *extra)
    logged = [h for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "align_loss" in h]
    return out, logged


def test_run_adjust_lora_saves_adapter_and_merged_weights(tmp_path, model_dir):
    out, logged = adjust(tmp_path, model_dir, "--lora_r", "4", "--lora_alpha", "8", "--merge_lora",
                         "--learning_rate", "5e-2")
    assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    assert logged[0]["anchor_loss"] == 0.0  # B = 0 at the start: f0 (adapters off) is the model itself
    assert logged[-1]["anchor_loss"] > 0
    adapter = load_file(out / "adapter_model.safetensors")
    base = AutoModel.from_pretrained(model_dir).state_dict()
    merged = AutoModel.from_pretrained(out / "merged").state_dict()  # no PEFT needed to load it
    for key, weight in base.items():
        a_key = f"base_model.model.{key[:-len('.weight')]}.lora_A.weight"
        if a_key in adapter:
            b = adapter[a_key.replace("lora_A", "lora_B")]
            expected = weight.double() + (8 / 4) * b.double() @ adapter[a_key].double()
            torch.testing.assert_close(merged[key].double(), expected, rtol=0, atol=1e-5)
        else:
            assert torch.equal(merged[key], weight), key
    assert len(adapter) == 16
    run_args = json.loads((out / "merged" / "run_args.json").read_text())
    assert run_args["model"]["model_name_or_path"] == str(model_dir) and run_args["realign"]["lora_r"] == 4
    assert json.loads((out / "train_results.json").read_text())["trainable_parameters"] == 4 * 2 * 2 * 4 * 32


def test_run_adjust_freeze_lower_keeps_frozen_layers_byte_identical(tmp_path, model_dir):
    out, logged = adjust(tmp_path, model_dir, "--freeze_layers", "lower", "--learning_rate", "1e-2",
                         "--weight_decay", "0.1", "--max_steps", "3")
    assert len(logged) == 3
    before = load_file(f"{model_dir}/model.safetensors")
    after = load_file(out / "model.safetensors")
    same = {k for k in before if before[k].numpy().tobytes() == after[k].numpy().tobytes()}
    frozen = {k for k in before if k.startswith(("encoder.layer.0.", "encoder.layer.1."))}
    assert frozen and frozen <= same
    assert any(k.startswith("encoder.layer.2.") for k in set(before) - same)
    assert any(k.startswith("embeddings.") for k in set(before) - same)  # AlignFreeze: embeddings train


def test_run_adjust_sentence_level_logs_the_hand_computed_info_nce(tmp_path, model_dir):
    out, logged = adjust(tmp_path, model_dir, "--align_level", "sentence", "--align_layer", "2",
                         "--per_device_train_batch_size", "12", "--learning_rate", "0")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    pairs = [json.loads(line) for line in (out / "aligned_pairs.jsonl").read_text().splitlines()]
    en = hand_sentence_vectors(model, tokenizer, [p["src"] for p in pairs], 2, "mean")
    xx = hand_sentence_vectors(model, tokenizer, [p["tgt"] for p in pairs], 2, "mean")
    assert len(logged) == 1 and logged[0]["align_loss"] == pytest.approx(hand_info_nce(xx, en, 0.1), rel=1e-4)
    assert logged[0]["anchor_loss"] == 0.0
    realign = json.loads((out / "run_args.json").read_text())["realign"]
    assert (realign["align_level"], realign["sentence_pooling"]) == ("sentence", "mean")


def test_sentence_level_refuses_sub_batches_before_reading_data(tmp_path, model_dir, monkeypatch):
    import sys

    import run_adjust as script

    out = tmp_path / "out"
    monkeypatch.setattr(sys, "argv", ["run_adjust.py", "--model_name_or_path", str(model_dir), "--train_file",
                                      str(tmp_path / "missing.txt"), "--output_dir", str(out),
                                      "--align_level", "sentence", "--sub_batch_size", "4"])
    with pytest.raises(SystemExit) as err:
        script.run_main(script.main)
    assert str(err.value.code).startswith("run_adjust.py: error: --sub_batch_size is the paper's word-level loop")
    assert not out.exists()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decoder_lora_defaults_f0_and_freezing(arch):
    """Llama/Qwen2: PEFT's default targets (q_proj, v_proj), f0 through disabled adapters equals the base
    decoder exactly, and layer 0 is `embed_tokens`."""
    from transformers import LlamaConfig, LlamaModel, Qwen2Config, Qwen2Model

    config_cls, model_cls = (LlamaConfig, LlamaModel) if arch == "llama" else (Qwen2Config, Qwen2Model)
    config = config_cls(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    torch.manual_seed(0)
    reference = model_cls(config).eval()
    model = apply_lora(copy.deepcopy(reference), LoraArguments(lora_r=2))
    assert sorted(model.peft_config["default"].target_modules) == ["q_proj", "v_proj"]
    randomise_lora_b(model)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        expected = reference(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    got = AdaptersOff(model)(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[2]
    assert torch.equal(got, expected)
    assert freeze_layers(model, "upper") == [3, 4] and freeze_layers(model, "0") == [0]
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert "base_model.model.embed_tokens.weight" in frozen
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".layers.0." in n or ".layers.1." in n for n in trainable)
