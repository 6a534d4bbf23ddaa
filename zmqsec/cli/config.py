"""The one configuration loader: SSM-style INI files, every option also a command-line flag.

A schema lists each option once (section, name, flag, type, default).  ``load``
reads the file, applies flags on top, converts and validates every value, and
returns a frozen :class:`Settings`; a bad value is one line naming the file,
the section and option, and what would be accepted.
"""

from __future__ import annotations

import argparse
import configparser
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from zmqsec.errors import ConfigError


@dataclass(frozen=True)
class Option:
    """One schema entry: an INI option ``[section] name`` and the command-line flag that overrides it."""

    section: str
    name: str
    kind: str = "str"  # str | path | int | float | list | choice | bool
    default: object = None
    help: str = ""
    choices: tuple[str, ...] = ()
    required: bool = False
    flag_name: str | None = None  # when the option name alone would be ambiguous on the command line

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--flag-name``: ``flag_name`` or the option name, underscores as dashes."""
        return f"--{(self.flag_name or self.name).replace('_', '-')}"

    @property
    def dest(self) -> str:
        """The argparse attribute that holds the flag's value, unique per section and name."""
        return f"cfg_{self.section}_{self.name}"


def _convert(option: Option, raw: object, where: str) -> object:
    if raw is None:
        return None
    if option.kind in ("int", "float"):
        try:
            value = (int if option.kind == "int" else float)(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: {raw!r} is not a number") from None
        if value < 0:
            raise ConfigError(f"{where}: {raw!r} must not be negative")
        return value
    if option.kind == "path":
        return Path(str(raw)).expanduser()
    if option.kind == "list":
        items = raw if isinstance(raw, list) else [p.strip() for p in str(raw).replace("\n", ",").split(",")]
        return tuple(i for i in items if i)
    if option.kind == "bool":
        text = str(raw).strip().lower()
        if text in ("1", "yes", "true", "on"):
            return True
        if text in ("0", "no", "false", "off"):
            return False
        raise ConfigError(f"{where}: {raw!r} is not yes/no")
    if option.kind == "choice" and str(raw) not in option.choices:
        raise ConfigError(f"{where}: {raw!r} is not one of {', '.join(option.choices)}")
    return str(raw)


class Settings(Mapping):
    """Validated settings, looked up as ``settings['section.name']``."""

    def __init__(self, values: dict[str, object], source: str) -> None:
        self._values = MappingProxyType(dict(values))
        self.source = source

    def __getitem__(self, key: str) -> object:
        return self._values[key]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def add_flags(parser: argparse.ArgumentParser, schema: Iterable[Option]) -> None:
    """One flag per option; list options may repeat the flag."""
    parser.add_argument("--config", "-c", type=Path, help="INI file (SSM-style sections); flags override it")
    for option in schema:
        kwargs = {"dest": option.dest, "default": None, "metavar": option.name.upper(),
                  "help": f"[{option.section}] {option.name}: {option.help}" + (f" (default {option.default})" if option.default is not None else "")}
        if option.kind == "list":
            kwargs["action"] = "append"
        if option.kind == "choice":
            kwargs["choices"] = option.choices
            del kwargs["metavar"]
        parser.add_argument(option.flag, **kwargs)


def load(schema: Iterable[Option], args: argparse.Namespace) -> Settings:
    """Merge defaults, the INI file (``args.config``) and flags; validate everything."""
    schema = list(schema)
    parser = configparser.ConfigParser(interpolation=None)
    source = "command line"
    path = getattr(args, "config", None)
    if path is not None:
        source = str(path)
        try:
            with open(path, encoding="utf-8") as fh:
                parser.read_file(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: configuration file not found") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read configuration ({exc})") from None
        except configparser.Error as exc:
            raise ConfigError(f"{path}: not a valid INI file ({exc.__class__.__name__}: {str(exc).splitlines()[0]})") from None
        known = {(o.section, o.name) for o in schema}
        for section in parser.sections():
            for name in parser[section]:
                if (section, name) not in known:
                    raise ConfigError(f"{path}: [{section}] {name} is not a known option (see --help)")
    values: dict[str, object] = {}
    for option in schema:
        flag_value = getattr(args, option.dest, None)
        if flag_value is not None:
            raw, where = flag_value, f"option {option.flag}"
        elif parser.has_option(option.section, option.name):
            raw, where = parser.get(option.section, option.name), f"{source}: [{option.section}] {option.name}"
        else:
            raw, where = option.default, f"default of {option.flag}"
        value = _convert(option, raw, where)
        if option.required and value in (None, ()):
            raise ConfigError(f"[{option.section}] {option.name} is required: set it in the config file or give {option.flag}")
        values[f"{option.section}.{option.name}"] = value
    return Settings(values, source)

