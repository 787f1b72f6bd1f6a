"""Each artifact format as one object: whether it can carry an edit exactly (and why not), and how it writes it.

``steerfold edit`` asks every format before any output appears and refuses one that cannot carry the edit;
``steerfold inspect``'s portability table asks the same checks about a sample edit of each kind, so the table and
the refusals cannot disagree. Torch is imported only by the checks and writers themselves.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from steerfold.errors import CannotCarry, SteerfoldError

if TYPE_CHECKING:
    import torch

    from steerfold.artifacts.merged import MergedWrite
    from steerfold.edit.edits import Edit
    from steerfold.edit.spec import EditSpec
    from steerfold.hub import BaseModel
    from steerfold.models.arch import ModelLayout
    from steerfold.models.checkpoint import ModelFolder

GainOf = Callable[[str], "torch.Tensor"]


@dataclass(frozen=True)
class Carrier:
    """One (artifact, edit kind) cell: can it carry the edit exactly, and why (not)."""

    artifact: str
    edit_kind: str
    exact: bool
    note: str


@dataclass(frozen=True)
class WriteJob:
    """Everything a format's writer reads: the model, the edit, where to write, and the spec that asked for it."""

    folder: ModelFolder
    layout: ModelLayout
    edit: Edit
    dest: Path
    spec: EditSpec
    base: BaseModel
    started: MergedWrite | None = None
    say: Callable[[str], None] = lambda _line: None  # what the writer says before it writes (a size change)


class ArtifactFormat:
    """An artifact steerfold writes: ``name`` is its --format value, ``artifact`` what it is called in tables,
    ``card`` its card template."""

    name: str
    artifact: str
    card: str

    def check(self, edit: Edit, layout: ModelLayout, gain_of: GainOf | None = None) -> None:
        """Raise a SteerfoldError naming why this format cannot carry ``edit`` exactly, and what to do instead."""
        raise NotImplementedError

    def write(self, job: WriteJob) -> dict:
        """Write the artifact into ``job.dest`` (a hidden folder that becomes the output); returns its details."""
        raise NotImplementedError

    def caveats(self, layout: ModelLayout) -> str:
        """What a user should know when this format does carry an edit of this model."""
        return ""

    def refusal(self, edit: Edit, layout: ModelLayout, gain_of: GainOf | None = None) -> str | None:
        """Why this format cannot carry ``edit`` exactly, or None when it can."""
        try:
            self.check(edit, layout, gain_of)
        except SteerfoldError as exc:
            return str(exc)
        return None


class MergedCheckpoint(ArtifactFormat):
    name, artifact, card = "merged", "merged safetensors", "merged"

    def check(self, edit, layout, gain_of=None):
        from steerfold.artifacts.merged import check_merged_can_carry

        check_merged_can_carry(edit, layout, gain_of)

    def start(self, folder: ModelFolder, layout: ModelLayout, dest: Path, spec: EditSpec) -> MergedWrite | None:
        """Start copying the shards before the edit is built, where the output's tensors do not depend on the edit
        (they do when the edit could add an output head tensor, and on a quantized checkpoint, whose edited modules
        are written dequantized)."""
        from steerfold.artifacts.merged import may_add_head_copy, start_merged_checkpoint

        if may_add_head_copy(layout, spec.tied_embedding) or layout.quantized:
            return None
        return start_merged_checkpoint(folder, layout, dest, head_copy=False, max_shard_bytes=spec.max_shard_bytes())

    def write(self, job):
        from steerfold.artifacts.merged import finish_merged_checkpoint, write_merged_checkpoint

        if job.started is not None:
            return finish_merged_checkpoint(job.started, job.edit)
        return write_merged_checkpoint(job.folder, job.layout, job.edit, job.dest, job.spec.max_shard_bytes(), job.say)

    def caveats(self, layout):
        note = ("tied embeddings: the output head gets its own unedited copy by default (--tied-embedding shared edits "
                "both)" if layout.tied_embeddings else "untied embeddings")
        if layout.quantized:
            note += f"; {layout.quantized} weights: the modules the edit changes are written dequantized"
        if layout.post_norm:
            note += ("; post-norm writers: the fold removes g ⊙ r before the norm, an exact removal from the stream that "
                     "is not identical to a runtime ablation of the write")
        return note


class LoraAdapter(ArtifactFormat):
    name, artifact, card = "lora", "PEFT LoRA", "adapter"

    def check(self, edit, layout, gain_of=None):
        from steerfold.artifacts.lora import check_lora_can_carry

        check_lora_can_carry(edit, layout, gain_of)

    def write(self, job):
        from steerfold.artifacts.lora import write_lora_adapter

        # the recorded base: its Hub id, else the path from the adapter's final folder to the base (never absolute)
        recorded = job.base.repo_id or os.path.relpath(job.folder.path.resolve(), job.spec.out.resolve())
        return write_lora_adapter(job.folder, job.layout, job.edit, job.dest, base_model=recorded, revision=job.base.revision)

    def caveats(self, layout):
        note = "the embedding adapter edits the input embedding only" if layout.tied_embeddings else "uniform r, lora_alpha = r"
        if layout.embedding.weight_scale != 1.0:
            note += (f"; the embedding scales its rows by {layout.embedding.weight_scale:g}, and the runtime must scale "
                     "the embedding adapter alike (PEFT ≥ 0.18 does; check others or edit with --no-embedding)")
        return note


class ControlVector(ArtifactFormat):
    name, artifact, card = "cvec", "GGUF control vector", "cvec"

    def check(self, edit, layout, gain_of=None):
        from steerfold.artifacts.cvec import check_cvec_can_carry

        check_cvec_can_carry(edit, layout, gain_of)

    def write(self, job):
        from steerfold.artifacts.cvec import write_control_vector

        return write_control_vector(job.layout, job.edit, job.dest)

    def caveats(self, layout):
        return f"one F32 direction.N per block, added after block N: layer indices 2..{layout.num_layers} (llama.cpp)"


FORMATS: dict[str, ArtifactFormat] = {fmt.name: fmt for fmt in (MergedCheckpoint(), LoraAdapter(), ControlVector())}


def edit_carriers(edit: Edit, layout: ModelLayout, gain_of: GainOf | None = None, kind: str = "this edit") -> dict[str, Carrier]:
    """For one edit on one model: can each format carry it exactly? The same checks that refuse to write it."""
    refused = {name: fmt.refusal(edit, layout, gain_of) for name, fmt in FORMATS.items()}
    exact = [name for name, reason in refused.items() if reason is None]
    return {name: Carrier(fmt.artifact, kind, refused[name] is None,
                          fmt.caveats(layout) if refused[name] is None else with_remedy(refused[name], exact))
            for name, fmt in FORMATS.items()}


def sample_edits(layout: ModelLayout) -> dict[str, Edit]:
    """One edit of each kind the portability table has a row for, on this model's layers."""
    import torch

    from steerfold.edit.edits import ablation_edit, steering_edit
    from steerfold.edit.norm_preserving import norm_preserving_edit

    direction = torch.randn(layout.hidden_size, generator=torch.Generator().manual_seed(0))
    ablation = ablation_edit(direction, range(layout.num_layers + 1))
    return {"linear map (ablation, subspace, rank-k)": ablation,
            "constant offset (steering)": steering_edit(direction, range(min(2, layout.num_layers), layout.num_layers + 1)),
            "norm-preserving ablation": norm_preserving_edit(ablation)}


def portability_table(layout: ModelLayout, gain_of: GainOf | None = None) -> list[Carrier]:
    """The portability table of a model (``steerfold inspect``): every format's own check on a sample edit of each
    kind, with the refusal or the caveats as its note."""
    return [carrier for kind, edit in sample_edits(layout).items()
            for carrier in edit_carriers(edit, layout, gain_of, kind).values()]


def carry_or_refuse(edit: Edit, layout: ModelLayout, fmt: str, gain_of: GainOf | None, say: Callable[[str], None]) -> dict[str, Carrier]:
    """Say which formats can carry this edit, then refuse ``fmt`` if it cannot (before any output appears)."""
    carriers = edit_carriers(edit, layout, gain_of)
    say("which artifacts can carry this edit exactly:")
    for carrier in carriers.values():
        note = carrier.note if not carrier.exact else ""
        say(f"  {'yes' if carrier.exact else 'no ':<4} {carrier.artifact:<20} {note}".rstrip())
    if not carriers[fmt].exact:
        raise CannotCarry(carriers[fmt].note)
    return carriers


FORMAT_WORDS = {"merged checkpoint": "merged", "control vector": "cvec", "LoRA": "lora"}


def advised_formats(advice: str) -> set[str]:
    """The formats a piece of advice names (``--format X``, or in words)."""
    return set(re.findall(r"--format (\w+)", advice)) | {fmt for words, fmt in FORMAT_WORDS.items() if words in advice}


def with_remedy(reason: str, exact: list[str]) -> str:
    """A refusal whose advice names a format that cannot carry this edit either gets advice from this edit's own
    table instead (a check alone cannot know which of the others can carry the edit); other advice is kept."""
    cause, sep, advice = reason.rpartition(": ")
    if not sep or advised_formats(advice) <= set(exact):
        return reason
    if not exact:
        return f"{cause}: no artifact can carry this edit exactly; apply it at run time"
    return f"{cause}: use " + " or ".join(f"--format {fmt}" for fmt in exact)
