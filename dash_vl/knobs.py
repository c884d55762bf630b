"""The one table of halting knobs: every field of :class:`dash_vl.HaltingConfig` with its documentation,
default, allowed values and a parser for text, read from ``dataclasses.fields`` and the class docstring.

Every door derives from it: the CLI flags (:func:`add_arguments`), lmms-eval's ``model_args``
(:func:`from_text`), the docstrings of :func:`dash_vl.load` and :class:`dash_vl.Halting`
(:func:`documented`) and the knob table of the docs (:func:`markdown_table`). A new knob is one field
of ``HaltingConfig`` with its paragraph under ``Attributes:``.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from dash_vl.config import HaltingConfig

UNSET = "none"
"""The text that leaves an optional knob unset (``None``): ``--scope none``, ``vision_ratio=none``."""


@dataclass(frozen=True)
class Knob:
    """One field of :class:`~dash_vl.HaltingConfig`.

    Attributes:
        name: the field's name (the keyword of ``load``, ``Halting`` and lmms-eval's ``model_args``).
        default: its default value.
        doc: its paragraph of the class docstring, as plain text (RST markup removed).
        kind: ``float``, ``int``, ``bool`` (``true`` / ``false`` as text), ``"layer"`` (an int index or a float
            fraction of the depth), ``"layers"`` (a tuple of those, ``/``-separated as text, since lmms-eval's
            ``model_args`` split on commas; empty text is the empty tuple) or ``str``.
        choices: the allowed strings of a ``str`` knob; ``None`` for numbers.
        optional: whether ``None`` (unset) is allowed.
    """

    name: str
    default: Any
    doc: str
    kind: Any
    choices: tuple[str, ...] | None
    optional: bool

    @property
    def flag(self) -> str:
        """The CLI flag: ``--start-layer`` for ``start_layer``."""
        return "--" + self.name.replace("_", "-")

    def parse(self, value: Any) -> Any:
        """``value`` as the knob's type; text (``"0.4"``, ``"11"``, ``"none"``) is converted, anything else
        is returned as given (the config validates it)."""
        if self.kind == "layers" and isinstance(value, (int, float)) and not isinstance(value, bool):
            return (value,)  # lmms-eval hands "8" over as an int, "0.5" as a float
        if not isinstance(value, str):
            return value
        if self.optional and value.lower() == UNSET:
            return None
        if self.kind == "layers":
            parts = [part.strip() for part in value.split("/") if part.strip()]
            try:
                return tuple(float(part) if "." in part else int(part) for part in parts)
            except ValueError as error:
                raise ValueError(f"{self.name} must be {self.describe_kind()}, got {value!r}") from error
        if self.kind is bool:
            if value.lower() not in ("true", "false"):
                raise ValueError(f"{self.name} must be {self.describe_kind()}, got {value!r}")
            return value.lower() == "true"
        try:
            if self.kind is float:
                return float(value)
            if self.kind is int:
                return int(value)
            if self.kind == "layer":
                return float(value) if "." in value else int(value)
        except ValueError as error:
            raise ValueError(f"{self.name} must be {self.describe_kind()}, got {value!r}") from error
        return value

    def describe_kind(self) -> str:
        kinds = {
            float: "a number", int: "an integer", bool: "true or false",
            "layers": "'/'-separated layer indices or depth fractions like 0.5/0.75 (empty: none)",
            "layer": "an integer layer index or a fraction like 0.4",
        }
        text = kinds.get(self.kind, "one of " + ", ".join(self.choices or ()))
        return text + (f" or {UNSET!r}" if self.optional else "")

    def default_text(self) -> str:
        if self.default is None:
            return "unset"
        return "/".join(map(str, self.default)) if isinstance(self.default, tuple) else str(self.default)

    def help(self) -> str:
        """The CLI help: the documentation paragraph and the default (``%`` escaped for argparse)."""
        return f"{self.doc} (default: {self.default_text()})".replace("%", "%%")


def _attribute_docs(docstring: str) -> dict[str, str]:
    """The ``Attributes:`` paragraphs of a Google-style docstring, by name, as plain text."""
    section = docstring.split("Attributes:", 1)[1]
    entries = re.split(r"\n\s{8}(?=\w+: )", "\n" + section)
    docs = {}
    for entry in entries:
        if not entry.strip():
            continue
        name, _, text = entry.strip().partition(": ")
        docs[name] = plain_text(text)
    return docs


def plain_text(text: str) -> str:
    """``text`` with RST markup removed (````x```` → ``x``, ``:mod:`a.b``` → ``a.b``) and on one line."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"\1", text)
    text = text.replace("``", "").replace("*", "")
    return " ".join(text.split())


def _kind_of(annotation: Any) -> tuple[Any, tuple[str, ...] | None, bool]:
    """(kind, choices, optional) of a field's resolved type annotation."""
    arguments = typing.get_args(annotation)
    optional = type(None) in arguments
    members = tuple(argument for argument in arguments if argument is not type(None)) or (annotation,)
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        return str, tuple(typing.get_args(members[0])), optional
    if typing.get_origin(annotation) is Literal:
        return str, tuple(arguments), False
    if set(members) == {int, float}:
        return "layer", None, optional
    if len(members) == 1 and typing.get_origin(members[0]) is tuple:
        return "layers", None, optional
    if len(members) == 1 and members[0] in (bool, int, float, str):
        return members[0], None, optional
    raise TypeError(f"HaltingConfig field of type {annotation!r} has no parser in dash_vl.knobs")


def _knobs() -> tuple[Knob, ...]:
    hints = typing.get_type_hints(HaltingConfig)
    docs = _attribute_docs(HaltingConfig.__doc__ or "")
    knobs = []
    for field in dataclasses.fields(HaltingConfig):
        if field.name not in docs:
            raise TypeError(f"HaltingConfig.{field.name} has no paragraph under 'Attributes:' in its docstring")
        kind, choices, optional = _kind_of(hints[field.name])
        choices = tuple(field.metadata.get("choices", choices or ())) or None
        knobs.append(Knob(field.name, field.default, docs[field.name], kind, choices, optional))
    return tuple(knobs)


KNOBS: tuple[Knob, ...] = _knobs()
"""Every field of :class:`~dash_vl.HaltingConfig`, in its order."""

KNOB_NAMES: tuple[str, ...] = tuple(knob.name for knob in KNOBS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per knob (``--ratio``, ``--start-layer``, ...), with its type, choices, default and help."""
    group = parser.add_argument_group("halting knobs (dash_vl.HaltingConfig; every flag has its field's default)")
    for knob in KNOBS:
        add_argument(group, knob.name)


def add_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, name: str) -> None:
    """The flag of the knob ``name`` alone (``--stage-layers`` for ``stage_layers``), as :func:`add_arguments`
    adds it."""
    knob = next(knob for knob in KNOBS if knob.name == name)
    unset = (UNSET,) if knob.optional else ()
    choices = None if knob.choices is None else (*knob.choices, *((None,) if knob.optional else ()))
    metavar = None if knob.choices is None else "{" + ",".join((*knob.choices, *unset)) + "}"
    parser.add_argument(
        knob.flag, dest=knob.name, type=_argument_type(knob), default=knob.default, choices=choices, metavar=metavar,
        help=knob.help(),
    )


def _argument_type(knob: Knob) -> Callable[[str], Any]:
    """``knob.parse`` for argparse: a wrong value is a usage error that names the knob and its type."""

    def parse(text: str) -> Any:
        try:
            return knob.parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from error

    return parse


def config_from_arguments(args: argparse.Namespace) -> HaltingConfig:
    """The :class:`~dash_vl.HaltingConfig` of the flags :func:`add_arguments` added."""
    return HaltingConfig(**{name: getattr(args, name) for name in KNOB_NAMES})


def from_text(values: Mapping[str, Any]) -> dict[str, Any]:
    """The knobs among ``values`` (lmms-eval's ``model_args``: text or already-parsed numbers) parsed to
    their types; keys that are not knobs are left out."""
    by_name = {knob.name: knob for knob in KNOBS}
    return {name: by_name[name].parse(value) for name, value in values.items() if name in by_name}


def documented(function: Callable) -> Callable:
    """Replace ``{knobs}`` in ``function``'s docstring with one line per knob (name, default, summary)."""
    lines = "\n".join(f"            - ``{knob.name}`` (default ``{knob.default_text()}``): {summary(knob)}" for knob in KNOBS)
    function.__doc__ = (function.__doc__ or "").replace("{knobs}", lines.lstrip())
    return function


def summary(knob: Knob) -> str:
    """The first sentence of the knob's documentation."""
    return re.split(r"(?<=\.)\s", knob.doc, maxsplit=1)[0].rstrip(".")


def markdown_table() -> str:
    """The knob table of the docs: name, CLI flag, default, documentation."""
    rows = ["| knob (`load`, `Halting`, lmms-eval `model_args`) | CLI flag | default | meaning |", "|---|---|---|---|"]
    rows += [f"| `{knob.name}` | `{knob.flag}` | `{knob.default_text()}` | {knob.doc} |" for knob in KNOBS]
    return "\n".join(rows)
