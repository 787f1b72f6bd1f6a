"""``steerfold inspect``: a model's residual writers, layer by layer, and the portability table of its edits."""

from __future__ import annotations

from steerfold.edit.spec import LAYER_INDEX


def inspect_model(model: str, revision: str | None = None, allow_pickle: bool = False) -> dict:
    """What ``inspect`` reports, as JSON-ready data: the architecture, every residual writer, every (artifact,
    edit kind) cell of the portability table (``editor.artifacts.formats.portability_table``)."""
    from steerfold.artifacts.formats import portability_table
    from steerfold.hub import resolve_model
    from steerfold.interrupts import load_torch
    from steerfold.models.checkpoint import check_checkpoint, open_model_folder, read_tensors
    from steerfold.models.quantization import quantization_of

    folder = open_model_folder(resolve_model(model, revision), allow_pickle=allow_pickle)
    layout = check_checkpoint(folder)
    load_torch()
    gains = read_tensors(folder, layout.post_norm_keys)
    return {
        "model_type": layout.model_type,
        "num_hidden_layers": layout.num_layers,
        "hidden_size": layout.hidden_size,
        "layer_indices": f"0..{layout.num_layers} ({LAYER_INDEX})",
        "tied_embeddings": layout.tied_embeddings,
        "quantization": quantization.label if (quantization := quantization_of(folder.config)) else None,
        "residual_writers": [
            {"layer": w.layer, "module": w.hook, "role": w.role, "tensors": [k for k, _ in w.tensors], "bias": w.has_bias,
             "multiplier": w.stream_scale, "post_norm": w.post_norm}
            for w in layout.writers
        ],
        "artifacts": [c.__dict__ for c in portability_table(layout, gains.__getitem__)],
    }


def inspect_lines(info: dict) -> list[str]:
    """``inspect_model``'s data as the text ``inspect`` prints: one line per writer role and per table cell."""
    lines = [f"architecture      {info['model_type']}",
             f"layers            {info['num_hidden_layers']} blocks, layer indices {info['layer_indices']}",
             f"hidden size       {info['hidden_size']}",
             f"tied embeddings   {'yes' if info['tied_embeddings'] else 'no'}"]
    if info.get("quantization"):
        lines.append(f"stored as         {info['quantization']}: a merged edit writes the modules it changes dequantized")
    lines.append("residual writers")
    roles: dict[str, list[dict]] = {}
    for writer in info["residual_writers"]:
        roles.setdefault(writer["role"], []).append(writer)
    for role, writers in roles.items():
        example = writers[-1]
        multipliers = {w["multiplier"] for w in writers}
        extra = f", output × {' or '.join(f'{m:g}' for m in sorted(multipliers))}" if multipliers != {1.0} else ""
        extra += f", post-norm {example['post_norm'].rsplit('.', 2)[-2]}" if example["post_norm"] else ""
        tensors = f", {len(example['tensors'])} tensors each" if len(example["tensors"]) > 1 else ""
        lines.append(f"  {role:<10} {len(writers):>3} × {example['module']} (bias on {sum(w['bias'] for w in writers)}{extra}{tensors})")
    lines.append("what each artifact can carry exactly")
    lines += [f"  {'yes' if c['exact'] else 'no ':<4} {c['artifact']:<20} {c['edit_kind']:<40} {c['note']}" for c in info["artifacts"]]
    return lines
