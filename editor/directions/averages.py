"""The fit jobs that average activations: per-category directions (every layer index at one position) and persona
vectors (over responses). Both add up sums batch by batch (``steerfold.activations.statistics``): no job here holds
every prompt's activations.
"""

from __future__ import annotations

import json
from typing import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from steerfold.activations.capture import at_positions, capture_each
from steerfold.activations.statistics import RunningSums
from steerfold.directions.file import DirectionFile
from steerfold.directions.fit import VERSION, FitInputs, Fitted, provenance, prompt_hash, read_positions
from steerfold.directions.methods.categories import category_names, category_similarity, similarity_markdown
from steerfold.directions.methods.contrast import orthogonal_to
from steerfold.directions.methods.means import persona_vector, response_means
from steerfold.directions.positions import prompt_thinking
from steerfold.models.loading import placement_metadata
from steerfold.prompts import PromptRecord
from steerfold.validation.behaviour import chat_texts


def fit_per_category(inputs: FitInputs) -> Fitted:
    """Per harm category: category mean − harmless mean at every layer index, at one position; a cosine report."""
    inputs = inputs.with_batch_size()
    model, tokenizer, options = inputs.model, inputs.tokenizer, inputs.options
    layers = list(range(model.config.num_hidden_layers + 1))
    positions = read_positions(tokenizer, options, default=-1)
    categories = [r.category for r in inputs.harmful]
    category_names(categories)  # none: one error line before any forward pass
    harmful, harmless = (  # sums over the prompts, [L+1, 1, d], added batch by batch
        RunningSums(len(records), groups=groups).add_all(capture_each(
            model, tokenizer, chat_texts(tokenizer, records, options.system, prompt_thinking(options)), layers,
            at_positions(positions), options.batch_size))
        for records, groups in ((inputs.harmful, categories), (inputs.harmless, None)))
    harmless_mean = harmless.mean()[:, 0]
    directions = {name: (mean[:, 0] - harmless_mean).float() for name, mean in harmful.group_means().items()}
    overall = (harmful.mean()[:, 0] - harmless_mean).float()
    if options.orthogonalize != "none":
        harmless_mean = harmless_mean.float()
        overall = orthogonal_to(overall, harmless_mean)
        directions = {name: orthogonal_to(vectors, harmless_mean) for name, vectors in directions.items()}
    names = list(directions)
    similarity = category_similarity(directions)
    metadata = provenance(inputs, position=str(positions[0]), categories=json.dumps(names),
                           harmful_hash=prompt_hash(inputs.harmful), harmless_hash=prompt_hash(inputs.harmless))
    report = similarity_markdown(names, similarity, f"Per-category directions of {inputs.model_name or 'the model'}")
    lines = [f"per-category directions for {', '.join(names)} at position {positions[0]}, layer indices 0..{len(layers) - 1}"]
    return Fitted(DirectionFile(directions=overall, metadata=metadata, categories=directions), lines, report=report)


def fit_persona_direction(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    records: Sequence[PromptRecord],
    persona: str | None,
    against: str | None,
    max_new_tokens: int = 32,
    batch_size: int = 32,
    model_name: str = "",
) -> DirectionFile:
    """Persona vector per layer: mean activation over the persona's responses minus the other's."""
    layers = list(range(model.config.num_hidden_layers + 1))
    vectors = persona_vector(model, tokenizer, records, persona, against, layers, max_new_tokens, batch_size)
    metadata = {
        "method": "persona_vector",
        "model": model_name,
        "persona": persona or "",
        "against": against or "",
        "positions": "response tokens",
        "prompts_hash": prompt_hash(records),
        "steerfold_version": VERSION,
        **placement_metadata(model),
    }
    return DirectionFile(directions=vectors, metadata=metadata)


def fit_persona_vector(inputs: FitInputs) -> Fitted:
    """The persona vector; orthogonalised against the mean response activation on harmless prompts if asked."""
    inputs = inputs.with_batch_size()
    model, tokenizer, options = inputs.model, inputs.tokenizer, inputs.options
    file = fit_persona_direction(model, tokenizer, inputs.prompts, options.persona, options.against,
                                 options.max_new_tokens, options.batch_size, model_name=inputs.model_name)
    assert file.directions is not None
    directions = file.directions
    if options.orthogonalize != "none":
        layers = list(range(model.config.num_hidden_layers + 1))
        harmless_mean = response_means(model, tokenizer, inputs.harmless, options.against, layers, options.max_new_tokens,
                                       options.batch_size)
        directions = orthogonal_to(directions, harmless_mean)
    metadata = {**file.metadata, "options": json.dumps(options.model_dump(), sort_keys=True)}
    lines = [f"persona directions for layer indices 0..{directions.shape[0] - 1}"]
    return Fitted(DirectionFile(directions=directions, metadata=metadata), lines)
