"""``TrainConfig`` as command-line flags: the common settings, then one group of flags per section.

A flag left unset leaves the config file's value (or the default) alone, so flags override the file key by key.
"""

from __future__ import annotations

import argparse
import typing
from typing import Any

from pydantic.fields import FieldInfo

from training.config import Section, TrainConfig, merge_settings, read_config_file

# The flag prefix of each section's settings (``[qat] lr`` is ``--qat-lr``); the names are those of earlier
# releases, so commands keep working. ``[distill] weight`` is ``--distill``.
_SECTION_PREFIX = {"columns": "", "bpr": "", "fp32": "", "qat": "qat-", "gnaq": "", "distill": "distill-",
                   "ptq": "ptq-", "bigear": "bigear-"}
_RENAMED = {("distill", "weight"): "distill", **{("columns", key): f"{key}_col" for key in ("user", "item", "time",
                                                                                          "rating")}}
SEPARATOR = "."  # dest of a section's flag: "<section>.<key>"


def _add_flag(group: argparse._ArgumentGroup, name: str, dest: str, field: FieldInfo, default: Any) -> None:
    flag = "--" + name.replace("_", "-")
    shown = "" if default is None else f" (default: {default})"  # an optional setting says what unset means
    kwargs: dict = {"default": argparse.SUPPRESS, "dest": dest, "help": f"{field.description or ''}{shown}"}
    if field.annotation is not bool and typing.get_origin(field.annotation) is not typing.Literal:
        kwargs["metavar"] = dest.rpartition(SEPARATOR)[2].upper()
    annotation = field.annotation
    if annotation is bool:
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(annotation) is typing.Literal:
        group.add_argument(flag, choices=typing.get_args(annotation), **kwargs)
    elif annotation == list[int]:
        group.add_argument(flag, type=int, nargs="+", **kwargs)
    else:
        scalar = next((t for t in (int, float) if annotation in (t, t | None)), str)
        group.add_argument(flag, type=scalar, **kwargs)


def add_config_flags(parser: argparse.ArgumentParser, *, skip: frozenset[str] = frozenset()) -> None:
    """One flag per common setting, then a titled group per section (``skip``: common settings to leave out)."""
    defaults = TrainConfig()
    common = parser.add_argument_group("settings (also keys of --config; flags override the file)")
    for name, field in TrainConfig.model_fields.items():
        section = getattr(defaults, name)
        if isinstance(section, Section) or name in skip:
            continue
        _add_flag(common, name, name, field, section)
    for name in TrainConfig.model_fields:
        if isinstance(getattr(defaults, name), Section):
            add_section_flags(parser, name)


def add_section_flags(parser: argparse.ArgumentParser, name: str) -> None:
    """The titled group of flags of one section of ``TrainConfig`` (e.g. ``columns`` for ``gnaq data stats``)."""
    section = getattr(TrainConfig(), name)
    title = (type(section).__doc__ or "").strip().splitlines()[0].rstrip(".")
    group = parser.add_argument_group(f"[{name}] {title}")
    for key, inner in type(section).model_fields.items():
        flag = _RENAMED.get((name, key), _SECTION_PREFIX[name] + key)
        _add_flag(group, flag, f"{name}{SEPARATOR}{key}", inner, getattr(section, key))


def flag_of(dest: str) -> str:
    """The command-line flag whose ``dest`` this is (``columns.user`` is ``--user-col``)."""
    section, _, key = dest.partition(SEPARATOR)
    if not key:
        return "--" + section.replace("_", "-")
    return "--" + _RENAMED.get((section, key), _SECTION_PREFIX[section] + key).replace("_", "-")


def settings_from_flags(args: argparse.Namespace, *, ignore: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The settings the flags set, sections as nested dicts (``ignore``: other arguments of the command)."""
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest in ignore:
            continue
        section, _, key = dest.partition(SEPARATOR)
        if key:
            out.setdefault(section, {})[key] = value
        else:
            out[dest] = value
    return out


def train_config(args: argparse.Namespace, *, ignore: frozenset[str]) -> TrainConfig:
    """The configuration of ``gnaq train``: the ``--config`` file, then the flags over it."""
    base = read_config_file(args.config) if args.config else {}
    return TrainConfig(**merge_settings(base, settings_from_flags(args, ignore=ignore)))

