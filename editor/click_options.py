"""click options generated from steerfold's specifications (``EditSpec``, ``Placement``, ``FitOptions``): the command
line is derived from the same fields as the recipe schema, so an option is written once (docs/design.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import click


def spec_options(spec, prefix: str = ""):
    """A decorator adding one option per field of ``spec`` (a pydantic model whose fields carry ``Words``: EditSpec,
    Placement) that has a flag, plus a switch for each kind no field's flag picks (--subspace). Values are checked by
    the spec; an option not given is None, so the spec's default applies."""
    from typing import get_args, get_origin

    from steerfold.options import words_of

    flags = {words_of(spec, name).flag for name in spec.model_fields} - {None}
    options = []
    for name, info in spec.model_fields.items():
        words = words_of(spec, name)
        options += [click.option(flag, f"kind_{kind}", is_flag=True, default=None, help=words.kind_help.get(kind))
                    for kind, flag in words.kinds.items() if flag not in flags]
        if not words.flag:
            continue
        filled = name in getattr(spec, "FROM_TRIAL", ())  # --from-trial may give it instead
        kwargs: dict = {"default": None, "help": words.help, "required": info.is_required() and not filled}
        if info.annotation is bool:
            kwargs.update(is_flag=True, flag_value=not info.default)
        else:
            choices = [a for a in (info.annotation, *get_args(info.annotation)) if get_origin(a) is Literal]
            kwargs["type"] = click.Choice(get_args(choices[0])) if choices else _click_type(info.annotation)
            kwargs["metavar"] = words.metavar
            if info.default is not None and not info.is_required():  # shown, not passed: None lets the spec decide
                kwargs["help"] = f"{words.help}  [default: {info.default}]"
        options.append(click.option(words.flag, prefix + name, **kwargs))

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def placement_from(options: dict, surface: str = "cli"):
    """The Placement given by the ``place_``-prefixed options (removed from ``options``)."""
    from steerfold.models.placement import parse_placement

    given = {name.removeprefix("place_"): options.pop(name) for name in list(options) if name.startswith("place_")}
    placement = parse_placement(given, surface)
    placement.check()
    return placement


def _click_type(annotation):
    """The click type of a spec field: paths, numbers, else text (kernels, sizes and devices are parsed by the spec)."""
    from typing import get_args

    kinds = set(get_args(annotation)) | {annotation}
    if Path in kinds:
        return click.Path(path_type=Path)
    return next((t for t in (int, float) if t in kinds), str)


def edit_option_flags(function):
    from steerfold.edit.spec import EditSpec

    return spec_options(EditSpec)(function)


def validate_option_flags(function):
    from steerfold.validation.options import ValidateOptions

    return spec_options(ValidateOptions)(function)


def tune_option_flags(function):
    from steerfold.tuning.options import TuneOptions

    return spec_options(TuneOptions)(function)


def placement_flags(function):
    from steerfold.models.placement import Placement

    return spec_options(Placement, prefix="place_")(function)


def _metavar(annotation) -> str:
    """How a FitOptions field's value is shown in --help: [a|b] for choices, else FLOAT, INT or TEXT."""
    from typing import Literal, get_args, get_origin

    if get_origin(annotation) is Literal:
        return "[" + "|".join(get_args(annotation)) + "]"
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) > 1:  # int or a named choice: INT|after-thinking
        return "|".join(_metavar(a).strip("[]") for a in args)
    if args:
        return _metavar(args[0])
    return {float: "FLOAT", int: "INT"}.get(annotation, "TEXT")


def fit_option_flags(function):
    """One --flag per FitOptions field (editor/directions/methods/options.py, which recipes share); values are checked there."""
    from steerfold.directions.methods.options import FitOptions

    for name, field in reversed(list(FitOptions.model_fields.items())):
        default = "" if field.default is None else f" [default: {field.default}]"
        metavar = "NAME" if name == "method" else _metavar(field.annotation)
        function = click.option(f"--{name.replace('_', '-')}", name, default=None, metavar=metavar,
                                help=f"{field.description}.{default}")(function)
    return function
