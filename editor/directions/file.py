"""The direction file: safetensors holding ``direction`` [hidden] or ``directions`` [L+1, hidden], float32.

Rows of ``directions`` use the docs/design.md layer index (0 = embedding output, l = output of block l-1).
String metadata records provenance: method, model, chosen layer, positions, prompt-set hashes, options, version.
Vectors are unnormalised: a unit direction times the mean harmful − harmless contrast along it (the size steering
uses; ablation normalises).

Two optional tensors extend the format; readers that do not know them ignore them, and every file still holds
``direction`` or ``directions``, so any file loads in any version:

- ``basis`` [k, hidden]: orthonormal rows spanning a subspace (INLP, or PCA with several components), fitted at
  metadata ``basis_layer`` and ``basis_position``; removing it is ``editor.directions.methods.inlp.subspace_edit``
  (``steerfold edit --subspace``). ``direction``/``directions`` then hold the first basis row (scaled as above):
  for INLP the classifier normal a counterfactual reflection uses.
- ``directions.<category>`` [L+1, hidden], one per harm category (method ``per_category``; metadata
  ``categories`` lists them as JSON), beside ``directions``, the all-categories difference of means.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from steerfold.errors import BadInput, SteerfoldError

FORMAT_VERSION = "1"
CATEGORY_PREFIX = "directions."


@dataclass(frozen=True)
class DirectionFile:
    """A single direction or one direction per layer index, with string metadata."""

    direction: torch.Tensor | None = None  # [hidden]
    directions: torch.Tensor | None = None  # [L+1, hidden]
    metadata: dict[str, str] = field(default_factory=dict)
    basis: torch.Tensor | None = None  # [k, hidden], orthonormal rows (subspace methods)
    categories: dict[str, torch.Tensor] = field(default_factory=dict)  # {category: [L+1, hidden]}

    @property
    def hidden_size(self) -> int:
        tensor = self.direction if self.direction is not None else self.directions
        assert tensor is not None
        return int(tensor.shape[-1])

    def recorded_layer(self) -> int | None:
        """The layer index the file's metadata records as chosen, if any."""
        chosen = self.metadata.get("layer")
        if chosen in (None, ""):
            return None
        try:
            return int(chosen)
        except ValueError:
            raise BadInput(f"the direction file records layer '{chosen}', which is not a layer index: "
                                 "re-fit it, or pass --layer N") from None

    def select(self, layer: int | None) -> tuple[torch.Tensor, int | None]:
        """The vector to edit with and the layer it came from (``layer`` picks a row of ``directions``)."""
        if self.direction is not None:
            if layer is not None:
                raise BadInput(
                    "--layer picks a row of a 'directions' file, but this file holds a single 'direction': drop --layer"
                )
            return self.direction, self.recorded_layer()
        assert self.directions is not None
        if layer is None:
            layer = self.recorded_layer()
            if layer is None:
                raise BadInput(
                    "the file holds per-layer 'directions' and records no chosen layer: pass --layer N "
                    "(layer index: 0 = embedding output, N = output of block N-1)"
                )
        rows = self.directions.shape[0]
        if not 0 <= layer < rows:
            raise BadInput(f"--layer {layer} is out of range: the file has rows 0..{rows - 1}")
        return self.directions[layer], layer


def _check_finite_nonzero(name: str, tensor: torch.Tensor, path: Path) -> None:
    if not torch.isfinite(tensor).all():
        raise BadInput(f"'{name}' in {path} contains NaN or infinite values: re-fit the direction")
    norms = tensor.reshape(-1, tensor.shape[-1]).norm(dim=-1)
    if (norms == 0).all() if tensor.dim() == 2 else (norms == 0).any():
        raise BadInput(f"'{name}' in {path} is all zeros: re-fit the direction (no contrast was found)")


def load_direction_file(path: str | Path) -> DirectionFile:
    """Read and check a direction file; every problem is one SteerfoldError line."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"direction file {path} does not exist: pass the .safetensors written by 'steerfold fit'")
    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
            metadata = dict(handle.metadata() or {})
            tensors = {k: handle.get_tensor(k) for k in keys & {"direction", "directions"}}
            extensions = {k: handle.get_tensor(k) for k in keys if k == "basis" or k.startswith(CATEGORY_PREFIX)}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BadInput(f"{path} is not a readable safetensors direction file ({first}): pass the file written by 'steerfold fit'") from None
    if not tensors:
        raise BadInput(
            f"{path} has neither a 'direction' nor a 'directions' tensor (found: {', '.join(sorted(keys)) or 'none'}): "
            "pass a direction file as described in the README"
        )
    if len(tensors) == 2:
        raise BadInput(f"{path} holds both 'direction' and 'directions': keep one of them")
    name, tensor = next(iter(tensors.items()))
    expected_dims = 1 if name == "direction" else 2
    if tensor.dim() != expected_dims:
        raise BadInput(
            f"'{name}' in {path} has shape {list(tensor.shape)}; expected "
            + ("[hidden]" if expected_dims == 1 else "[num_hidden_layers + 1, hidden]")
        )
    if tensor.numel() == 0:
        raise BadInput(f"'{name}' in {path} is empty (shape {list(tensor.shape)}): re-fit the direction")
    tensor = tensor.to(torch.float32)
    _check_finite_nonzero(name, tensor, path)
    basis, categories = _read_extensions(extensions, tensor, path)
    return DirectionFile(**{name: tensor}, metadata=metadata, basis=basis, categories=categories)


def _read_extensions(
    extensions: dict[str, torch.Tensor], main: torch.Tensor, path: Path
) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
    """Check the optional ``basis`` and ``directions.<category>`` tensors against the main one."""
    hidden = main.shape[-1]
    basis = extensions.pop("basis", None)
    if basis is not None:
        basis = basis.to(torch.float32)
        if basis.dim() != 2 or basis.shape[1] != hidden or basis.shape[0] == 0:
            raise BadInput(f"'basis' in {path} has shape {list(basis.shape)}; expected [k, {hidden}] with k ≥ 1")
        if not torch.isfinite(basis).all():
            raise BadInput(f"'basis' in {path} contains NaN or infinite values: re-fit it")
        gram = basis @ basis.T
        if (gram - torch.eye(len(basis))).abs().max() > 1e-3:
            raise BadInput(f"the rows of 'basis' in {path} are not orthonormal: re-fit it")
    categories = {}
    for key in sorted(extensions):
        tensor = extensions[key].to(torch.float32)
        if tensor.shape != main.shape or not torch.isfinite(tensor).all():
            raise BadInput(f"'{key}' in {path} must be finite with the main tensor's shape {list(main.shape)}: re-fit it")
        categories[key.removeprefix(CATEGORY_PREFIX)] = tensor
    return basis, categories


def save_direction_file(path: str | Path, file: DirectionFile) -> None:
    """Write a direction file (float32, metadata as strings)."""
    tensors = {}
    if file.direction is not None:
        tensors["direction"] = file.direction.detach().to(torch.float32).contiguous()
    if file.directions is not None:
        tensors["directions"] = file.directions.detach().to(torch.float32).contiguous()
    if file.basis is not None:
        tensors["basis"] = file.basis.detach().to(torch.float32).contiguous()
    for category, tensor in file.categories.items():
        tensors[CATEGORY_PREFIX + category] = tensor.detach().to(torch.float32).contiguous()
    metadata = {"format_version": FORMAT_VERSION, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in file.metadata.items()}}
    save_file(tensors, str(path), metadata=metadata)


def check_hidden_size(file: DirectionFile, hidden_size: int, num_layers: int, path: str | Path) -> None:
    """Refuse a direction file that was fitted on a model of another shape."""
    if file.hidden_size != hidden_size:
        raise BadInput(
            f"direction in {path} has {file.hidden_size} values but the model's hidden size is {hidden_size}: "
            "use a direction fitted on this model"
        )
    if file.directions is not None and file.directions.shape[0] != num_layers + 1:
        raise BadInput(
            f"'directions' in {path} has {file.directions.shape[0]} rows but the model has {num_layers + 1} "
            "layer indices (num_hidden_layers + 1): use directions fitted on this model"
        )


def is_direction_file(path: Path) -> bool:
    """Whether ``path`` is a direction file steerfold wrote (what ``fit --overwrite`` may replace)."""
    from steerfold.artifacts.safetensors_io import read_header

    try:
        entries, metadata = read_header(Path(path))
    except SteerfoldError:
        return False
    names = {entry.name for entry in entries}
    return "format_version" in metadata and bool(names & {"direction", "directions"})
