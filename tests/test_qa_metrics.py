"""SQuAD v1.1 and MLQA exact match / token F1: hand-computed cases for every normalisation rule."""
import unicodedata

import pytest

from hf_xladjust.evaluation.qa_metrics import (
    exact_match,
    mlqa_normalize,
    mlqa_punctuation,
    normalizer,
    qa_scores,
    score_answer,
    squad_normalize,
    token_f1,
)

# --- SQuAD v1.1 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, normalised", [
    ("The Cat", "cat"),                              # lowercase, article
    ("An apple and a pear", "apple and pear"),       # a/an/the as whole words only
    ("theatre thereby anthem", "theatre thereby anthem"),
    ("  red \t chair\n", "red chair"),               # whitespace collapsed
    ("U.S.A.", "usa"),                                # ASCII punctuation deleted, not replaced by a space
    ("seven o'clock", "seven oclock"),
    ("the-end", "theend"),                           # deleting '-' glues the words: no article left
    ("$5 (approx.)", "5 approx"),
    ("el gato", "el gato"),                          # Spanish articles are not English ones
    ("«gato» ¿dónde?", "«gato» ¿dónde"),              # non-ASCII punctuation is kept by SQuAD's rule
    ("the", ""),
])
def test_squad_normalize(text, normalised):
    assert squad_normalize(text) == normalised


def test_squad_f1_and_exact_match():
    # pred tokens [red, chair], gold [on, red, chair]: precision 1, recall 2/3
    assert token_f1("the red chair", "on the red chair") == pytest.approx(0.8)
    assert not exact_match("the red chair", "on the red chair")
    assert exact_match("The red chair.", "red  chair")
    # repeated tokens count once per match: common {x: 1, y: 1} of [x x y] and [x y y]
    assert token_f1("x x y", "x y y") == pytest.approx(2 / 3)
    assert token_f1("bridge", "bridges") == 0.0
    # both sides normalise to nothing: exact match, but F1 0 (no shared token), as the official script
    assert exact_match("the", "a") and token_f1("the", "a") == 0.0


def test_squad_max_over_gold_answers():
    f1, em = score_answer("three", ["three languages", "3"])
    assert f1 == pytest.approx(2 * 1 * 0.5 / 1.5) and em is False
    assert score_answer("three", ["three languages", "Three."]) == (1.0, True)
    with pytest.raises(ValueError):
        score_answer("x", [])


# --- MLQA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("lang, text, normalised", [
    ("en", "The «cat»!", "cat"),                                        # unicode punctuation too
    ("es", "El gato, la silla.", "gato silla"),                         # el/la
    ("es", "Unos libros y unas casas; los niños, las niñas, un perro, una", "libros y casas niños niñas perro"),
    ("es", "¿Dónde? ¡Aquí! — «en el parque»", "dónde aquí en parque"),   # ¿ ¡ — « » are category P*
    ("es", "elefante lasaña", "elefante lasaña"),                       # articles only as whole words
    ("es", "The cat", "the cat"),                                       # English articles stay in Spanish
    ("vi", "Cái bàn của tôi là những chiếc ghế", "bàn tôi ghế"),        # của là cái chiếc những
    ("vi", "chiếcxe thành phố Hồ Chí Minh.", "chiếcxe thành phố hồ chí minh"),
    ("hi", "भारत की राजधानी नई दिल्ली है।", "भारत की राजधानी नई दिल्ली है"),  # danda । is Po; no articles
    ("hi", "राजधानी", "राजधानी"),                                       # vowel signs (Mc/Mn) are not punctuation
    ("de", "Der Hund und das Haus", "hund und haus"),
    ("ar", "في البيت", "في بيت"),                                       # every ال removed
    ("zh", "北京是中国的首都。", "北 京 是 中 国 的 首 都"),                # one token per CJK character
    ("zh", "我爱NLP模型", "我 爱 nlp 模 型"),
    ("zh", "The 北京, a city", "the 北 京 a city"),                     # zh has no articles: the script returns
    ("zh", "的", "的"),                                                 # the text unchanged (never "")
    ("en", "$5 or €5", "5 or €5"),                                      # $ is in string.punctuation, € is Sc
])
def test_mlqa_normalize(lang, text, normalised):
    assert mlqa_normalize(text, lang) == normalised


def test_mlqa_punctuation_set():
    punct = mlqa_punctuation()
    for ch in "¿¡«»—–…“”„‚‹›、。।॥·":
        assert ch in punct and unicodedata.category(ch).startswith("P")
    for ch in "$+<=>^`|~":  # string.punctuation's symbols of category S*
        assert ch in punct and unicodedata.category(ch).startswith("S")
    for ch in "€©°ा्":  # other symbols and Devanagari signs are not punctuation
        assert ch not in punct


def test_mlqa_metric_differs_from_squad_where_it_should():
    # Spanish articles: exact under MLQA-es, not under SQuAD
    assert exact_match("el gato", "gato", normalizer("mlqa", "es"))
    assert not exact_match("el gato", "gato")
    assert token_f1("el gato", "gato") == pytest.approx(2 / 3)
    # Hindi: the danda only goes under MLQA
    assert exact_match("दिल्ली।", "दिल्ली", normalizer("mlqa", "hi")) and not exact_match("दिल्ली।", "दिल्ली")
    # Vietnamese articles
    assert token_f1("của tôi", "tôi", normalizer("mlqa", "vi")) == 1.0
    with pytest.raises(ValueError, match="no rules for language 'ru'"):
        normalizer("mlqa", "ru")
    with pytest.raises(ValueError):
        normalizer("mlqa")
    with pytest.raises(ValueError):
        normalizer("bleu")


def test_qa_scores_over_a_set():
    golds = {"q1": ["the red chair"], "q2": ["three languages", "three"], "q3": ["a book"]}
    totals, per_question = qa_scores({"q1": "red chair", "q2": "three languages spoken"}, golds)
    # q1 exact; q2: P 2/3 R 1 vs gold 1 -> F1 0.8; q3 unanswered -> 0, counted in the mean
    assert per_question == {"q1": (1.0, True), "q2": (pytest.approx(0.8), False), "q3": (0.0, False)}
    assert totals == {"exact_match": pytest.approx(100 / 3), "f1": pytest.approx(100 * 1.8 / 3)}
    mlqa_totals, _ = qa_scores({"m": "los libros"}, {"m": ["libros"]}, "mlqa", "es")
    assert mlqa_totals == {"exact_match": 100.0, "f1": 100.0}
