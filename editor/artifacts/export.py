"""The ``steerfold edit`` job: a model folder and a direction file in, an edited checkpoint, adapter or control
vector out. Before anything appears at the output path it says which artifacts can carry the edit exactly, and
refuses a format that cannot.

This module does not import torch when loaded: a merged checkpoint's shards start copying first (into the hidden
folder that becomes the output), and torch is imported while they do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from steerfold.artifacts.card import base_license, write_card
from steerfold.artifacts.checksums import write_checksums
from steerfold.artifacts.dequantized import merged_size_bound
from steerfold.artifacts.formats import FORMATS, MergedCheckpoint, WriteJob
from steerfold.artifacts.outputs import open_output
from steerfold.edit.spec import EditSpec, OutputFormat, reproduce_command
from steerfold.hub import identify_base, resolve_model
from steerfold.interrupts import held, load_torch
from steerfold.models.arch import ModelLayout
from steerfold.models.checkpoint import check_checkpoint, open_model_folder, read_tensors

if TYPE_CHECKING:
    from steerfold.artifacts.formats import Carrier

Say = Callable[[str], None]


@dataclass
class EditSummary:
    """What was written, for the CLI and reports."""

    out: Path
    format: OutputFormat
    layout: ModelLayout
    layers: list[int]
    direction_layer: int | None
    details: dict = field(default_factory=dict)
    carriers: dict[str, Carrier] = field(default_factory=dict)
    described: dict = field(default_factory=dict)  # the edit as the card describes it (``EditSpec.described``)


def run_edit(spec: EditSpec, say: Say = lambda _line: None) -> EditSummary:
    """Check everything, say which artifacts can carry the edit, then write the chosen one atomically.

    The input is never modified; a format that cannot carry the edit exactly is refused before anything appears at
    the output path. A merged checkpoint's shards are copied into the hidden folder beside it while the edit is
    built (importing torch takes seconds); a refusal or an error removes that folder.
    """
    spec.check()  # conflicts and a bad --max-shard-size, before the model is fetched or read
    fmt = FORMATS[spec.format]
    folder = open_model_folder(resolve_model(spec.model, spec.revision), allow_pickle=spec.allow_pickle)
    base = identify_base(spec.model, folder.path, spec.base_model_id, spec.revision)
    needs = merged_size_bound(folder) if spec.format == "merged" else 0  # refuses a quantization it cannot edit
    with open_output(spec.out, "folder", [folder.path, spec.direction, spec.condition], spec.overwrite,
                     needs_bytes=needs) as tmp:
        layout = check_checkpoint(folder)
        started = None
        try:
            started = fmt.start(folder, layout, tmp, spec) if isinstance(fmt, MergedCheckpoint) else None
            load_torch()  # while the copying runs
            from steerfold.artifacts.formats import carry_or_refuse
            from steerfold.edit.build import build_edit

            edit, source_layer, metadata = build_edit(spec, layout)
            gains = read_tensors(folder, layout.post_norm_keys)
            carriers = carry_or_refuse(edit, layout, spec.format, gains.__getitem__, say)
            details = fmt.write(WriteJob(folder, layout, edit, tmp, spec, base, started, say))
        except BaseException:  # stop the copying before the hidden output is removed (a second signal waits)
            if started is not None:
                with held():
                    started.writer.cancel()
            raise
        described = spec.described(edit.layers, source_layer, metadata, layout.post_norm, details)
        write_card(tmp, fmt.card, title=f"{base.label} (steerfold edit)", base_model=base.repo_id, base_label=base.label,
                   edit=described, direction_metadata=metadata, license=base_license(folder.path),
                   reproduce=reproduce_command(spec), rank=details.get("rank", 1))
        write_checksums(tmp, known=details.pop("digests", None))
    return EditSummary(spec.out, spec.format, layout, edit.layers, source_layer, details, carriers, described)
