import math

import pytest
import torch

from diffusion_book.data import (CharVocab, EnumerableLanguage, MarkovChainLanguage, PYDOC_ALPHABET, all_strings,
                                 arithmetic_language, load_pydoc_text, markov_language, pydoc_corpus, text_windows)
from diffusion_book.utils import make_generator

torch.set_num_threads(1)


def test_all_strings_order_and_codes():
    s = all_strings(3, 4)
    assert s.shape == (81, 4)
    lang = markov_language(4)
    assert torch.equal(lang.codes(all_strings(4, 4)), torch.arange(256))


def test_markov_table_matches_chain_formula_and_sums_to_one():
    lang = markov_language()
    every = all_strings(4, 6)
    torch.testing.assert_close(lang.log_prob(every).exp(), lang.chain_prob(every), rtol=1e-12, atol=1e-15)
    assert abs(float(lang.probs.sum()) - 1) < 1e-12 and len(lang.strings) == int((lang.chain_prob(every) > 0).sum())
    assert abs(lang.entropy() - lang.entropy_by_chain_rule()) < 1e-10


def test_markov_forward_backward_equals_enumeration():
    lang = markov_language()
    g = make_generator(0)
    x_t = lang.sample(300, generator=g)
    x_t[torch.rand(x_t.shape, generator=g) < 0.6] = lang.V
    x_t[:30] = torch.randint(0, lang.V + 1, (30, 6), generator=g)  # includes impossible evidence
    a, b = lang.conditionals(x_t), EnumerableLanguage.conditionals(lang, x_t)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(a.sum(-1), torch.ones(300, 6, dtype=torch.float64))


def test_conditionals_are_bayes_rule_on_a_tiny_chain():
    lang = MarkovChainLanguage([0.5, 0.5], [[0.9, 0.1], [0.2, 0.8]], length=2)
    p = lang.conditionals(torch.tensor([[2, 1]]))  # x^1 masked, x^2 = 1
    # p(x^1 = 0 | x^2 = 1) = 0.5·0.1 / (0.5·0.1 + 0.5·0.8)
    torch.testing.assert_close(p[0, 0], torch.tensor([0.05 / 0.45, 0.40 / 0.45], dtype=torch.float64))
    torch.testing.assert_close(p[0, 1], torch.tensor([0.0, 1.0], dtype=torch.float64))  # observed → one-hot


def test_impossible_evidence_gives_uniform_at_masked_positions():
    lang = markov_language()
    x_t = torch.tensor([[0, 3, 4, 4, 4, 4]])  # a→d is forbidden
    p = lang.conditionals(x_t)
    torch.testing.assert_close(p[0, 2:], torch.full((4, 4), 0.25, dtype=torch.float64))
    assert not lang.is_valid(torch.tensor([[0, 3, 0, 0, 0, 0]]))[0]


def test_sampling_is_deterministic_and_follows_p():
    lang = markov_language()
    a, b = lang.sample(50, make_generator(3)), lang.sample(50, make_generator(3))
    assert torch.equal(a, b) and lang.is_valid(a).all()
    emp = lang.distribution(lang.sample(40_000, make_generator(1)))
    assert 0.5 * (emp - lang.exact_distribution()).abs().sum() < 0.08


def test_arithmetic_language():
    lang = arithmetic_language()
    assert (lang.V, lang.L, len(lang.strings)) == (7, 5, 25)
    every = all_strings(7, 5)
    assert torch.equal(lang.is_valid(every), torch.isfinite(lang.log_prob(every)))
    assert int(lang.is_valid(every).sum()) == 25 and abs(lang.entropy() - math.log(25)) < 1e-12
    assert lang.decode(lang.encode("3+4=2")) == "3+4=2" and lang.is_valid(lang.encode(["3+4=2"]))[0]
    assert not lang.is_valid(lang.encode(["3+4=3", "3=4+2"])).any()
    p = lang.conditionals(torch.tensor([[1, 5, 3, 6, 7]]))  # "1+3=_"
    assert p[0, 4, 4] == 1.0


def test_bad_input():
    lang = markov_language()
    with pytest.raises(ValueError, match="tokens in"):
        lang.log_prob(torch.tensor([[0, 1, 2, 3, 4, 0]]))
    with pytest.raises(ValueError, match="mask_id"):
        lang.conditionals(torch.tensor([[0, 1, 2, 3, 4, 0]]), mask_id=9)
    with pytest.raises(ValueError, match="shape"):
        lang.conditionals(torch.tensor([[0, 1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        lang.log_prob(torch.zeros(2, 6))
    with pytest.raises(ValueError, match="row-stochastic"):
        MarkovChainLanguage([0.5, 0.5], [[0.5, 0.6], [0.5, 0.5]])
    with pytest.raises(ValueError, match="modulus"):
        arithmetic_language(11)


def test_pydoc_corpus_split_and_vocab():
    train, test, every = load_pydoc_text("train"), load_pydoc_text("test"), load_pydoc_text("all")
    assert len(train) > 100_000 and 0.05 < len(test) / len(every) < 0.15
    assert load_pydoc_text("train") == train  # fixed
    vocab = CharVocab()
    assert vocab.V == len(PYDOC_ALPHABET) == 96
    assert vocab.decode(vocab.encode("def f(x):\n    return x")) == "def f(x):\n    return x"
    assert vocab.decode(vocab.encode("é")) == "?"
    x, v = pydoc_corpus("test", length=32)
    assert x.shape[1] == 32 and x.dtype == torch.long and int(x.max()) < v.V
    with pytest.raises(ValueError, match="split"):
        load_pydoc_text("valid")


def test_text_windows():
    ids = torch.arange(10)
    assert torch.equal(text_windows(ids, 4), torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]))
    assert text_windows(ids, 4, stride=3).shape == (3, 4)
    with pytest.raises(ValueError, match="length"):
        text_windows(ids, 11)
