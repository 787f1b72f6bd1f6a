"""The one specification of an edit (docs/design.md, "One edit specification").

``EditSpec`` lists every option of an edit once: its type, default, help, and the words each surface uses for it.
From it come the ``steerfold edit`` options (``cli.py``), the recipe's ``edit:`` section (``RecipeEdit``), the
conflict rules (checked for either surface, in its words), the reproduce command and the card's description of
the edit. Adding an edit option means adding one field here. No torch here.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Callable, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from steerfold.edit.kernels import LayerKernel
from steerfold.errors import BadInput
from steerfold.options import SurfaceName, Words, first_error_line, vocabulary, words_of

OutputFormat = Literal["merged", "lora", "cvec"]
EditKind = Literal["ablation", "steering", "conditional", "subspace"]
LAYER_INDEX = "layer index: 0 = embedding output, l = output of decoder block l-1"
KERNEL_HELP = ("Per-layer weight of {role} writers, multiplying --scale or --alpha: w(l) = MIN_WEIGHT + (PEAK_WEIGHT − "
               "MIN_WEIGHT)·max(0, 1 − |l − PEAK| / FALLOFF) (" + LAYER_INDEX + "). Default: 1.")
DEFAULT_MAX_SHARD_BYTES = 5 * 10**9


class EditSpec(BaseModel):
    """What an edit does and where it goes. ``kind``: ``ablation`` removes the direction (strength ``scale``);
    ``steering`` adds ``coefficient`` times the direction as stored; ``conditional`` applies
    ``w ↦ w + α r̂ (ĉ · w)`` with r the direction and c the ``condition`` file's direction; ``subspace`` removes the
    span of the file's ``basis`` (INLP's nullspace projection). Kernels scale ablation, subspace and conditional
    maps per layer index and writer."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    FROM_TRIAL: ClassVar[tuple[str, ...]] = ("direction", "scale", "attention_kernel", "mlp_kernel", "norm_preserving")

    model: Annotated[str, Words("A local checkpoint folder, a .gguf file or a Hub id.", recipe="model.path")]
    direction: Annotated[Path, Words("Direction file (.safetensors with 'direction' or 'directions').", flag="--direction",
                                     recipe="fit")]
    out: Annotated[Path, Words("Output folder (written atomically).", flag="--out", recipe="the run folder (--out)")]
    format: Annotated[OutputFormat, Words(
        "Merged checkpoint, PEFT LoRA adapter, or llama.cpp GGUF control vector (steering only; layer index l is "
        "written as direction.{l-1}).", flag="--format", recipe="export.formats")] = "merged"
    kind: Annotated[EditKind, Words("What the edit does (the command line picks it with --steer, --condition or --subspace).",
                                    recipe="edit.kind", kinds={"steering": "--steer", "conditional": "--condition",
                                                               "subspace": "--subspace"},
                                    kind_help={"subspace": "Remove the span of the direction file's basis (fit --method "
                                               "inlp: its nullspace projection; or pca with --pca-components > 1) "
                                               "instead of one direction."})] = "ablation"
    scale: Annotated[float, Words("Ablation strength λ (1 = remove the direction fully).", flag="--scale",
                                  recipe="edit.scale")] = 1.0
    coefficient: Annotated[float | None, Words(
        "Steer instead of ablating: add COEF × the direction (as stored) at each of --layers; folded into the bias of "
        "the layer's last writer, or written as a control vector. Default layers: the layer the file records.",
        flag="--steer", recipe="edit.coefficient", metavar="COEF")] = None
    condition: Annotated[Path | None, Words(
        "Conditional map instead of ablation: w ↦ w + α r̂ (ĉ · w), r = --direction, c = FILE's direction (when c is "
        "present, add r).", flag="--condition", recipe="edit.condition", metavar="FILE")] = None
    alpha: Annotated[float, Words("α of --condition.", flag="--alpha", recipe="edit.alpha")] = 1.0
    condition_category: Annotated[str | None, Words(
        "Use one harm category of a per-category --condition file (directions.NAME, at --layer).",
        flag="--condition-category", recipe="edit.condition_category", metavar="NAME")] = None
    norm_preserving: Annotated[bool, Words(
        "Ablation only, merged only: after the projection, rescale each weight column (what one input feature writes), "
        "embedding row and bias to its original norm.", flag="--norm-preserving", recipe="edit.norm_preserving")] = False
    attention_kernel: Annotated[LayerKernel | None, Words(
        KERNEL_HELP.format(role="attention"), flag="--attention-kernel", recipe="edit.attention_kernel",
        metavar="PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF")] = None
    mlp_kernel: Annotated[LayerKernel | None, Words(
        KERNEL_HELP.format(role="MLP") + " The embedding (layer index 0) follows it.", flag="--mlp-kernel",
        recipe="edit.mlp_kernel", metavar="PEAK,PEAK_WEIGHT,MIN_WEIGHT,FALLOFF")] = None
    layers: Annotated[str | None, Words(
        f"Layer indices to edit, e.g. 0-4,10 (inclusive; {LAYER_INDEX}). Default: all (steering: the layer the file "
        "records).", flag="--layers", recipe="edit.layers")] = None
    layer: Annotated[int | None, Field(ge=0), Words(
        f"Row of a 'directions' file to use ({LAYER_INDEX}). Default: the layer the file records.", flag="--layer",
        recipe="edit.layer")] = None
    embedding: Annotated[bool, Words("Leave the embedding (layer index 0) unedited.", flag="--no-embedding",
                                     recipe="edit.embedding")] = True
    tied_embedding: Annotated[Literal["untie", "shared"], Words(
        "With tied embeddings: give the output head an unedited copy, or edit the shared matrix.",
        flag="--tied-embedding", recipe="edit.tied_embedding")] = "untie"
    overwrite: Annotated[bool, Words("Replace an existing output folder.", flag="--overwrite", reproduce=False)] = False
    allow_pickle: Annotated[bool, Words("Accept pickled pytorch_model.bin weights (they can run code when loaded).",
                                        flag="--allow-pickle")] = False
    max_shard_size: Annotated[str | None, Words("Largest output shard, e.g. 5GB or 500MB (default 5GB).",
                                                flag="--max-shard-size", recipe="export.max_shard_size")] = None
    revision: Annotated[str | None, Words("Revision (branch, tag or commit) when MODEL_DIR is a Hub id.", flag="--revision",
                                          recipe="model.revision")] = None
    base_model_id: Annotated[str | None, Words(
        "Hub id to record as the base (card metadata, adapter config) when MODEL_DIR is a local folder; found by "
        "itself for a Hub id or a folder in the Hub cache.", flag="--base-model-id", recipe="model.base_model_id",
        metavar="OWNER/NAME")] = None
    from_trial: Annotated[str | None, Words(
        "The edit of a trial of steerfold tune: DIR#N (trial N of the tune in DIR) or DIR (the trial it picked). It sets "
        "--direction, --scale, the kernels and --norm-preserving.", flag="--from-trial", metavar="DIR#N",
        reproduce=False)] = None
    allow_noop: Annotated[bool, Words("Accept an edit that changes no writer measurably, or a kernel peak outside the "
                                      "model's layer indices.", flag="--allow-noop", recipe="edit.allow_noop")] = False

    @property
    def strength(self) -> float:
        """λ, the steering coefficient, or α: the number the edit's map is scaled by (a subspace is removed whole)."""
        steer = self.coefficient if self.coefficient is not None else 1.0
        return {"ablation": self.scale, "steering": steer, "conditional": self.alpha, "subspace": 1.0}[self.kind]

    def kernels(self) -> dict[str, str]:
        """The kernels given, as their command-line values, by writer role."""
        given = {"attention": self.attention_kernel, "mlp": self.mlp_kernel}
        return {role: kernel.text() for role, kernel in given.items() if kernel is not None}

    def describe(self) -> str:
        """A few words for the CLI: the strength, kernels and norm preservation."""
        text = {"ablation": "scale", "steering": "steer", "conditional": "alpha", "subspace": "subspace, scale"}[self.kind]
        text += f" {self.strength:g}"
        text += "".join(f", {role} kernel {value}" for role, value in self.kernels().items())
        return text + (", norm-preserving" if self.norm_preserving else "")

    def max_shard_bytes(self, surface: SurfaceName = "cli") -> int:
        """The largest output shard in bytes (5 GB when not given)."""
        return parse_size(self.max_shard_size, word(surface, "max_shard_size")) if self.max_shard_size else DEFAULT_MAX_SHARD_BYTES

    def check(self, surface: SurfaceName = "cli") -> None:
        """Refuse the first conflict the spec has, in the words of ``surface``; then a bad shard size."""
        vocab = vocabulary(EditSpec, surface)
        for conflict, message in CONFLICTS:
            if conflict(self):
                raise BadInput(message.format(**vocab))
        self.max_shard_bytes(surface)

    def described(self, layers: list[int], source_layer: int | None, metadata: dict[str, str], post_norm: bool,
                  details: dict) -> dict:
        """The edit as the model card and the report describe it (``layers``: the layer indices edited)."""
        described = {"kind": self.kind, "method": metadata.get("method", "given"), "scale": self.strength,
                     "layers": layers, "direction_layer": source_layer, "position": metadata.get("position"),
                     "untied_output_head": details.get("untied_output_head", False), "post_norm": post_norm,
                     "norm_preserving": self.norm_preserving, "kernels": self.kernels()}
        for key in ("gguf_tensors", "dequantized"):  # a control vector's tensors; a quantized base's written modules
            if key in details:
                described[key] = details[key]
        return described


# Specs that make no sense, as (test, message), checked in order before any file is read. A message names options
# by field ({scale}) or by the word that picks a kind ({kind_subspace}); each surface has its own words for them.
CONFLICTS: list[tuple[Callable[[EditSpec], bool], str]] = [
    (lambda s: not all(math.isfinite(v) for v in (s.scale, s.strength, s.alpha)),
     "{scale}, {coefficient} and {alpha} take finite numbers: pass e.g. {scale} 1.0"),
    (lambda s: s.kind == "steering" and s.coefficient is None,
     "a steering edit needs {coefficient} (the multiple of the direction to add)"),
    (lambda s: s.kind != "steering" and s.coefficient is not None,
     "{coefficient} is the strength of a steering edit: set {kind_steering}, or drop {coefficient}"),
    (lambda s: s.kind == "conditional" and s.condition is None, "a conditional edit needs {condition} FILE (the direction c)"),
    (lambda s: s.kind != "conditional" and s.condition is not None,
     "a condition file is for conditional edits only: set {kind_conditional}, or drop {condition}"),
    (lambda s: s.condition_category is not None and s.condition is None,
     "{condition_category} picks a category of the condition file: add {condition} FILE (from fit --method per-category)"),
    (lambda s: s.kind != "conditional" and s.alpha != 1.0,
     "{alpha} is the strength of a conditional map: add {condition} FILE or drop {alpha}"),
    (lambda s: s.kind not in ("ablation", "subspace") and s.scale != 1.0,
     "{scale} is the ablation strength: set the strength of a steering edit with {coefficient} and of a conditional "
     "one with {alpha}"),
    (lambda s: s.norm_preserving and s.kind != "ablation", "{norm_preserving} applies to ablations only: drop it, or drop {kind}"),
    (lambda s: s.kind == "subspace" and s.scale != 1.0, "{kind_subspace} removes the whole span of the basis: drop {scale}"),
    (lambda s: s.kind == "subspace" and s.layer is not None,
     "{kind_subspace} removes the file's basis (fitted at its basis_layer), not a row of its directions: drop {layer}"),
    (lambda s: s.kind == "steering" and bool(s.kernels()),
     "kernels weight the writers of an ablation or conditional map: drop {attention_kernel}/{mlp_kernel}; a steering "
     "offset is set per layer with {layers} and {coefficient}"),
]


def word(surface: SurfaceName, name: str) -> str:
    """What ``surface`` calls the field ``name``."""
    return vocabulary(EditSpec, surface)[name]


def in_recipe_words(message: str) -> str:
    """A library message, which names command-line flags, in a recipe's keys (``--scale`` → ``edit.scale``)."""
    flags = {}
    for name in EditSpec.model_fields:
        words = words_of(EditSpec, name)
        if words.flag and words.recipe:
            flags[words.flag] = f"{words.recipe}: false" if words.flag.startswith("--no-") else words.recipe
        flags.update({flag: f"{words.recipe}: {kind}" for kind, flag in words.kinds.items() if flag not in flags})
    pattern = re.compile("|".join(re.escape(flag) for flag in sorted(flags, key=len, reverse=True)) + r"(?![\w-])")
    return pattern.sub(lambda m: flags[m.group(0)], message)


def parse_spec(values: dict, surface: SurfaceName = "cli", source: str | None = None) -> EditSpec:
    """An ``EditSpec`` from the values a surface gave; a bad value is one line in that surface's words."""
    try:
        return EditSpec.model_validate(values)
    except ValidationError as exc:
        raise first_error_line(exc, vocabulary(EditSpec, surface), source) from None


def spec_from_cli(values: dict) -> EditSpec:
    """The spec of ``steerfold edit``'s options: the kind follows from which of --steer, --condition and --subspace
    is given (at most one); ``--from-trial`` gives the direction and the ablation's options of a tune's trial."""
    trial = values.get("from_trial")
    if trial is not None:
        values = _with_trial(values, trial)
    elif values.get("direction") is None:
        raise BadInput("an edit needs --direction FILE (from steerfold fit) or --from-trial DIR#N (a trial of steerfold tune)")
    kinds = words_of(EditSpec, "kind").kinds
    given = {kind: flag for kind, flag in kinds.items() if values.pop(f"kind_{kind}", None) or
             values.get(_field_of_flag(flag) or "", None) is not None}
    if len(given) > 1:
        raise BadInput(f"{' and '.join(given.values())} each name a different edit: pass one of them")
    values = {name: value for name, value in values.items() if value is not None}
    return parse_spec({**values, "kind": next(iter(given), "ablation")}, "cli")


def _with_trial(values: dict, text: str) -> dict:
    """``values`` with what trial ``text`` (DIR#N, or DIR: the trial the tune picked) sets: its direction file, scale,
    kernels and norm preservation. Giving any of those too, or another kind of edit, is a conflict."""
    from steerfold.tuning.front import from_trial, trial_direction_path
    from steerfold.tuning.space import params_of

    given = [name for name in EditSpec.FROM_TRIAL if values.get(name) is not None]
    given += [name for name in values if name.startswith("kind_") and values[name]]
    given += [name for name in ("coefficient", "condition") if values.get(name) is not None]
    if given:
        flags = ", ".join(word("cli", n) if not n.startswith("kind_") else "--" + n.removeprefix("kind_") for n in given)
        raise BadInput(f"--from-trial sets the edit of a tune's trial: drop {flags}")
    folder, trial = from_trial(text)
    path = trial_direction_path(folder, trial.number)
    if not path.is_file():
        raise BadInput(f"trial {trial.number} of {folder} has no direction file ({path}): its direction was zero, so it "
                       "edits nothing; pick another trial")
    return {**values, **params_of(trial.params).edit_values(), "direction": path}


def _field_of_flag(flag: str) -> str | None:
    return next((name for name in EditSpec.model_fields if words_of(EditSpec, name).flag == flag), None)


def recipe_section(prefix: str, name: str) -> type[BaseModel]:
    """The recipe section of the fields whose recipe key starts with ``prefix`` (``edit.``), as a strict model."""
    fields = {}
    for field_name, info in EditSpec.model_fields.items():
        key = words_of(EditSpec, field_name).recipe
        if key and key.startswith(prefix):
            annotation = str | None if info.annotation in (Path, Path | None) else info.annotation
            fields[field_name] = (annotation, info)
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True), **fields)


RecipeEdit = recipe_section("edit.", "RecipeEdit")


def reproduce_command(spec: EditSpec) -> str:
    """The command line that redoes this edit: MODEL, the required options, the word that picks the kind (--steer C,
    --condition FILE, --subspace), then every other option whose value is not its default."""
    parts = ["steerfold edit", str(spec.model)]
    kind_flag = words_of(EditSpec, "kind").kinds.get(spec.kind)
    names = sorted(EditSpec.model_fields, key=lambda n: (not EditSpec.model_fields[n].is_required(),
                                                          words_of(EditSpec, n).flag != kind_flag and n != "kind"))
    for name in names:
        info, words, value = EditSpec.model_fields[name], words_of(EditSpec, name), getattr(spec, name)
        if name == "kind":
            parts += [kind_flag] if kind_flag and _field_of_flag(kind_flag) is None else []
        elif words.flag and words.reproduce and (info.is_required() or value != info.default):
            parts += [words.flag] if isinstance(value, bool) else [words.flag, _flag_value(value)]
    return " ".join(parts)


def _flag_value(value: object) -> str:
    if isinstance(value, LayerKernel):
        return value.text()
    return f"{value:g}" if isinstance(value, float) else str(value)


def parse_size(text: str, flag: str = "--max-shard-size") -> int:
    """``5GB``, ``500MB``, ``2GiB`` or a byte count → bytes."""
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    cleaned = text.strip().upper().replace(" ", "")
    number = cleaned.rstrip("KMGTIB")
    unit = cleaned[len(number):]
    try:
        value = float(number)
    except ValueError:
        value = -1
    if unit not in units or value <= 0:
        raise BadInput(f"{flag} '{text}' is not a size: write e.g. 5GB, 500MB or 2GiB")
    return int(value * units[unit])


def parse_layers(spec: str | None, num_layers: int, flag: str = "--layers") -> list[int]:
    """Parse layer-index ranges like ``0-4,10,12-15`` (inclusive; docs/design.md layer index); None means all."""
    if spec is None or spec.strip() in ("", "all"):
        return list(range(num_layers + 1))
    layers: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            low, high = (int(x) for x in part.split("-", 1)) if "-" in part else (int(part), int(part))
        except ValueError:
            raise BadInput(f"{flag} '{spec}' is not a list of layer indices: write e.g. 0-4,10,12-15") from None
        if low > high or low < 0 or high > num_layers:
            raise BadInput(f"{flag} range '{part}' is outside 0..{num_layers} (0 = embedding output, l = output of block l-1)")
        layers.update(range(low, high + 1))
    return sorted(layers)
