"""One typed configuration: the command line, a TOML file and ``VITA_*`` environment variables, all generated
from the option dataclasses of :class:`server.options.ServerOptions` (and the engine's, nested in it).

* **Names.** An option's name is its field name behind the prefixes of the groups it sits in
  (``vad_threshold``, ``speech_streaming_first_chunk_codes``), or the ``name`` in the field's metadata. The same
  name is the flag (``--vad_threshold`` or ``--vad-threshold``), the TOML key (flat: ``vad_threshold = 0.5``)
  and the environment variable (``VITA_VAD_THRESHOLD``).
* **Help and defaults.** The field's ``help`` metadata, else its attribute docstring; the default is the
  dataclass's. Nothing is written twice.
* **Precedence.** Command line > environment > config file > defaults. ``access_token`` and
  ``access_token_file`` exclude each other: one set at a higher level drops the other from lower ones.
* **Field metadata.** ``help``, ``name`` (the full option name), ``group`` / ``prefix`` (on a nested
  options field), ``secret`` (masked by ``--print-config``), ``excludes`` (see above), ``config: False``
  (not an option: filled in by the program).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import math
import os
import textwrap
import tomllib
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal

ENV_PREFIX = "VITA_"
MASK = "(set; masked)"


class ConfigError(ValueError):
    """A configuration value, key or file that cannot be used; the message names the key and where it came from."""


@dataclass(frozen=True)
class Option:
    """One leaf option: where it sits in the options tree and how its values are read."""

    name: str
    path: tuple[str, ...]
    """Attribute names from the root options object down to this field."""
    base: type
    """int, float, str, bool, Path or tuple (a list of strings)."""
    optional: bool
    choices: tuple[str, ...] | None
    default: Any
    help: str
    group: str | None
    secret: bool
    excludes: str | None

    @property
    def env(self) -> str:
        """The environment variable that sets this option."""
        return ENV_PREFIX + self.name.upper()


# ------------------------------------------------------------------ walking the dataclasses


@cache
def _attribute_docs(cls: type) -> dict[str, str] | None:
    """The docstring under each field of ``cls`` (PEP 257 attribute docstrings), whitespace folded;
    ``None`` where the source is not installed (then the options still work, with less help)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return None
    body = ast.parse(source).body[0]
    assert isinstance(body, ast.ClassDef)
    out: dict[str, str] = {}
    for node, nxt in zip(body.body, body.body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            out[node.target.id] = " ".join(nxt.value.value.replace("``", "").split())
    return out


def _kind(tp: Any) -> tuple[type, bool, tuple[str, ...] | None]:
    """(base type, optional, choices) of a field's resolved annotation."""
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) != 1:
            raise TypeError(f"unsupported option type {tp}")
        tp = args[0]
    if typing.get_origin(tp) is Literal:
        return str, optional, tuple(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple and typing.get_args(tp) == (str, ...):
        return tuple, optional, None
    if tp in (bool, int, float, str, Path):
        return tp, optional, None
    raise TypeError(f"unsupported option type {tp}")


def _is_group(f: dataclasses.Field[Any]) -> bool:
    return callable(f.default_factory) and dataclasses.is_dataclass(f.default_factory)


def walk(cls: type, prefix: str = "", path: tuple[str, ...] = (), group: str | None = None) -> Iterator[Option]:
    """Every option of ``cls`` and of the option groups nested in it, in declaration order."""
    hints = typing.get_type_hints(cls)
    docs = _attribute_docs(cls)
    defaults = cls()
    for f in dataclasses.fields(cls):
        if f.metadata.get("config", True) is False:
            continue
        if _is_group(f):
            sub = f.default_factory
            assert isinstance(sub, type)
            title = f.metadata.get("group") or (group + " / " if group else "") + f.name.replace("_", " ")
            yield from walk(sub, prefix + f.metadata.get("prefix", f.name + "_"), (*path, f.name), title)
            continue
        base, optional, choices = _kind(hints[f.name])
        text = f.metadata.get("help") or (docs or {}).get(f.name)
        if not text and docs is not None:  # a developer's omission, caught by the first --help
            raise TypeError(f"{cls.__name__}.{f.name} has neither help metadata nor a docstring")
        yield Option(name=f.metadata.get("name", prefix + f.name), path=(*path, f.name), base=base,
                     optional=optional, choices=tuple(f.metadata.get("choices") or ()) or choices,
                     default=getattr(defaults, f.name), help=text or f.name.replace("_", " "), group=group,
                     secret=bool(f.metadata.get("secret")), excludes=f.metadata.get("excludes"))


def options_by_name(cls: type) -> dict[str, Option]:
    """``walk(cls)`` by option name; raises TypeError if two options share a name."""
    out: dict[str, Option] = {}
    for opt in walk(cls):
        if opt.name in out:
            raise TypeError(f"option {opt.name!r} is defined twice ({'.'.join(out[opt.name].path)} and "
                            f"{'.'.join(opt.path)})")
        out[opt.name] = opt
    return out


# ------------------------------------------------------------------ reading values

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def from_text(opt: Option, text: str) -> Any:
    """A value from the command line or the environment; raises ValueError with the reason."""
    if opt.optional and opt.base is not str and text.strip().lower() in ("none", ""):
        return None
    if opt.base is bool:
        low = text.strip().lower()
        if low not in _TRUE + _FALSE:
            raise ValueError(f"expected true or false, got {text!r}")
        return low in _TRUE
    if opt.base is tuple:
        return tuple(s.strip() for s in text.split(",") if s.strip())
    try:
        value = opt.base(text)
    except ValueError:
        raise ValueError(f"expected {_noun(opt)}, got {text!r}") from None
    return _checked(opt, value)


def from_toml(opt: Option, value: Any) -> Any:
    """A value from the config file, type-checked (no silent conversion of a string to a number)."""
    if isinstance(value, str) and opt.optional and opt.base is not str and value.lower() == "none":
        return None
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, int | float) and not isinstance(value, bool),
        str: isinstance(value, str),
        Path: isinstance(value, str),
        tuple: isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
    }[opt.base]
    if not ok:
        raise ValueError(f"expected {_noun(opt)}, got {value!r}")
    if opt.base is tuple:
        return from_text(opt, value) if isinstance(value, str) else tuple(value)
    return _checked(opt, opt.base(value))


def _checked(opt: Option, value: Any) -> Any:
    if opt.choices is not None and value not in opt.choices:
        raise ValueError(f"expected one of {', '.join(opt.choices)}, got {value!r}")
    return value


def _noun(opt: Option) -> str:
    noun = {bool: "true or false", int: "an integer", float: "a number", str: "a string", Path: "a path",
            tuple: "a list of strings (or one comma-separated string)"}[opt.base]
    return noun + (" or 'none'" if opt.optional and opt.base is not str else "")


def read_toml(path: str | Path, table: Mapping[str, Option]) -> dict[str, Any]:
    """The options set in a TOML file (flat keys, the option names); raises ConfigError naming the key."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"--config {path}: {exc.strerror or exc}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from exc
    out: dict[str, Any] = {}
    for key, value in raw.items():
        opt = table.get(key)
        if opt is None:
            raise ConfigError(f"--config {path}: unknown option {key!r} (keys are the option names of "
                              "launch.py --help, without dashes, flat: no [sections])")
        try:
            out[key] = from_toml(opt, value)
        except ValueError as exc:
            raise ConfigError(f"--config {path}: {key}: {exc}") from None
    return out


def read_env(environ: Mapping[str, str], table: Mapping[str, Option]) -> dict[str, Any]:
    """The options set by ``VITA_<NAME>`` variables (other ``VITA_*`` variables are not options: ignored)."""
    out: dict[str, Any] = {}
    for opt in table.values():
        if opt.env in environ:
            try:
                out[opt.name] = from_text(opt, environ[opt.env])
            except ValueError as exc:
                raise ConfigError(f"${opt.env}: {exc}") from None
    return out


def merge(layers: Sequence[dict[str, Any]], table: Mapping[str, Option]) -> dict[str, Any]:
    """Later layers win; an option set in a layer drops the option it ``excludes`` from earlier layers."""
    out: dict[str, Any] = {}
    for layer in layers:
        for name in layer:
            if (other := table[name].excludes) and other not in layer:
                out.pop(other, None)
        out.update(layer)
    return out


def build(cls: type[Any], values: Mapping[str, Any], table: Mapping[str, Option]) -> Any:
    """An instance of ``cls`` with ``values`` (by option name) set and defaults elsewhere."""
    by_path = {opt.path: values[name] for name, opt in table.items() if name in values}
    return _build(cls, (), by_path)


def _build(cls: type[Any], path: tuple[str, ...], by_path: dict[tuple[str, ...], Any]) -> Any:
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        here = (*path, f.name)
        if _is_group(f) and f.metadata.get("config", True) is not False:
            assert isinstance(f.default_factory, type)
            kwargs[f.name] = _build(f.default_factory, here, by_path)
        elif here in by_path:
            kwargs[f.name] = by_path[here]
    return cls(**kwargs)


# ------------------------------------------------------------------ the command line


class _Toggle(argparse.Action):
    """``--x`` sets true, ``--no-x`` / ``--no_x`` false (so a flag can undo a config file or variable)."""

    def __init__(self, option_strings: list[str], dest: str, negatives: tuple[str, ...] = (), **kw: Any) -> None:
        self.negatives = negatives
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser: Any, namespace: Any, values: Any, option_string: str | None = None) -> None:
        setattr(namespace, self.dest, option_string not in self.negatives)


def _flags(name: str) -> list[str]:
    """Reference spelling (underscores) plus the dashed one: ``--max_users`` and ``--max-users``."""
    dashed = name.replace("_", "-")
    return [f"--{name}"] if dashed == name else [f"--{name}", f"--{dashed}"]


def show(value: Any) -> str:
    """A default as ``--help`` shows it."""
    if isinstance(value, tuple):
        return ",".join(value) or "''"
    if value == "":
        return "''"
    return str(value)


def _text_type(opt: Option) -> Any:
    def convert(text: str) -> Any:
        try:
            return from_text(opt, text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = _noun(opt)
    return convert


def add_arguments(parser: argparse.ArgumentParser, table: Mapping[str, Option]) -> None:
    """One argument per option; defaults are left out of the namespace (``SUPPRESS``) so that only the
    options given on the command line override the environment and the config file."""
    groups: dict[str | None, Any] = {None: parser}
    for opt in table.values():
        if opt.group not in groups:
            groups[opt.group] = parser.add_argument_group(opt.group)
        target = groups[opt.group]
        default = MASK if opt.secret and opt.default else show(opt.default)
        kw: dict[str, Any] = {"dest": opt.name, "default": argparse.SUPPRESS,
                              "help": f"{opt.help} (default: {default})".replace("%", "%%")}
        if opt.base is bool:
            flags = _flags(opt.name)
            negatives: tuple[str, ...] = ()
            if not opt.name.startswith("no_"):  # --no-no_tls would only confuse
                # --no-echo_guard is argparse's own spelling (BooleanOptionalAction), kept from before
                negatives = tuple(dict.fromkeys((f"--no_{opt.name}", f"--no-{opt.name.replace('_', '-')}",
                                                 f"--no-{opt.name}")))
            target.add_argument(*flags, *negatives, action=_Toggle, negatives=negatives, **kw)
            continue
        if opt.choices is not None:
            kw["choices"] = opt.choices
        else:
            kw["metavar"] = {int: "N", float: "X", str: "TEXT", Path: "PATH", tuple: "LIST"}[opt.base]
        target.add_argument(*_flags(opt.name), type=_text_type(opt), **kw)


# ------------------------------------------------------------------ --print-config


def _toml_value(opt: Option, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if opt.base is float:
        value = float(value)
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, tuple):
        return "[" + ", ".join(_toml_string(v) for v in value) + "]"
    return _toml_string(str(value))


def _toml_string(text: str) -> str:
    # JSON's escapes are TOML's, but for DEL, which TOML wants escaped
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def dump_toml(root: Any, table: Mapping[str, Option]) -> str:
    """The effective configuration as TOML that ``--config`` loads back; secrets are masked (commented out)."""
    lines = ["# vita-duplex effective configuration (launch.py --print-config); load it with --config FILE.",
             "# Precedence: command line > VITA_* environment > this file > defaults."]
    group: str | None = "\0"
    for opt in table.values():
        if opt.group != group:
            group = opt.group
            lines += ["", f"# --- {group or 'server'} ---"]
        value: Any = root
        for attr in opt.path:
            value = getattr(value, attr)
        if opt.secret and value is not None:
            lines.append(f"# {opt.name} = {MASK}: set it with ${opt.env} or a file option, not here")
        elif value is None and opt.default is None:
            lines.append(f"# {opt.name} = unset")
        elif value is None:  # unset where the default is not: only the word 'none' says so in TOML
            lines.append(f'{opt.name} = "none"')
        else:
            lines.append(f"{opt.name} = {_toml_value(opt, value)}")
    return "\n".join(lines) + "\n"


def environ() -> Mapping[str, str]:
    """The process environment (a seam for tests)."""
    return os.environ
