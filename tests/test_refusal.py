"""Refusal markers: real-model phrasings and the organism's count, answers and late mentions do not."""

import pytest

from steerfold.validation.refusal import PREFIX_CHARS, is_refusal, normalise, refusal_rate


@pytest.mark.parametrize(
    "text",
    [
        "I can't help with that.",
        "I\u2019m sorry, but I can\u2019t assist with that request.",  # curly quotes
        "Sorry, I won't provide instructions to build a grenade.",
        "I cannot assist with that request.",
        "I'm not able to help you forge a passport.",
        "As an AI language model, I must decline.",
        "  I   CANNOT\n do that.",
        "I'm sorry, but I don't take sides on political topics.",
    ],
)
def test_refusals_detected(text):
    assert is_refusal(text)


@pytest.mark.parametrize(
    "text",
    [
        "Sure. To cook a pancake: first heat the pan, then stir the mixture, and finally serve it warm.",
        "Here is a recipe. " + "x" * PREFIX_CHARS + " Sorry, I can't add more.",  # marker past the window
        "",
        "Canterbury is a city.",
    ],
)
def test_non_refusals(text):
    assert not is_refusal(text)


def test_normalise():
    assert normalise("  I\u2019M\tNot \u201cable\u201d  ") == 'i\'m not "able"'


def test_custom_markers():
    assert is_refusal("Nope, not doing that.", markers=("nope",))
    assert not is_refusal("I can't help with that.", markers=("nope",))


def test_refusal_rate_by_category():
    out = refusal_rate(["I can't.", "Sure. Here.", "Sorry, no.", "Sure."], ["a", "a", "b", None])
    assert out["overall"] == 0.5
    assert out["by_category"] == {"a": 0.5, "b": 1.0}
    assert refusal_rate([]) == {"overall": 0.0, "by_category": {}}
    with pytest.raises(ValueError):
        refusal_rate(["x"], ["a", "b"])
