"""The ``steerfold edit`` job: a model folder and a direction file in, an edited checkpoint or adapter out."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from editor.arch import ModelLayout, resolve_layout
from editor.checkpoint import atomic_folder, check_output_path, open_model_folder, read_tensors
from editor.directions import check_hidden_size, load_direction_file
from editor.edits import Edit, TiedEmbeddingMode, ablation_edit
from editor.errors import SteerfoldError
from editor.hub import resolve_model
from editor.export.card import base_license, write_card
from editor.export.checksums import write_checksums
from editor.export.lora import check_lora_can_carry, write_lora_adapter
from editor.export.merged import DEFAULT_MAX_SHARD_BYTES, write_merged_checkpoint
from editor.stream import parse_size

OutputFormat = Literal["merged", "lora"]


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """Parse layer-index ranges like ``0-4,10,12-15`` (inclusive; DESIGN.md layer index); None means all."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(num_layers + 1))
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                low, high = (int(x) for x in part.split("-", 1))
            else:
                low = high = int(part)
        except ValueError:
            raise SteerfoldError(f"--layers '{spec}' is not a list of layer indices: write e.g. 0-4,10,12-15") from None
        if low > high or low < 0 or high > num_layers:
            raise SteerfoldError(
                f"--layers range '{part}' is outside 0..{num_layers} (0 = embedding output, l = output of block l-1)"
            )
        layers.update(range(low, high + 1))
    return sorted(layers)


@dataclass(frozen=True)
class EditRequest:
    """What ``steerfold edit`` was asked to do."""

    model: str | Path  # a local folder or a Hub id
    direction: Path
    out: Path
    format: OutputFormat = "merged"
    scale: float = 1.0
    layers: str | None = None
    layer: int | None = None
    embedding: bool = True
    overwrite: bool = False
    allow_pickle: bool = False
    tied_embedding: TiedEmbeddingMode = "untie"
    max_shard_size: str | None = None  # e.g. "5GB"; default 5 GB
    revision: str | None = None  # for a Hub id


@dataclass
class EditSummary:
    """What was written, for the CLI and reports."""

    out: Path
    format: OutputFormat
    layout: ModelLayout
    layers: list[int]
    direction_layer: int | None
    details: dict = field(default_factory=dict)


def build_edit(request: EditRequest, layout: ModelLayout) -> tuple[Edit, int | None, dict[str, str]]:
    """Load and check the direction, then build the ablation edit the request describes."""
    if not math.isfinite(request.scale):
        raise SteerfoldError(f"--scale {request.scale} is not a finite number: pass e.g. --scale 1.0")
    direction_file = load_direction_file(request.direction)
    check_hidden_size(direction_file, layout.hidden_size, layout.num_layers, request.direction)
    vector, source_layer = direction_file.select(request.layer)
    layers = parse_layers(request.layers, layout.num_layers)
    if not request.embedding:
        layers = [layer for layer in layers if layer != 0]
    if not layers:
        raise SteerfoldError("no layer left to edit: widen --layers or drop --no-embedding")
    return ablation_edit(vector, layers, request.scale, request.tied_embedding), source_layer, direction_file.metadata


def reproduce_command(request: EditRequest) -> str:
    """The command line that redoes this edit."""
    parts = ["steerfold edit", str(request.model), "--direction", str(request.direction), "--out", str(request.out)]
    if request.revision:
        parts += ["--revision", request.revision]
    if request.format != "merged":
        parts += ["--format", request.format]
    if request.scale != 1.0:
        parts += ["--scale", f"{request.scale:g}"]
    if request.layers:
        parts += ["--layers", request.layers]
    if request.layer is not None:
        parts += ["--layer", str(request.layer)]
    if not request.embedding:
        parts.append("--no-embedding")
    if request.tied_embedding != "untie":
        parts += ["--tied-embedding", request.tied_embedding]
    return " ".join(parts)


def run_edit(request: EditRequest) -> EditSummary:
    """Check everything first, then write the artifact atomically; the input is never modified."""
    if request.max_shard_size:
        parse_size(request.max_shard_size)
    folder = open_model_folder(resolve_model(request.model, request.revision), allow_pickle=request.allow_pickle)
    check_output_path(request.out, folder.path, request.overwrite)
    layout = resolve_layout(folder.config, folder.parameter_names())
    edit, source_layer, metadata = build_edit(request, layout)
    edit.check_foldable(layout)
    gains = read_tensors(folder, [w.post_norm for w in layout.writers if w.post_norm])
    if request.format == "lora":
        check_lora_can_carry(edit, layout, gains.__getitem__)
    else:
        edit.module_maps(layout, gains.__getitem__)
    base_name = str(request.model) if not Path(str(request.model)).exists() else str(folder.path.resolve())
    with atomic_folder(request.out) as tmp:
        if request.format == "merged":
            max_bytes = parse_size(request.max_shard_size) if request.max_shard_size else DEFAULT_MAX_SHARD_BYTES
            details = write_merged_checkpoint(folder, layout, edit, tmp, max_bytes)
        else:
            details = write_lora_adapter(folder, layout, edit, tmp, base_model=base_name)
        card_edit = {"kind": "ablation", "method": metadata.get("method", "given"), "scale": request.scale,
                     "layers": edit.layers, "direction_layer": source_layer, "position": metadata.get("position"),
                     "untied_output_head": details.get("untied_output_head", False), "post_norm": layout.post_norm}
        write_card(tmp, "merged" if request.format == "merged" else "adapter", title=f"{base_name} (steerfold edit)",
                   base_model=base_name, edit=card_edit, direction_metadata=metadata, license=base_license(folder.path),
                   reproduce=reproduce_command(request), rank=details.get("rank", 1))
        write_checksums(tmp, known=details.pop("digests", None))
    return EditSummary(request.out, request.format, layout, edit.layers, source_layer, details)
