"""Memory-bounded fitting: sums added batch by batch give what the in-memory activations give (on the organism, for
every method that streams, with the same selected candidate), capture batches by token length and returns the
prompts' order, and the batch size follows the free memory when none is given."""

from __future__ import annotations

import dataclasses
from functools import partial

import pytest
import torch

from steerfold.activations.batching import LARGEST, RowShape, available_ram, batch_size_for, free_memory
from steerfold.activations.capture import at_positions, capture, capture_each
from steerfold.activations.statistics import RunningSums
from steerfold.directions import candidates
from steerfold.directions.candidates import candidate_vectors, streams
from steerfold.directions.fit import FitInputs
from steerfold.directions.methods.categories import category_directions
from steerfold.directions.methods.estimators import mean_difference, paired_pca, ridge_direction
from steerfold.directions.methods.options import FitOptions
from steerfold.directions.selection import SelectionSettings, choose, score_candidates
from steerfold.models.loading import load_model, load_tokenizer
from steerfold.research.organism import SHIPPED_CHECKPOINT, load_split
from steerfold.validation.behaviour import chat_texts


@pytest.fixture(scope="module")
def organism():
    model, tokenizer = load_model(SHIPPED_CHECKPOINT), load_tokenizer(SHIPPED_CHECKPOINT)
    records = {side: load_split(side, "train")[:24] for side in ("harmful", "harmless")}
    texts = tuple(chat_texts(tokenizer, records[side]) for side in ("harmful", "harmless"))
    return model, tokenizer, records, texts


def _close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal within ``tol`` of the larger norm of each row (the last dimension), rows that are zero up to float
    rounding (the embedding of a template token is the same on both sides) within 1e-6 of the largest row."""
    scale = torch.maximum(a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True))
    return bool(((a - b).norm(dim=-1, keepdim=True) <= tol * scale + 1e-6 * scale.max()).all())


WEIGHTS = (torch.linspace(0.2, 1.0, 24), torch.linspace(1.0, 0.1, 24))
STREAMING = {
    "diff_in_means": (mean_difference, None, False),
    "diff_in_means_orthogonal": (mean_difference, None, True),
    "ridge": (partial(ridge_direction, ridge_lambda=0.5), None, False),
    "ridge_weighted_orthogonal": (ridge_direction, WEIGHTS, True),
}


@pytest.mark.parametrize("case", STREAMING, ids=list(STREAMING))
def test_streamed_sums_give_the_in_memory_candidates(case, organism, monkeypatch):
    model, tokenizer, _, texts = organism
    estimator, weights, orthogonal = STREAMING[case]
    fit = partial(candidate_vectors, model, tokenizer, texts, [0, 2, 4], [-2, -1], estimator, weights, orthogonal, batch_size=5)
    in_memory, _ = fit(stream=False)
    monkeypatch.setattr(candidates, "capture", lambda *a, **k: pytest.fail("streaming held every prompt's rows"))
    streamed, _ = fit(stream=True)
    assert in_memory.shape == streamed.shape == (2, 3, 128)
    assert in_memory[:, 1:].norm(dim=-1).min() > 0 and _close(streamed, in_memory)


def test_methods_that_read_rows_do_not_stream_and_ridge_streams_when_sums_are_smaller():
    assert streams("means", 10, 4096) and not streams("rows", 10**6, 8)
    assert not streams("scatter", 256, 128) and streams("scatter", 257, 128)
    assert candidates.reads(partial(paired_pca, components=2)) == "rows"
    assert candidates.reads(partial(ridge_direction, ridge_lambda=2.0)) == "scatter"


def test_the_selection_chooses_the_same_candidate_from_streamed_sums(organism):
    model, tokenizer, _, texts = organism
    val = [load_split(side, "val")[:6] for side in ("harmful", "harmless")]
    positions, layers = [-2, -1], list(range(5))
    chosen = []
    for stream in (False, True):
        vectors, _ = candidate_vectors(model, tokenizer, texts, layers, positions, mean_difference, stream=stream)
        table, baseline = score_candidates(model, tokenizer, vectors, positions, layers, *val, SelectionSettings())
        best = choose(table, 4, SelectionSettings(), baseline["harmless_refusal_score"])
        chosen.append((best.position, best.layer, round(best.bypass, 5), round(best.kl, 5)))
    assert chosen[0] == chosen[1]


def test_per_category_streams_what_the_activations_give(organism, monkeypatch):
    from steerfold.directions import averages

    model, tokenizer, records, texts = organism
    inputs = FitInputs(model, tokenizer, FitOptions(method="per_category", batch_size=7), records["harmful"], records["harmless"])
    fitted = averages.fit_per_category(inputs)
    layers = list(range(5))
    harmful, harmless = (capture(model, tokenizer, side, layers, at_positions([-1]))[:, :, 0] for side in texts)
    expected = category_directions(harmful, [r.category for r in records["harmful"]], harmless)
    assert list(fitted.file.categories) == list(expected)
    for name, vectors in expected.items():
        assert _close(fitted.file.categories[name], vectors)
    assert _close(fitted.file.directions, harmful.mean(dim=0) - harmless.mean(dim=0))


def test_running_sums_match_direct_sums_in_any_batch_order():
    torch.manual_seed(0)
    x, w = torch.randn(11, 2, 3, 5) + 4, torch.rand(11) + 0.1
    groups = ["a", None, "b", "a", "b", "b", None, "a", "a", "b", "a"]
    scatter = torch.zeros(2, 3, 5, 5, dtype=torch.float64)
    sums = RunningSums(11, w, groups, scatter)
    order = torch.randperm(11).tolist()
    for start in (0, 4, 5, 9):
        rows = order[start: {0: 4, 4: 5, 5: 9, 9: 11}[start]]
        sums.add(x[rows], rows)
    x64, w64 = x.double(), w.double()
    assert torch.allclose(sums.mean(), x64.mean(dim=0))
    assert torch.allclose(sums.weighted_mean(), torch.tensordot(w64, x64, 1) / w64.sum())
    assert torch.allclose(sums.group_means()["b"], x64[[2, 4, 5, 9]].mean(dim=0))
    scaled = w64 * 11 / w64.sum()
    assert torch.allclose(scatter[1, 2], (x64[:, 1, 2].T * scaled) @ x64[:, 1, 2])
    with pytest.raises(ValueError, match="sums of 11 prompts, expected 12"):
        RunningSums(12).add_all([(range(11), x)]).mean()


def test_capture_batches_prompts_by_length_and_returns_their_order(organism):
    model, tokenizer, _, texts = organism
    texts = list(texts[0][:9])
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert len(set(lengths)) > 3 and lengths != sorted(lengths)
    batches = list(capture_each(model, tokenizer, texts, [2], at_positions([-1]), batch_size=4))
    order = [row for rows, _ in batches for row in rows]
    assert sorted(order) == list(range(9)) and [lengths[i] for i in order] == sorted(lengths)
    whole = capture(model, tokenizer, texts, [2], at_positions([-1]), batch_size=4)
    for i, text in enumerate(texts):
        alone = capture(model, tokenizer, [text], [2], at_positions([-1]), batch_size=1)
        assert torch.allclose(whole[i], alone[0], atol=1e-4)


def test_the_batch_size_is_the_largest_power_of_two_that_fits_half_the_free_memory():
    assert batch_size_for(10_000, 100) == LARGEST == 32
    assert batch_size_for(2_000, 100) == 8  # 10 rows fit in half: 8
    assert batch_size_for(150, 100) == 1 and batch_size_for(0, 100) == 1
    assert batch_size_for(None, 100) == LARGEST and batch_size_for(10**9, 1, largest=64) == 64
    small = RowShape(hidden=896, intermediate=4864, heads=14, vocab=151936, layers=25, positions=5, tokens=100, dtype_bytes=4)
    assert dataclasses.replace(small, tokens=200).bytes() > small.bytes() > dataclasses.replace(small, dtype_bytes=2).bytes()
    assert 5e6 < small.bytes() < 2e7  # about 9 MB a row for Qwen2.5-0.5B at 100 tokens in float32


def test_free_memory_reads_meminfo_and_skips_disk_offloaded_weights(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  1000 kB\nMemAvailable:   12000000 kB\n")
    assert available_ram(meminfo) == 12000000 * 1024
    meminfo.write_text("MemTotal: 1 kB\n")  # no MemAvailable: the free pages, from os.sysconf
    assert available_ram(meminfo) is None or available_ram(meminfo) > 0
    assert free_memory({torch.device("meta")}) is None
    assert free_memory({torch.device("cpu")}) == available_ram()


def test_a_fit_without_batch_size_takes_one_from_free_memory(organism, monkeypatch):
    from steerfold.activations import batching

    model, tokenizer, records, _ = organism
    inputs = FitInputs(model, tokenizer, FitOptions(), records["harmful"], records["harmless"])
    assert FitOptions().batch_size is None
    sizes = {}
    for free in (0, 10**7, 10**12):
        monkeypatch.setattr(batching, "free_memory", lambda _devices, free=free: free)
        sizes[free] = inputs.with_batch_size().options.batch_size
    assert sizes[0] == 1 and 1 < sizes[10**7] < 32 and sizes[10**12] == 32
    given = dataclasses.replace(inputs, options=FitOptions(batch_size=3))
    assert given.with_batch_size() is given
