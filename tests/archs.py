"""Tiny random models of each architecture family, with tokenizers trained on the fly (no Hub): WordPiece
(BERT, DistilBERT, ELECTRA), unigram (XLM-R with Metaspace "always", DeBERTa-v2 with Metaspace "first"),
byte-level BPE without prefix space (ModernBERT with CLS/SEP, Llama with BOS only and no pad token, Qwen2
adding no special token). Built once per name into a folder; `build_arch(name, path)` returns the path."""
from conftest import LANGS, fixture_lines, fixture_vocabulary

HIDDEN, LAYERS, HEADS, POSITIONS = 32, 2, 2, 64
ARCHS = ("bert", "xlmr", "distilbert", "electra", "deberta-v2", "modernbert", "llama", "qwen2")
DECODERS = ("llama", "qwen2")


def _text():
    return [line for lang in LANGS for line in fixture_lines(lang)]


def _wordpiece(wrapper):
    from tokenizers import BertWordPieceTokenizer

    vocab = {token: i for i, token in enumerate(fixture_vocabulary(400))}
    wp = BertWordPieceTokenizer(vocab, lowercase=False, strip_accents=False)
    return wrapper(tokenizer_object=wp._tokenizer, do_lower_case=False, strip_accents=False,
                   model_max_length=POSITIONS)


def _unigram(prepend_scheme, specials, template, pair, **wrapper_kwargs):
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import Unigram
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme, split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme=prepend_scheme, split=True)
    trainer = trainers.UnigramTrainer(vocab_size=300, special_tokens=specials, unk_token=wrapper_kwargs["unk_token"],
                                      shrinking_factor=0.75, n_sub_iterations=2)
    tok.train_from_iterator(_text(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=template, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in specials if t in template])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    wrapper = wrapper_kwargs.pop("wrapper", PreTrainedTokenizerFast)
    return wrapper(tokenizer_object=tok, model_max_length=POSITIONS, **wrapper_kwargs)


def _byte_level(specials, template, pair, **wrapper_kwargs):
    from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers, processors, trainers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_text(), trainer)
    if template:  # offsets untrimmed: a word's first subword covers the space before it ("Ġword")
        tok.post_processor = processors.TemplateProcessing(
            single=template, pair=pair, special_tokens=[(t, tok.token_to_id(t)) for t in specials if t in template])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=POSITIONS, **wrapper_kwargs)


def build_tokenizer(name):
    from transformers import BertTokenizerFast, XLMRobertaTokenizerFast

    no_types = {"model_input_names": ["input_ids", "attention_mask"]}
    if name in ("bert", "electra"):
        return _wordpiece(BertTokenizerFast)
    if name == "distilbert":
        tok = _wordpiece(BertTokenizerFast)
        tok.model_input_names = ["input_ids", "attention_mask"]
        return tok
    if name == "xlmr":
        return _unigram("always", ["<s>", "<pad>", "</s>", "<unk>", "<mask>"], "<s> $A </s>",
                        "<s> $A </s> </s> $B </s>", wrapper=XLMRobertaTokenizerFast, bos_token="<s>", eos_token="</s>",
                        cls_token="<s>",
                        sep_token="</s>", pad_token="<pad>", unk_token="<unk>", mask_token="<mask>")
    if name == "deberta-v2":
        return _unigram("first", ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"], "[CLS] $A [SEP]",
                        "[CLS] $A [SEP] $B:1 [SEP]:1", cls_token="[CLS]", sep_token="[SEP]", pad_token="[PAD]",
                        unk_token="[UNK]", mask_token="[MASK]")
    if name == "modernbert":
        return _byte_level(["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"], "[CLS] $A [SEP]",
                           "[CLS] $A [SEP] $B:1 [SEP]:1", cls_token="[CLS]",
                           sep_token="[SEP]", pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]", **no_types)
    if name == "llama":  # Llama 3's shape: BOS added, no pad token
        return _byte_level(["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|> $A",
                           "<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                           bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>", **no_types)
    if name == "qwen2":  # Qwen2's shape: nothing added, pad = eos = <|endoftext|>
        return _byte_level(["<|endoftext|>"], None, None, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                           **no_types)
    raise ValueError(name)


def build_config(name, tok):
    import transformers as tf

    small = dict(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                 intermediate_size=2 * HIDDEN, vocab_size=len(tok), pad_token_id=tok.pad_token_id)
    if name == "bert":
        return tf.BertConfig(max_position_embeddings=POSITIONS, **small)
    if name == "electra":
        return tf.ElectraConfig(embedding_size=HIDDEN, max_position_embeddings=POSITIONS, **small)
    if name == "xlmr":
        return tf.XLMRobertaConfig(max_position_embeddings=POSITIONS + 2, bos_token_id=tok.bos_token_id,
                                   eos_token_id=tok.eos_token_id, **small)
    if name == "deberta-v2":
        return tf.DebertaV2Config(max_position_embeddings=POSITIONS, relative_attention=True,
                                  pos_att_type=["p2c", "c2p"], position_buckets=16, **small)
    if name == "distilbert":
        return tf.DistilBertConfig(dim=HIDDEN, n_layers=LAYERS, n_heads=HEADS, hidden_dim=2 * HIDDEN,
                                   vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                   max_position_embeddings=POSITIONS)
    if name == "modernbert":
        return tf.ModernBertConfig(max_position_embeddings=POSITIONS, cls_token_id=tok.cls_token_id,
                                   sep_token_id=tok.sep_token_id, bos_token_id=tok.cls_token_id,
                                   eos_token_id=tok.sep_token_id, global_attn_every_n_layers=2,
                                   local_attention=16, **small)
    ids = dict(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, num_key_value_heads=HEADS,
               max_position_embeddings=POSITIONS, tie_word_embeddings=True)
    if name == "llama":
        return tf.LlamaConfig(**ids, **small)
    if name == "qwen2":
        return tf.Qwen2Config(**ids, **small)
    raise ValueError(name)


def build_arch(name, out_dir):
    """Save a random tiny `name` encoder/decoder (bare AutoModel) and its tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModel

    tok = build_tokenizer(name)
    config = build_config(name, tok)
    torch.manual_seed(0)
    AutoModel.from_config(config).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)
