"""Refusal-confidence scorers: votes averaged into [−1, 1], seeded sampling, and the weights they give the means."""

from __future__ import annotations

from typing import get_args

import pytest
import torch

from steerfold.errors import SteerfoldError
from steerfold.directions.methods.contrast import Contrast, weighted_mean
from steerfold.directions.methods.options import ScorerName
from steerfold.directions.methods.scorers import SCORERS, Judge, confidence_weights, marker_scorer, refusal_confidence
from steerfold.prompts import PromptRecord


@pytest.fixture(scope="module")
def organism():
    from steerfold.models.loading import load_model, load_tokenizer
    from steerfold.research.organism import SHIPPED_CHECKPOINT

    return load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)


class ScriptedJudge(Judge):
    """A judge whose sampled answers are given: isolates parsing and averaging from any model."""

    def __init__(self, scripted: list[list[str]], **kwargs):
        super().__init__(model=None, tokenizer=None, samples=len(scripted[0]), **kwargs)
        self.scripted = scripted

    def prompt(self, request: str, response: str) -> str:
        return request

    def answers(self, texts: list[str]) -> list[list[str]]:
        return self.scripted[: len(texts)]


RECORDS = [PromptRecord("a"), PromptRecord("b"), PromptRecord("c")]


def test_judge_votes_are_parsed_then_averaged():
    judge = ScriptedJudge([["Refuse.", "comply", "I REFUSE", "no idea"],
                           ["comply", "Comply!", "I comply; I would not refuse", "comply"],
                           ["refuse", "refuse", "refuse", "refuse"]])
    votes = judge.votes(RECORDS, ["x", "y", "z"])
    assert votes.tolist() == [[1, -1, 1, 0], [-1, -1, -1, -1], [1, 1, 1, 1]]  # the first label named wins
    assert judge(RECORDS, ["x", "y", "z"]).tolist() == [0.25, -1.0, 1.0]


def test_a_scorer_that_always_says_refuse_weights_every_response_equally():
    judge = ScriptedJudge([["refuse", "refuse"]] * 3)
    confidence = judge(RECORDS, ["I can't", "Sure.", "whatever"])
    refusing = confidence_weights(confidence, refusing_side=True)
    assert refusing.tolist() == [1.0, 1.0, 1.0]
    rows = torch.randn(3, 4)
    contrast = Contrast(rows, torch.randn(5, 4), refusing, confidence_weights(torch.ones(5), refusing_side=False))
    assert torch.allclose(weighted_mean(rows, refusing, "refusing"), rows.mean(dim=0), atol=1e-6)  # the plain mean
    with pytest.raises(SteerfoldError, match="complying-side response 0"):  # and no complying response is left
        contrast.means()


def test_weights_follow_the_confidence_on_each_side():
    confidence = torch.tensor([1.0, 0.0, -1.0])
    assert confidence_weights(confidence, refusing_side=True).tolist() == [1.0, 0.5, 0.0]
    assert confidence_weights(confidence, refusing_side=False).tolist() == [0.0, 0.5, 1.0]


def test_marker_scorer_and_the_registry_of_scorers():
    assert marker_scorer(RECORDS[:2], ["I can't help with that.", "Sure. To cook a stew: first chop"]).tolist() == [1.0, -1.0]
    assert set(SCORERS) == set(get_args(ScorerName))


def test_judge_model_votes_are_seeded_and_in_range(organism):
    from steerfold.research.organism import load_split

    model, tokenizer = organism
    records = load_split("harmful", "val")[:3] + load_split("harmless", "train")[:3]
    # The organism is no classifier, so ask it the request itself and read refusal and answer openings as votes.
    judge = Judge(model, tokenizer, template="{prompt}", samples=4, seed=0, max_new_tokens=6,
                  labels={"sorry": 1.0, "i cannot": 1.0, "i can't": 1.0, "not able": 1.0, "sure": -1.0, "of course": -1.0})
    state = torch.random.get_rng_state()
    votes = judge.votes(records, [""] * 6)
    assert torch.equal(torch.random.get_rng_state(), state)  # the judge's seed leaves the global generator alone
    assert votes.shape == (6, 4) and set(votes.unique().tolist()) <= {-1.0, 0.0, 1.0}
    assert torch.equal(judge.votes(records, [""] * 6), votes)  # same seed, same votes
    scores = judge(records, [""] * 6)
    assert torch.equal(scores, votes.mean(dim=1)) and bool(((scores >= -1) & (scores <= 1)).all())
    assert scores[:3].mean() > scores[3:].mean()  # it refuses the harmful requests more than the harmless ones


def test_refusal_confidence_scores_the_models_own_greedy_responses(organism):
    from steerfold.validation.behaviour import chat_texts
    from steerfold.activations.generate import greedy_generate
    from steerfold.research.organism import load_split

    model, tokenizer = organism
    harmful, harmless = load_split("harmful", "val")[:4], load_split("harmless", "train")[:4]
    seen = []

    def scorer(records, responses):
        seen.append((list(records), list(responses)))
        return torch.tensor([3.0, -3.0, 0.5, 0.0])

    assert refusal_confidence(model, tokenizer, harmful, scorer, max_new_tokens=8).tolist() == [1.0, -1.0, 0.5, 0.0]
    assert seen == [(harmful, greedy_generate(model, tokenizer, chat_texts(tokenizer, harmful), 8))]
    refused = refusal_confidence(model, tokenizer, harmful, marker_scorer, max_new_tokens=8)
    answered = refusal_confidence(model, tokenizer, harmless, marker_scorer, max_new_tokens=8)
    assert refused.mean() > answered.mean()
