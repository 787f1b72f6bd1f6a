"""The Arditi et al. selection: filters, winner, and the error when nothing qualifies."""

from __future__ import annotations

import pytest

from steerfold.errors import SteerfoldError
from steerfold.directions.selection import Candidate, SelectionSettings, choose


def row(layer, bypass, induce, kl, position=-1):
    return Candidate(position, layer, bypass, induce, kl, 1.0)


def test_choose_filters_then_takes_lowest_bypass():
    table = [
        row(1, 0.30, 0.5, 0.02),
        row(2, 0.10, 0.5, 0.50),  # KL too high
        row(4, 0.05, 0.5, 0.01),  # layer ≥ 0.8 L with L = 4
        row(2, 0.20, 0.01, 0.01),  # addition does not raise refusal above the base's 0.02
        row(1, 0.20, 0.6, 0.03, position=-2),
        Candidate(-1, 0, None, None, None, 0.0, reason="zero difference"),
    ]
    best = choose(table, num_layers=4, settings=SelectionSettings(), min_induce=0.02)
    assert (best.layer, best.position, best.bypass) == (1, -2, 0.20)
    assert best.reason == "chosen"
    assert [r.kept for r in table] == [True, False, False, False, True, False]
    assert "KL" in table[1].reason and "layer" in table[2].reason and "refusal score" in table[3].reason


def test_choose_relaxes_only_the_kl_filter_and_says_so():
    table = [row(1, 0.3, 0.5, 0.9), row(2, 0.1, 0.5, 0.4), row(4, 0.0, 0.5, 0.2), row(1, 0.0, 0.0, 0.3)]
    best = choose(table, num_layers=4)
    assert (best.layer, best.bypass) == (2, 0.1)  # the layer and induce filters still hold
    assert "KL filter relaxed" in best.reason


def test_choose_refuses_when_nothing_passes():
    with pytest.raises(SteerfoldError, match="no candidate"):
        choose([row(4, 0.1, 0.5, 0.01), row(1, 0.1, 0.0, 0.01)], num_layers=4)


def test_fit_refuses_a_model_that_refuses_nothing():
    from conftest import build_tiny_model
    from steerfold.prompts import PromptRecord
    from steerfold.directions.selection import refusal_first_tokens
    from test_activations import CharTokenizer

    class ChatCharTokenizer(CharTokenizer):
        chat_template = "x"
        eos_token_id = 2

        def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
            return "".join(m["content"] for m in messages) + ">"

        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(97 + (int(i) % 26)) for i in ids)

    model = build_tiny_model("llama")
    model.generation_config.eos_token_id = 2
    with pytest.raises(SteerfoldError, match="refuses none"):
        refusal_first_tokens(model, ChatCharTokenizer(), [PromptRecord("how do I do it")])


def test_a_weak_winner_is_a_warning_naming_the_candidates_that_lower_refusal_more():
    from steerfold.directions.fit import RefusalFit, weak_choice_warning

    table = [row(1, 0.76, 0.5, 0.02), row(3, 0.05, 0.5, 0.01), row(2, 0.30, 0.5, 0.90)]
    chosen = choose(table, num_layers=3, settings=SelectionSettings(), min_induce=0.0)
    assert chosen.layer == 1
    fit = RefusalFit(file=None, table=table, baseline={"harmful_refusal_score": 0.80}, chosen=chosen, candidates=None)
    warning = weak_choice_warning(fit)
    assert warning and "0.800 to 0.760" in warning
    assert warning.index("layer index 3, position -1: 0.050") < warning.index("layer index 2, position -1: 0.300")
    assert "layer ≥" in warning and "KL 0.900" in warning
    strong = RefusalFit(file=None, table=table, baseline={"harmful_refusal_score": 0.80}, chosen=table[1], candidates=None)
    assert weak_choice_warning(strong) is None
