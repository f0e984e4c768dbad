"""One path from the command line to a frozen config dataclass.

Every launcher (``train_atari.py``, ``train_images.py``, ``permuted_mnist.py``,
``sweep.py``, ``minatar_results.py``, the benchmarks) turns text into config
fields through the functions here, so that a value means the same thing
wherever it is written: as its own flag (``--lr=3e-4``), as a ``--set``
override (``--set=lr=3e-4``) or in a sweep grid (``--grid='lr=1e-4,3e-4'``).

Text syntax by field type:

* ``bool``: ``1/true/yes`` or ``0/false/no`` (any case);
* ``int``: ``12000`` or ``1.2e4`` (a float that is a whole number);
* ``float``, ``str``: as written;
* ``tuple[str, ...]``: comma-separated, ``Pong,Breakout`` (empty: ``()``);
* ``tuple[int, int, int]`` (a shape): comma-separated, ``28,28,1``;
* ``tuple[tuple[int, int, int], ...]`` (a convolution trunk): the trunk
  syntax every network uses, ``features:kernel:stride`` comma-separated,
  ``64:5:2,128:3:2``.

Flags are defined with default ``None``: an unset flag keeps the value of
the base config (a preset), and :func:`config_from_flags` applies only the
flags that were given. Help texts come from the dataclass's ``Attributes:``
docstring section where it has one.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import typing
from typing import Any, Mapping, Sequence, TypeVar

from absl import flags

C = TypeVar("C")

_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")


def field_types(cls: type) -> dict[str, Any]:
    """``{field name: resolved type}`` of a dataclass, in field order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def parse_value(tp: Any, text: str) -> Any:
    """``text`` read as a value of type ``tp`` (module docstring for the syntax).

    Raises:
      ValueError: the text is not a value of that type, or the type is not
        one a config field may have.
    """
    text = text.strip()
    if tp is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected a bool (true/false/1/0), got {text!r}")
    if tp is int:
        try:
            return int(text)
        except ValueError:
            value = float(text)  # raises for non-numbers
            if not value.is_integer():
                raise ValueError(f"expected an integer, got {text!r}") from None
            return int(value)
    if tp is float:
        return float(text)
    if tp is str:
        return text
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            inner = args[0]
            if typing.get_origin(inner) is tuple:  # a trunk: features:kernel:stride,...
                return tuple(_parse_fixed(typing.get_args(inner), part, ":") for part in _split(text, ","))
            return tuple(parse_value(inner, part) for part in _split(text, ","))
        return _parse_fixed(args, text, ",")
    raise ValueError(f"cannot read a config field of type {tp}")


def _split(text: str, sep: str) -> list[str]:
    return [p.strip() for p in text.split(sep) if p.strip()]


def _parse_fixed(args: tuple, text: str, sep: str) -> tuple:
    parts = _split(text, sep)
    if len(parts) != len(args):
        raise ValueError(f"expected {len(args)} {sep!r}-separated values, got {text!r}")
    return tuple(parse_value(t, p) for t, p in zip(args, parts))


def format_value(value: Any) -> str:
    """The text :func:`parse_value` reads back as ``value`` (flag defaults, help)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        if value and all(isinstance(v, tuple) for v in value):
            return ",".join(":".join(str(x) for x in v) for v in value)
        return ",".join(str(v) for v in value)
    return str(value)


def parse_field(cls: type, name: str, text: str) -> Any:
    """``text`` read as field ``name`` of dataclass ``cls``; ValueError names the field."""
    types = field_types(cls)
    if name not in types:
        raise ValueError(f"{cls.__name__} has no field {name!r}")
    try:
        return parse_value(types[name], text)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def apply_overrides(config: C, items: Sequence[str]) -> C:
    """``config`` with ``key=value`` items (``--set`` flags) applied, each read as its field's type.

    Raises:
      ValueError: an item without ``=``, a field the config does not have,
        or a value that is not of the field's type.
    """
    kw = {}
    for item in join_list_items(items):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set: expected key=value, got {item!r}")
        kw[key.strip()] = parse_field(type(config), key.strip(), value)
    return dataclasses.replace(config, **kw)


def join_list_items(items: Sequence[str]) -> list[str]:
    """Re-joins ``key=value`` items that a comma-separated list flag split apart.

    ``--set=games=Pong,Breakout,lr=1e-4`` reaches the program as
    ``["games=Pong", "Breakout", "lr=1e-4"]``; an item without ``=`` belongs
    to the value before it: ``["games=Pong,Breakout", "lr=1e-4"]``.
    """
    out: list[str] = []
    for item in items:
        if "=" not in item and out:
            out[-1] = f"{out[-1]},{item}"
        else:
            out.append(item)
    return out


def _caller_module() -> str:
    """The module that called the caller of this function, named as absl files its flags
    (a script's own flags go under its path), so that ``--help`` lists them under the launcher."""
    name = sys._getframe(2).f_globals.get("__name__", "__main__")
    return sys.argv[0] if name == "__main__" else name


def define_set_flag(cls: type, flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """``--set=key=value,...``: overrides of any field of ``cls`` (read by :func:`apply_overrides`)."""
    flags.DEFINE_list("set", [], f"{cls.__name__} overrides, key=value comma-separated (tuple values keep their "
                      "commas: games=Pong,Breakout,lr=1e-4).", flag_values=flag_values, module_name=_caller_module())


def field_help(cls: type) -> dict[str, str]:
    """Per-field help from the class docstring's ``Attributes:`` section.

    An entry ``name: text`` (or ``a, b / c: text`` for several fields) with
    continuation lines indented deeper. Fields without an entry are absent.
    """
    doc = cls.__doc__ or ""
    lines = doc.expandtabs().splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() == "Attributes:")
    except StopIteration:
        return {}
    out: dict[str, str] = {}
    names: list[str] = []
    indent = None
    for ln in lines[start + 1:]:
        if not ln.strip():
            continue
        depth = len(ln) - len(ln.lstrip())
        if indent is None:
            indent = depth
        if depth < indent:
            break
        m = re.match(r"([\w ,/]+):\s*(.*)", ln.strip()) if depth == indent else None
        if m:
            names = [n for n in re.split(r"[\s,/]+", m.group(1)) if n]
            for n in names:
                out[n] = m.group(2)
        else:
            for n in names:
                out[n] = f"{out[n]} {ln.strip()}".strip()
    return out


def define_flags(cls: type, base: Any = None, flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None, base_label: str = "default") -> None:
    """One absl flag per field of ``cls`` (same name), each with default ``None``.

    Bools are ``--name/--noname``; ints and floats are typed flags; every
    other type is a string flag read by :func:`parse_value`. ``base`` (an
    instance, e.g. the default preset) only shows its values in the help,
    as ``[base_label: value]``.
    The flags belong to ``module_name`` (default: the calling module, so that
    ``--help`` lists them under the launcher).
    """
    module_name = module_name or _caller_module()
    helps = field_help(cls)
    for name, tp in field_types(cls).items():
        text = helps.get(name, f"{cls.__name__}.{name}.")
        if base is not None:
            text = f"{text} [{base_label}: {format_value(getattr(base, name))}]"
        kw = dict(flag_values=flag_values, module_name=module_name)
        if tp is bool:
            flags.DEFINE_bool(name, None, text, **kw)
        elif tp is int:
            flags.DEFINE_integer(name, None, text, **kw)
        elif tp is float:
            flags.DEFINE_float(name, None, text, **kw)
        else:
            flags.DEFINE_string(name, None, text, **kw)


def config_from_flags(base: C, flag_values: flags.FlagValues = flags.FLAGS) -> C:
    """``base`` with every flag of :func:`define_flags` that was given applied.

    Raises:
      ValueError: a string flag's text is not a value of its field's type,
        or the config's own checks reject the result.
    """
    kw = {}
    for name, tp in field_types(type(base)).items():
        value = flag_values[name].value
        if value is None:
            continue
        if isinstance(value, str) and tp is not str:
            try:
                value = parse_value(tp, value)
            except ValueError as e:
                raise ValueError(f"--{name}: {e}") from None
        kw[name] = value
    return dataclasses.replace(base, **kw)


def parse_grid(spec: str, types: Mapping[str, Any]) -> dict[str, tuple]:
    """``"lr=1e-4,3e-4;eps_end=0.01"`` -> ``{"lr": (1e-4, 3e-4), "eps_end": (0.01,)}``.

    Each value is read as ``types[name]``; the grid may name only keys of
    ``types``. Raises ValueError for a malformed entry, an unknown name or an
    empty value list.
    """
    grid: dict[str, tuple] = {}
    for part in _split(spec, ";"):
        name, sep, values = part.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"grid entry {part!r} must look like name=v1,v2")
        if name not in types:
            raise ValueError(f"cannot sweep {name!r}; sweepable: {sorted(types)}")
        try:
            grid[name] = tuple(parse_value(types[name], v) for v in _split(values, ","))
        except ValueError as e:
            raise ValueError(f"grid entry {part!r}: {e}") from None
        if not grid[name]:
            raise ValueError(f"grid entry {part!r} has no values")
    return grid
