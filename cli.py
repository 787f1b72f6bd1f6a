"""steerfold command line: parse, call the editor library, print. Bad input exits with code 2 and one line."""

from __future__ import annotations

import json
from pathlib import Path

import click

from editor.errors import SteerfoldError

LAYER_INDEX_HELP = "layer index: 0 = embedding output, l = output of decoder block l-1"


class UserError(click.ClickException):
    """A SteerfoldError shown as one line, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D102 - click's interface
        click.echo(f"error: {self.message}", err=True)


class SteerfoldGroup(click.Group):
    """Turn library input errors into one-line CLI errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except SteerfoldError as exc:
            raise UserError(str(exc)) from None


@click.group(cls=SteerfoldGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="steerfold")
def cli() -> None:
    """Fit residual-stream directions and fold edits along them into weights or LoRA adapters."""


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--direction", "direction", required=True, type=click.Path(path_type=Path), help="Direction file (.safetensors with 'direction' or 'directions').")
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Output folder (written atomically).")
@click.option("--format", "fmt", type=click.Choice(["merged", "lora"]), default="merged", show_default=True, help="Merged checkpoint or PEFT LoRA adapter.")
@click.option("--scale", type=float, default=1.0, show_default=True, help="Ablation strength λ (1 = remove the direction fully).")
@click.option("--layers", default=None, help=f"Layer indices to edit, e.g. 0-4,10 (inclusive; {LAYER_INDEX_HELP}). Default: all.")
@click.option("--layer", type=int, default=None, help=f"Row of a 'directions' file to use ({LAYER_INDEX_HELP}). Default: the layer the file records.")
@click.option("--no-embedding", is_flag=True, help="Leave the embedding (layer index 0) unedited.")
@click.option("--tied-embedding", type=click.Choice(["untie", "shared"]), default="untie", show_default=True, help="With tied embeddings: give the output head an unedited copy, or edit the shared matrix.")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model.bin weights (they can run code when loaded).")
def edit(model_dir: Path, direction: Path, out: Path, fmt: str, scale: float, layers: str | None, layer: int | None,
         no_embedding: bool, tied_embedding: str, overwrite: bool, allow_pickle: bool) -> None:
    """Fold the ablation of a direction into MODEL_DIR's weights (or a LoRA adapter)."""
    from editor.edit_checkpoint import EditRequest, run_edit

    summary = run_edit(EditRequest(
        model=model_dir, direction=direction, out=out, format=fmt, scale=scale, layers=layers, layer=layer,
        embedding=not no_embedding, overwrite=overwrite, allow_pickle=allow_pickle, tied_embedding=tied_embedding,
    ))
    layers_text = _ranges(summary.layers)
    click.echo(f"wrote {summary.format} {summary.out} ({summary.layout.model_type}, layer indices {layers_text}, scale {scale:g})")
    if summary.details.get("untied_output_head"):
        click.echo("note: the tied output head was given its own unedited copy of the embedding (tie_word_embeddings=false)")


@cli.command()
@click.argument("model_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--allow-pickle", is_flag=True, help="Accept pickled pytorch_model.bin weights.")
def inspect(model_dir: Path, as_json: bool, allow_pickle: bool) -> None:
    """Show MODEL_DIR's residual writers and which artifacts can carry which edit exactly."""
    from editor.arch import resolve_layout
    from editor.checkpoint import open_model_folder
    from editor.portability import carriers

    folder = open_model_folder(model_dir, allow_pickle=allow_pickle)
    layout = resolve_layout(folder.config, folder.parameter_names())
    table = carriers(layout)
    info = {
        "model_type": layout.model_type,
        "num_hidden_layers": layout.num_layers,
        "hidden_size": layout.hidden_size,
        "layer_indices": f"0..{layout.num_layers} ({LAYER_INDEX_HELP})",
        "tied_embeddings": layout.tied_embeddings,
        "residual_writers": [
            {"layer": w.layer, "module": w.module, "role": w.role, "bias": w.has_bias, "multiplier": w.multiplier}
            for w in layout.writers
        ],
        "artifacts": [c.__dict__ for c in table],
    }
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"architecture      {layout.model_type}")
    click.echo(f"layers            {layout.num_layers} blocks, layer indices {info['layer_indices']}")
    click.echo(f"hidden size       {layout.hidden_size}")
    click.echo(f"tied embeddings   {'yes' if layout.tied_embeddings else 'no'}")
    roles: dict[str, list] = {}
    for w in layout.writers:
        roles.setdefault(w.role, []).append(w)
    click.echo("residual writers")
    for role, writers in roles.items():
        example = writers[-1].module
        biases = sum(w.has_bias for w in writers)
        mult = {w.multiplier for w in writers}
        extra = f", output × {mult.pop():g}" if mult != {1.0} else ""
        click.echo(f"  {role:<10} {len(writers):>3} × {example} (bias on {biases}{extra})")
    click.echo("what each artifact can carry exactly")
    for c in table:
        click.echo(f"  {'yes' if c.exact else 'no ':<4} {c.artifact:<20} {c.edit_kind:<40} {c.note}")


def _ranges(layers: list[int]) -> str:
    """Compact ``0-4,7`` text for a sorted list of layer indices."""
    parts, start = [], None
    for i, layer in enumerate(layers):
        if start is None:
            start = layer
        if i + 1 == len(layers) or layers[i + 1] != layer + 1:
            parts.append(f"{start}" if start == layer else f"{start}-{layer}")
            start = None
    return ",".join(parts)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
