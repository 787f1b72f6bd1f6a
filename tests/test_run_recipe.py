"""`steerfold run` on the organism recipe: end to end, resumed runs skip finished work, interruptions resume."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

from steerfold.pipeline.run import run_recipe

pytestmark = pytest.mark.slow
RECIPE = Path(__file__).parents[1] / "recipes" / "organism-demo.yaml"


def quiet(_line: str) -> None:
    pass


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "run"
    start = time.perf_counter()
    report = run_recipe(RECIPE, out, say=quiet)
    return out, report, time.perf_counter() - start


def test_recipe_runs_end_to_end(reference):
    out, report, _ = reference
    assert report["after"]["harmful_refusal"] < report["before"]["harmful_refusal"]
    for path in ("merged/README.md", "merged/SHA256SUMS", "lora/adapter_config.json", "report.md", "direction.safetensors"):
        assert (out / path).is_file(), path


def test_resumed_run_skips_finished_work(reference):
    out, report, first = reference
    start = time.perf_counter()
    again = run_recipe(RECIPE, out, resume=True, say=quiet)
    assert time.perf_counter() - start <= 0.3 * first
    assert again["after"] == report["after"]


def test_interrupted_run_resumes_to_the_same_result(reference, tmp_path, monkeypatch):
    import steerfold.validation.validate as validate_module

    ref_out, ref_report, _ = reference

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(validate_module, "validate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_recipe(RECIPE, tmp_path / "run", say=quiet)
    state = json.loads((tmp_path / "run" / ".steerfold-run.json").read_text())
    assert "fit" in state["done"] and "validate" not in state["done"]
    assert not [p for p in (tmp_path / "run").iterdir() if ".tmp-" in p.name]  # no partial export
    monkeypatch.undo()

    resumed = run_recipe(RECIPE, tmp_path / "run", resume=True, say=quiet)
    assert resumed["after"] == ref_report["after"]
    from steerfold.directions.file import load_direction_file

    ours, theirs = (load_direction_file(d / "direction.safetensors") for d in (tmp_path / "run", ref_out))
    assert torch.equal(ours.directions, theirs.directions) and ours.metadata == theirs.metadata


def test_a_changed_threshold_rechecks_the_cached_figures_and_every_threshold_is_reported(reference, tmp_path):
    out, report, _ = reference
    recipe = tmp_path / "stricter.yaml"
    recipe.write_text(RECIPE.read_text().replace("kl_first_token_max: 0.1", "kl_first_token_max: 0.0001"))
    lines: list[str] = []
    with pytest.raises(Exception, match="kl_first_token"):
        run_recipe(recipe, out, resume=True, say=lines.append)
    assert "[validate] cached" in " ".join(lines)
    assert any(line.startswith("[thresholds] met: harmful_refusal") for line in lines)
    assert any(line.startswith("[thresholds] NOT met: kl_first_token") for line in lines)


def test_a_run_card_of_a_tied_post_norm_model_keeps_both_caveats(tmp_path):
    """`steerfold run` rewrites each export's card with the validation table; it must still say what `steerfold edit`
    says: the untied output head and the post-norm fold."""
    import shutil

    from conftest import build_tiny_model, save_tiny_model
    from steerfold.research.organism import SHIPPED_CHECKPOINT
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(SHIPPED_CHECKPOINT))
    model = save_tiny_model(build_tiny_model("gemma2", head_dim=16, tie_word_embeddings=True, vocab_size=vocab),
                            tmp_path / "gemma2")
    for item in SHIPPED_CHECKPOINT.iterdir():
        if item.name.startswith(("tokenizer", "chat_template")):
            shutil.copy(item, model / item.name)
    recipe = tmp_path / "tied.yaml"
    recipe.write_text(f"""name: tied post-norm
model: {model}
prompts:
  harmful: {{organism: harmful/train, count: 4}}
  harmful_test: {{organism: harmful/test, count: 4}}
  harmless_test: {{organism: harmless/test, count: 4}}
fit: {{method: persona_vector, persona: "You are a pirate.", prompts: harmful, max_new_tokens: 4}}
edit: {{kind: ablation, layer: 2}}
validate: {{max_new_tokens: 4}}
export: {{formats: [merged]}}
""")
    run_recipe(recipe, tmp_path / "run", say=quiet)
    card = (tmp_path / "run" / "merged" / "README.md").read_text()
    assert "## Validation" in card and "| metric | before | after |" in card  # the card the run stage rewrote
    assert "own unedited copy" in card and "g ⊙ r" in card, card
