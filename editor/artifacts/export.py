"""The ``steerfold edit`` job: a model folder and a direction file in, an edited checkpoint, adapter or control
vector out. Before anything appears at the output path it says which artifacts can carry the edit exactly, and
refuses a format that cannot.

This module does not import torch when loaded: a merged checkpoint's shards start copying first (into the hidden
folder that becomes the output), and torch is imported while they do."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from editor.models.arch import ModelLayout
from editor.models.checkpoint import ModelFolder, check_checkpoint, open_model_folder, read_tensors
from editor.errors import CannotCarry, SteerfoldError
from editor.artifacts.card import CARD_OF_FORMAT, base_license, write_card
from editor.artifacts.checksums import write_checksums
from editor.artifacts.merged import (DEFAULT_MAX_SHARD_BYTES, MergedWrite, finish_merged_checkpoint, may_add_head_copy,
                                  start_merged_checkpoint, write_merged_checkpoint)
from editor.hub import BaseModel, identify_base, resolve_model
from editor.interrupts import held, load_torch
from editor.edit.kernels import LayerKernel
from editor.artifacts.outputs import open_output
from editor.artifacts.safetensors_io import parse_size

if TYPE_CHECKING:
    from editor.edit.edits import Edit, TiedEmbeddingMode
    from editor.artifacts.formats import Carrier

OutputFormat = Literal["merged", "lora", "cvec"]
EditKind = Literal["ablation", "steering", "conditional", "subspace"]
Say = Callable[[str], None]


def parse_layers(spec: str | None, num_layers: int) -> list[int]:
    """Parse layer-index ranges like ``0-4,10,12-15`` (inclusive; docs/design.md layer index); None means all."""
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
    """What ``steerfold edit`` was asked to do.

    ``kind``: ``ablation`` removes the direction (strength ``scale``); ``steering`` adds ``coefficient`` times the
    direction as stored; ``conditional`` applies ``w ↦ w + α r̂ (ĉ · w)`` with r the direction and c the
    ``condition`` file's direction; ``subspace`` removes the span of the file's ``basis`` (INLP's nullspace
    projection). Kernels scale ablation, subspace and conditional maps per layer index and writer.
    """

    model: str | Path  # a local folder or a Hub id
    direction: Path
    out: Path
    format: OutputFormat = "merged"
    kind: EditKind = "ablation"
    scale: float = 1.0
    coefficient: float = 1.0  # steering
    condition: Path | None = None  # conditional
    condition_category: str | None = None  # conditional: one category of a per-category condition file
    alpha: float = 1.0  # conditional
    norm_preserving: bool = False
    attention_kernel: LayerKernel | None = None
    mlp_kernel: LayerKernel | None = None
    layers: str | None = None
    layer: int | None = None
    embedding: bool = True
    overwrite: bool = False
    allow_pickle: bool = False
    tied_embedding: TiedEmbeddingMode = "untie"
    max_shard_size: str | None = None  # e.g. "5GB"; default 5 GB
    revision: str | None = None  # for a Hub id
    allow_noop: bool = False  # accept an edit that changes nothing measurably, or a kernel peak outside the layers
    base_model_id: str | None = None  # the Hub id to record as the base of a model given as a local folder

    @property
    def strength(self) -> float:
        """λ, the steering coefficient, or α: the number the edit's map is scaled by."""
        return {"ablation": self.scale, "steering": self.coefficient, "conditional": self.alpha, "subspace": 1.0}[self.kind]

    def kernels(self) -> dict[str, str]:
        """The kernels given, as their command-line values, by writer role."""
        given = {"attention": self.attention_kernel, "mlp": self.mlp_kernel}
        return {role: kernel.text() for role, kernel in given.items() if kernel is not None}

    def describe(self) -> str:
        """A few words for the CLI: the strength, kernels and norm preservation."""
        text = {"ablation": "scale", "steering": "steer", "conditional": "alpha", "subspace": "subspace, scale"}[self.kind]
        text += f" {self.strength:g}"  # a subspace is removed whole (scale 1)
        text += "".join(f", {role} kernel {value}" for role, value in self.kernels().items())
        return text + (", norm-preserving" if self.norm_preserving else "")


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
    described: dict = field(default_factory=dict)  # the edit as the card describes it (``card_edit``)


# Requests that make no sense, as (test, message), checked in order before the direction file is read. A message
# names options by role ({scale}, {steer}…): each surface a user types (the command line, a recipe) has its words.
CONFLICTS: list[tuple[Callable[[EditRequest], bool], str]] = [
    (lambda r: not all(math.isfinite(v) for v in (r.scale, r.coefficient, r.alpha)),
     "{scale}, {steer} and {alpha} take finite numbers: pass e.g. {scale} 1.0"),
    (lambda r: r.kind == "conditional" and r.condition is None, "a conditional edit needs {condition} FILE (the direction c)"),
    (lambda r: r.kind != "conditional" and r.condition is not None,
     "a condition file is for conditional edits only: {make_conditional}, or drop {condition}"),
    (lambda r: r.condition_category is not None and r.condition is None,
     "{condition_category} picks a category of the condition file: add {condition} FILE (from fit --method per-category)"),
    (lambda r: r.kind != "conditional" and r.alpha != 1.0, "{alpha} is the strength of a conditional map: add {condition} FILE or drop {alpha}"),
    (lambda r: r.kind not in ("ablation", "subspace") and r.scale != 1.0,
     "{scale} is the ablation strength: set the strength of a steering edit with {steer} and of a conditional one with {alpha}"),
    (lambda r: r.norm_preserving and r.kind != "ablation", "{norm_preserving} applies to ablations only: drop it, or drop {other_kinds}"),
    (lambda r: r.kind == "subspace" and r.scale != 1.0, "{subspace} removes the whole span of the basis: drop {scale}"),
    (lambda r: r.kind == "subspace" and r.layer is not None,
     "{subspace} removes the file's basis (fitted at its basis_layer), not a row of its directions: drop {layer}"),
    (lambda r: r.kind == "steering" and bool(r.kernels()),
     "kernels weight the writers of an ablation or conditional map: drop {kernels}; a steering offset is set per layer "
     "with {layers} and {steer}"),
]

# What each surface calls the options the conflicts name.
CLI_WORDS = {"scale": "--scale", "steer": "--steer", "alpha": "--alpha", "condition": "--condition",
             "condition_category": "--condition-category", "norm_preserving": "--norm-preserving", "subspace": "--subspace",
             "layer": "--layer", "layers": "--layers", "kernels": "--attention-kernel/--mlp-kernel",
             "other_kinds": "--steer/--condition/--subspace", "make_conditional": "drop --steer/--subspace"}
RECIPE_WORDS = {"scale": "edit.scale", "steer": "edit.coefficient", "alpha": "edit.alpha", "condition": "edit.condition",
                "condition_category": "edit.condition_category", "norm_preserving": "edit.norm_preserving",
                "subspace": "edit.kind: subspace", "layer": "edit.layer", "layers": "edit.layers",
                "kernels": "edit.attention_kernel/edit.mlp_kernel", "other_kinds": "edit.kind (set it to ablation)",
                "make_conditional": "set edit.kind: conditional"}


def check_request(request: EditRequest, words: dict[str, str] = CLI_WORDS) -> None:
    """Refuse the first conflict of ``CONFLICTS`` the request has, in the words of the surface the user typed."""
    for conflict, message in CONFLICTS:
        if conflict(request):
            raise SteerfoldError(message.format(**words))


# (request field, flag, default): a value equal to its default is left out of the reproduce command.
FLAGS: list[tuple[str, str, object]] = [
    ("revision", "--revision", None), ("format", "--format", "merged"), ("scale", "--scale", 1.0),
    ("condition", "--condition", None), ("condition_category", "--condition-category", None), ("alpha", "--alpha", 1.0),
    ("attention_kernel", "--attention-kernel", None),
    ("mlp_kernel", "--mlp-kernel", None), ("layers", "--layers", None), ("layer", "--layer", None),
    ("tied_embedding", "--tied-embedding", "untie"), ("base_model_id", "--base-model-id", None),
    ("max_shard_size", "--max-shard-size", None),
]
# Boolean options, as (request field, flag, the value that adds the flag).
SWITCHES: list[tuple[str, str, bool]] = [
    ("embedding", "--no-embedding", False), ("norm_preserving", "--norm-preserving", True),
    ("allow_noop", "--allow-noop", True), ("allow_pickle", "--allow-pickle", True),
]


def _flag_value(value: object) -> str:
    if isinstance(value, LayerKernel):
        return value.text()
    return f"{value:g}" if isinstance(value, float) else str(value)


def reproduce_command(request: EditRequest) -> str:
    """The command line that redoes this edit."""
    parts = ["steerfold edit", str(request.model), "--direction", str(request.direction), "--out", str(request.out)]
    if request.kind == "steering":
        parts += ["--steer", _flag_value(request.coefficient)]
    for name, flag, default in FLAGS:
        value = getattr(request, name)
        if value != default:
            parts += [flag, _flag_value(value)]
    parts += ["--subspace"] if request.kind == "subspace" else []
    parts += [flag for name, flag, adds in SWITCHES if getattr(request, name) == adds]
    return " ".join(parts)


def max_shard_bytes(request: EditRequest) -> int:
    """--max-shard-size in bytes (5 GB when not given)."""
    return parse_size(request.max_shard_size) if request.max_shard_size else DEFAULT_MAX_SHARD_BYTES


def start_writing(request: EditRequest, folder: ModelFolder, layout: ModelLayout, dest: Path) -> MergedWrite | None:
    """Start copying a merged checkpoint's shards before the edit is built, where its tensors do not depend on
    the edit (they do when the edit could add an output head tensor)."""
    if request.format != "merged" or may_add_head_copy(layout, request.tied_embedding):
        return None
    return start_merged_checkpoint(folder, layout, dest, head_copy=False, max_shard_bytes=max_shard_bytes(request))


def _write_merged(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path, request: EditRequest, base: BaseModel,
                  started: MergedWrite | None) -> dict:
    if started is not None:
        return finish_merged_checkpoint(started, edit)
    return write_merged_checkpoint(folder, layout, edit, dest, max_shard_bytes(request))


def _write_lora(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path, request: EditRequest, base: BaseModel,
                started: MergedWrite | None) -> dict:
    from editor.artifacts.lora import write_lora_adapter

    # the recorded base: its Hub id, else the path from the adapter's final folder to the base (never absolute)
    recorded = base.repo_id or os.path.relpath(folder.path.resolve(), request.out.resolve())
    return write_lora_adapter(folder, layout, edit, dest, base_model=recorded, revision=base.revision)


def _write_cvec(folder: ModelFolder, layout: ModelLayout, edit: Edit, dest: Path, request: EditRequest, base: BaseModel,
                started: MergedWrite | None) -> dict:
    from editor.artifacts.cvec import write_control_vector

    return write_control_vector(layout, edit, dest)


Writer = Callable[[ModelFolder, ModelLayout, "Edit", Path, EditRequest, BaseModel, "MergedWrite | None"], dict]
# One writer per --format, each called inside the atomic output folder (merged: with the copy already started).
WRITERS: dict[str, Writer] = {"merged": _write_merged, "lora": _write_lora, "cvec": _write_cvec}


def card_edit(request: EditRequest, edit: Edit, layout: ModelLayout, metadata: dict[str, str], source_layer: int | None,
              details: dict) -> dict:
    """The edit as the model card and the report describe it."""
    described = {"kind": request.kind, "method": metadata.get("method", "given"), "scale": request.strength,
                 "layers": edit.layers, "direction_layer": source_layer, "position": metadata.get("position"),
                 "untied_output_head": details.get("untied_output_head", False), "post_norm": layout.post_norm,
                 "norm_preserving": request.norm_preserving, "kernels": request.kernels()}
    if "gguf_tensors" in details:
        described["gguf_tensors"] = details["gguf_tensors"]
    return described


def carrier_lines(carriers: dict[str, Carrier]) -> list[str]:
    """The portability of this edit, one line per artifact, as the CLI prints it before any output appears."""
    lines = ["which artifacts can carry this edit exactly:"]
    for carrier in carriers.values():
        lines.append(f"  {'yes' if carrier.exact else 'no ':<4} {carrier.artifact:<20} {carrier.note}".rstrip())
    return lines


def run_edit(request: EditRequest, say: Say = lambda _line: None) -> EditSummary:
    """Check everything, say which artifacts can carry the edit, then write the chosen one atomically.

    The input is never modified; a format that cannot carry the edit exactly is refused before anything appears at
    the output path. A merged checkpoint's shards are copied into the hidden folder beside it while the edit is
    built (importing torch takes seconds); a refusal or an error removes that folder.
    """
    check_request(request)
    max_shard_bytes(request)  # a bad --max-shard-size is refused before the model is fetched or read
    folder = open_model_folder(resolve_model(request.model, request.revision), allow_pickle=request.allow_pickle)
    base = identify_base(request.model, folder.path, request.base_model_id, request.revision)
    needs = sum(shard.stat().st_size for shard in folder.shards) if request.format == "merged" else 0
    with open_output(request.out, "folder", [folder.path, request.direction, request.condition], request.overwrite,
                     needs_bytes=needs) as tmp:
        layout = check_checkpoint(folder)
        started = None
        try:
            started = start_writing(request, folder, layout, tmp)
            load_torch()  # while the copying runs
            from editor.edit.build import build_edit
            from editor.artifacts.formats import edit_carriers

            edit, source_layer, metadata = build_edit(request, layout)
            gains = read_tensors(folder, [w.post_norm for w in layout.writers if w.post_norm])
            carriers = edit_carriers(edit, layout, gains.__getitem__)
            for line in carrier_lines(carriers):
                say(line)
            if not carriers[request.format].exact:
                raise CannotCarry(carriers[request.format].note)
            details = WRITERS[request.format](folder, layout, edit, tmp, request, base, started)
        except BaseException:  # stop the copying before the hidden output is removed (a second signal waits)
            if started is not None:
                with held():
                    started.writer.cancel()
            raise
        described = card_edit(request, edit, layout, metadata, source_layer, details)
        write_card(tmp, CARD_OF_FORMAT[request.format], title=f"{base.label} (steerfold edit)", base_model=base.repo_id,
                   base_label=base.label, edit=described,
                   direction_metadata=metadata, license=base_license(folder.path), reproduce=reproduce_command(request),
                   rank=details.get("rank", 1))
        write_checksums(tmp, known=details.pop("digests", None))
    return EditSummary(request.out, request.format, layout, edit.layers, source_layer, details, carriers, described)
