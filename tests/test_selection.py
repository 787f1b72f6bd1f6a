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
        Candidate(-1, 0, None, None, None, 0.0, status="not_scored", reason="zero difference"),
    ]
    best = choose(table, num_layers=4, settings=SelectionSettings(), min_induce=0.02)
    assert (best.layer, best.position, best.bypass) == (1, -2, 0.20)
    assert best.status == "chosen" and best.reason == "chosen"
    assert [r.status for r in table] == ["kept", "filtered", "filtered", "filtered", "chosen", "not_scored"]
    assert [r.kept for r in table] == [True, False, False, False, True, False]
    assert "KL" in table[1].reason and "layer" in table[2].reason and "refusal score" in table[3].reason
    assert table[5].reason == "zero difference"


def test_choose_relaxes_only_the_kl_filter_and_says_so():
    table = [row(1, 0.3, 0.5, 0.9), row(2, 0.1, 0.5, 0.4), row(4, 0.0, 0.5, 0.2), row(1, 0.0, 0.0, 0.3)]
    best = choose(table, num_layers=4)
    assert (best.layer, best.bypass) == (2, 0.1)  # the layer and induce filters still hold
    assert best.status == "chosen_relaxed" and "KL filter relaxed" in best.reason and not best.kept


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


def test_rows_a_search_did_not_finish_keep_their_status_and_a_missing_kl_after_a_failed_filter_is_said():
    table = [
        row(1, 0.30, 0.5, 0.02),
        Candidate(-1, 2, 0.60, None, None, 1.0, status="outranked", reason="outranked: its bypass 0.6000, above 0.3"),
        row(2, 0.10, 0.01, None),  # the induce filter dropped it before its KL was computed
    ]
    best = choose(table, num_layers=4, settings=SelectionSettings(), min_induce=0.02)
    assert best is table[0]
    assert table[1].status == "outranked" and table[1].reason.startswith("outranked")
    assert table[2].status == "filtered" and "refusal score" in table[2].reason and "KL not computed" in table[2].reason
    stored = table[1].as_dict()
    assert stored["status"] == "outranked" and stored["kept"] is False and "reason" in stored


def test_summary_counts_what_each_search_scored():
    from steerfold.directions.selection import selection_summary

    table = [row(1, 0.30, 0.5, 0.02), row(2, 0.10, 0.01, None),
             Candidate(-1, 2, None, None, None, 1.0, status="outranked", reason="outranked"),
             Candidate(-1, 4, None, None, None, 1.0, status="not_scored", reason="layer ≥ 0.8·L")]
    choose(table, num_layers=4, min_induce=0.02)
    line = selection_summary(table, {"search": "pruned"})
    assert line == ("selection (pruned search): 1 of 4 candidates scored in full, 1 dropped by the induce filter "
                    "before their KL, 1 outranked (their bypass provably above the winner's), 1 not scored (layer filter "
                    "or zero difference)")


@pytest.fixture(scope="module")
def organism():
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split

    sets = [load_split(kind, split) for kind, split in
            (("harmful", "train"), ("harmless", "train"), ("harmful", "val"), ("harmless", "val"))]
    return load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT), sets


@pytest.mark.parametrize("persona", ["default", "cautious"])
def test_fast_searches_choose_what_the_exhaustive_search_chooses_on_the_organism(organism, persona):
    """The complete and pruned searches (shared prefix, steered passes resumed at the candidate's layer, a bound on
    bypass) against three whole forward passes per candidate: the same winner, the same scores where both computed
    them. The cautious persona's system prompt makes the prompts share a 15-token prefix that is computed once."""
    from steerfold.activations.capture import prompt_batches
    from steerfold.directions.fit import fit_refusal_direction
    from steerfold.directions.selection import SEARCHES
    from steerfold.research.organism import PERSONAS
    from steerfold.validation.behaviour import chat_texts

    model, tokenizer, sets = organism
    system = PERSONAS[persona]
    shared = prompt_batches(tokenizer, chat_texts(tokenizer, sets[2], system)).prefix_length
    assert (shared > 0) == (system is not None)
    fits = {search: fit_refusal_direction(model, tokenizer, *sets, settings=SelectionSettings(search=search), system=system)
            for search in SEARCHES}
    reference = fits["exhaustive"]
    assert reference.chosen.status == "chosen"
    for search in ("complete", "pruned"):
        fit = fits[search]
        assert (fit.chosen.position, fit.chosen.layer) == (reference.chosen.position, reference.chosen.layer), search
        for key in ("harmful_refusal_score", "harmless_refusal_score"):
            assert fit.baseline[key] == pytest.approx(reference.baseline[key], abs=1e-4)
        for row, ref in zip(fit.table, reference.table, strict=True):
            assert (row.position, row.layer) == (ref.position, ref.layer)
            for key in ("bypass", "induce", "kl"):
                if getattr(row, key) is not None and getattr(ref, key) is not None:
                    assert getattr(row, key) == pytest.approx(getattr(ref, key), abs=1e-4), (search, row, ref)
    assert [r.status for r in fits["complete"].table] == [r.status for r in reference.table]
    pruned = fits["pruned"]
    outranked = [r for r in pruned.table if r.status == "outranked"]
    assert outranked, "the organism's winner should let the pruned search drop some candidates"
    assert all(r.induce is None and r.kl is None for r in outranked)
    by_cell = {(r.position, r.layer): r for r in reference.table}
    for r in outranked:
        exact = by_cell[(r.position, r.layer)].bypass
        assert exact > pruned.chosen.bypass
        assert (r.bypass is None) != (r.bypass_at_least is None)
        if r.bypass_at_least is not None:  # a true lower bound, above the winner's bypass
            assert pruned.chosen.bypass < r.bypass_at_least <= exact + 1e-6
