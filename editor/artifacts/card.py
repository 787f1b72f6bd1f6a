"""Model cards rendered from ``model_cards/*.md.j2`` with Jinja2, offline, from the edit and its report.

Templates: ``merged`` (a checkpoint), ``adapter`` (a PEFT LoRA), ``cvec`` (a GGUF control vector).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jinja2
import yaml

from steerfold.validation.report import before_after_rows, markdown_table

# The templates: model_cards/ beside the package in a checkout (editable install), else where pyproject's
# data-files put them when the package was installed from a wheel.
CHECKOUT_TEMPLATES = Path(__file__).resolve().parents[2] / "model_cards"
INSTALLED_TEMPLATES = Path(sys.prefix) / "share" / "steerfold" / "model_cards"
TEMPLATES = CHECKOUT_TEMPLATES if CHECKOUT_TEMPLATES.is_dir() else INSTALLED_TEMPLATES
KINDS = ("merged", "adapter", "cvec")
VERBS = {"ablation": "ablated", "steering": "added as a steering offset", "conditional": "added conditionally",
         "subspace": "removed with its whole fitted subspace"}
# The map each edit kind applies, in words (``scale`` is λ, the steering coefficient, or α).
MAP_TEXT = {
    "ablation": "the map `w ↦ (I − λ r rᵀ) w` with λ = {scale}",
    "steering": "the constant offset `w ↦ w + α v` with α = {scale}",
    "conditional": "the conditional map `w ↦ w + α r̂ (ĉ · w)` (when the condition direction c is present, add r) "
                   "with α = {scale}",
    "subspace": "the projection `w ↦ (I − Q Qᵀ) w` that removes the span of the fitted basis Q (INLP's nullspace)",
}
# tune_*: the trial of steerfold tune the edit is (its number, its point of the search space, the search)
PROVENANCE_KEYS = ("method", "model", "layer", "position", "persona", "against", "steerfold_version", "tune_trial",
                   "tune_params", "tune_search")


def base_license(base: Path) -> str | None:
    """The ``license`` of the base model's own card front matter, when it has one."""
    card = base / "README.md"
    if not card.is_file():
        return None
    text = card.read_text(errors="replace")
    if not text.startswith("---"):
        return None
    front, _, _ = text[3:].partition("\n---")
    try:
        meta = yaml.safe_load(front) or {}
    except yaml.YAMLError:
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None


def provenance(direction_metadata: dict[str, str]) -> dict[str, str]:
    """The direction's provenance worth printing: method, source model, layer, prompt-set hashes, version."""
    return {k: v for k, v in sorted(direction_metadata.items()) if k in PROVENANCE_KEYS or k.endswith("_hash")}  # file order varies


def map_text(edit: dict) -> str:
    """What the edit does to each residual write, for the card: its map, kernels and norm preservation."""
    text = MAP_TEXT[edit.get("kind", "ablation")].format(scale=edit.get("scale", 1.0))
    if edit.get("kernels"):
        kernels = ", ".join(f"{role} {value}" for role, value in edit["kernels"].items())
        text += (f", its strength multiplied at layer index l by `w(l) = min + (peak weight − min) · max(0, 1 − "
                 f"|l − peak| / fall-off)` with (peak, peak weight, min, fall-off) = {kernels} (the embedding "
                 "follows the MLP kernel)")
    if edit.get("norm_preserving"):
        text += (", after which every vector an input feature writes (each column of a writer's weight, each "
                 "embedding row, each bias) is rescaled to its original norm (norm-preserving ablation)")
    return text


def render_card(kind: str, *, title: str, base_model: str | None, edit: dict, direction_metadata: dict[str, str],
                report: dict | None = None, license: str | None = None, reproduce: str = "", rank: int = 1,
                plots: dict[str, str] | None = None, base_label: str | None = None) -> str:
    """Render one card; ``edit`` holds kind, method, scale, layers, direction_layer, position, untied_output_head.
    ``base_model`` is the base's Hub id (None: made from a local folder, then named ``base_label`` in the text and
    left out of the metadata, which the Hub reads as a repository id)."""
    if kind not in KINDS:
        raise ValueError(f"card kind must be one of {KINDS}")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
    )
    table = markdown_table(("metric", "before", "after"), before_after_rows(report)) if report else ""
    edit = {"post_norm": False, "untied_output_head": False, "dequantized": None, **edit}
    edit.setdefault("map", map_text(edit))
    edit.setdefault("verb", VERBS[edit.get("kind", "ablation")])
    return env.get_template(f"{kind}.md.j2").render(
        title=title, base_model=base_model, base_name=base_model or base_label or "the base model", edit=edit, provenance=provenance(direction_metadata), report=report,
        validation_table=table, license=license, reproduce=reproduce, rank=rank, plots=plots or {},
    )


def write_card(folder: Path, kind: str, plots_from: Path | None = None, **context) -> None:
    """Write README.md into an artifact folder, copying the report's plots beside it when given."""
    plots = {}
    if plots_from is not None and context.get("report", {}).get("plots"):
        import shutil

        shutil.copytree(plots_from / "plots", folder / "plots", dirs_exist_ok=True)
        plots = context["report"]["plots"]
    (folder / "README.md").write_text(render_card(kind, plots=plots, **context))
