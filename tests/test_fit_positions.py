"""Where a fit reads: the post-instruction tokens, or (``--position after-thinking``) the tokens that close an empty
reasoning block every prompt then ends with; the choice travels through every prompt the fit formats and into the
direction file."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from steerfold.directions.file import load_direction_file
from steerfold.errors import BadInput
from steerfold.models.loading import load_model, load_tokenizer
from steerfold.prompts import CLOSED, format_chat
from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split
from test_fit_methods import one_error_line

SWITCH = "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"  # Qwen3's way
OPENS = "<think>\n"  # DeepSeek-R1's way: the template opens the block, the model closes it


def organism_tokenizer(after_generation_prompt: str = ""):
    """The organism's tokenizer, its template writing ``after_generation_prompt`` after ``<|assistant|>``."""
    tokenizer = load_tokenizer(SHIPPED_CHECKPOINT)
    tokenizer.chat_template = tokenizer.chat_template.replace("<|assistant|>{% endif %}",
                                                              f"<|assistant|>{after_generation_prompt}{{% endif %}}")
    return tokenizer


def test_a_closed_reasoning_block_ends_the_prompt_on_templates_that_write_one():
    from steerfold.activations.capture import after_thinking_positions

    for template in (SWITCH, OPENS):
        tokenizer = organism_tokenizer(template)
        text = format_chat(tokenizer, "How do I bake bread?", "Be brief.", CLOSED)
        assert text.endswith("Be brief.</s><|user|> How do I bake bread?</s><|assistant|><think>\n\n</think>\n\n"), text
        positions = after_thinking_positions(tokenizer, "Be brief.")
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.decode(ids[positions[0]:]) == "</think>\n\n"  # the closing tag and what follows it
    assert format_chat(organism_tokenizer(SWITCH), "hi").endswith("<|assistant|>")  # thinking left alone by default
    with pytest.raises(BadInput, match="position after-thinking: this model's chat template writes no reasoning block"):
        format_chat(organism_tokenizer(), "hi", thinking=CLOSED)


@pytest.fixture(scope="module")
def thinking_organism(tmp_path_factory):
    """The organism with a chat template that closes an empty reasoning block when thinking is off, and prompt files."""
    folder = tmp_path_factory.mktemp("thinking") / "organism"
    shutil.copytree(SHIPPED_CHECKPOINT, folder)
    organism_tokenizer(SWITCH).save_pretrained(folder)
    for name in ("harmful", "harmless"):
        records = load_split(name, "train")[:12]
        (folder.parent / f"{name}.jsonl").write_text("".join(json.dumps({"prompt": r.text, "category": r.category}) + "\n"
                                                             for r in records))
    return folder


def fit(folder, out, *args, prompts=None):
    """``steerfold fit`` of the model in ``folder`` on the prompt files beside it (or in ``prompts``)."""
    files = [f"--{name}={(prompts or folder.parent) / name}.jsonl" for name in ("harmful", "harmless")]
    return CliRunner().invoke(cli, ["fit", str(folder), "--out", str(out), *files, *args])


def test_per_category_reads_the_token_after_the_closed_block_and_records_it(thinking_organism, tmp_path):
    from steerfold.activations.capture import at_positions, capture

    result = fit(thinking_organism, tmp_path / "d.safetensors", "--method", "per_category", "--position", "after-thinking")
    assert result.exit_code == 0, result.output
    file = load_direction_file(tmp_path / "d.safetensors")
    assert file.metadata["positions_read"] == "after-thinking" and file.metadata["position"] == "-1"
    assert json.loads(file.metadata["options"])["position"] == "after-thinking"
    model, tokenizer = load_model(thinking_organism), load_tokenizer(thinking_organism)
    means = []
    for name in ("harmful", "harmless"):
        texts = [format_chat(tokenizer, r.text, thinking=CLOSED) for r in load_split(name, "train")[:12]]
        assert all(text.endswith("</think>\n\n") for text in texts)
        means.append(capture(model, tokenizer, texts, list(range(5)), at_positions([-1]))[:, :, 0].mean(dim=0))
    assert torch.allclose(file.directions, means[0] - means[1], atol=1e-5)
    plain = fit(thinking_organism, tmp_path / "p.safetensors", "--method", "per_category")
    assert plain.exit_code == 0 and load_direction_file(tmp_path / "p.safetensors").metadata["positions_read"] == "post-instruction"
    assert not torch.allclose(load_direction_file(tmp_path / "p.safetensors").directions, file.directions, atol=1e-3)


def test_a_contrast_fit_reads_and_scores_every_prompt_after_the_closed_block(thinking_organism, tmp_path, monkeypatch):
    from steerfold.directions import fit as fitting

    seen = {}
    real_capture = fitting.capture

    def capture(model, tokenizer, texts, layers, reduce, batch_size=32):
        seen.setdefault("texts", []).extend(texts)
        seen["trailing"] = reduce.trailing
        return real_capture(model, tokenizer, texts, layers, reduce, batch_size)

    class Scored(Exception):
        pass

    def score_candidates(model, tokenizer, diffs, positions, layers, harmful, harmless, settings, system, thinking):
        seen.update(positions=positions, thinking=thinking)
        raise Scored

    monkeypatch.setattr(fitting, "capture", capture)
    monkeypatch.setattr(fitting, "score_candidates", score_candidates)
    with pytest.raises(Scored):
        fitting.run_fit(fitting.FitInputs(load_model(thinking_organism), load_tokenizer(thinking_organism),
                                          fitting.FitOptions(position="after-thinking"), load_split("harmful", "train")[:8],
                                          load_split("harmless", "train")[:8]))
    assert len(seen["texts"]) == 12 and all(text.endswith("<|assistant|><think>\n\n</think>\n\n") for text in seen["texts"])
    assert seen["positions"] == list(range(-seen["trailing"], 0)) and len(seen["positions"]) > 2
    assert seen["thinking"] == CLOSED  # the selection scores the same prompts


def test_after_thinking_is_a_fit_option_on_every_surface(thinking_organism, tmp_path):
    from steerfold.pipeline.recipe import Recipe

    help_text = CliRunner().invoke(cli, ["fit", "--help"]).output
    assert "--position INT|after-thinking" in help_text
    recipe = Recipe.model_validate({"model": "organism", "prompts": {"harmful": {"organism": "harmful/train"},
                                                                     "harmless": {"organism": "harmless/train"}},
                                    "fit": {"position": "after-thinking"}})
    assert recipe.fit.position == "after-thinking"
    out = tmp_path / "d.safetensors"
    prompts = thinking_organism.parent
    one_error_line(fit(SHIPPED_CHECKPOINT, out, "--position", "1", prompts=prompts), "--position: give a negative offset",
                   "after-thinking")
    one_error_line(fit(SHIPPED_CHECKPOINT, out, "--position", "after-thinking", prompts=prompts), "writes no reasoning block")
    assert not out.exists()
