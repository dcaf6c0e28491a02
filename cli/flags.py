"""``TrainConfig`` as command-line flags: the common settings, then one group of flags per section.

A flag left unset leaves the config file's value (or the default) alone, so flags override the file key by key.
Research settings that the default recipe sets (``advanced`` in their field) parse like any other but are left
out of ``--help``; ``--help-advanced`` lists them.
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


def _is_advanced(field: FieldInfo) -> bool:
    return bool((field.json_schema_extra or {}).get("advanced"))


def _add_flag(group: argparse._ArgumentGroup, name: str, dest: str, field: FieldInfo, default: Any,
              shown: bool = True) -> None:
    flag = "--" + name.replace("_", "-")
    default_text = "" if default is None else f" (default: {default})"  # an optional setting says what unset means
    kwargs: dict = {"default": argparse.SUPPRESS, "dest": dest,
                    "help": f"{field.description or ''}{default_text}" if shown else argparse.SUPPRESS}
    annotation = field.annotation
    if annotation not in (bool, bool | None) and typing.get_origin(annotation) is not typing.Literal:
        kwargs["metavar"] = dest.rpartition(SEPARATOR)[2].upper()
    if annotation in (bool, bool | None):
        group.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
    elif typing.get_origin(annotation) is typing.Literal:
        group.add_argument(flag, choices=typing.get_args(annotation), **kwargs)
    elif annotation == list[int]:
        group.add_argument(flag, type=int, nargs="+", **kwargs)
    else:
        scalar = next((t for t in (int, float) if annotation in (t, t | None)), str)
        group.add_argument(flag, type=scalar, **kwargs)


class _AdvancedHelp(argparse.Action):
    """``--help-advanced``: print the research settings' flags and exit."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0,
                         help="list the research settings the default recipe sets (also keys of --config)")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        advanced = argparse.ArgumentParser(prog=parser.prog, usage=f"{parser.prog} [advanced settings]",
                                           add_help=False)
        for name in TrainConfig.model_fields:
            if isinstance(getattr(TrainConfig(), name), Section):
                add_section_flags(advanced, name, advanced=True)
        advanced.print_help()
        parser.exit()


def add_config_flags(parser: argparse.ArgumentParser, *, skip: frozenset[str] = frozenset()) -> None:
    """One flag per common setting, then a titled group per section (``skip``: common settings to leave out)."""
    parser.add_argument("--help-advanced", action=_AdvancedHelp)
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


def add_section_flags(parser: argparse.ArgumentParser, name: str, *, advanced: bool = False) -> None:
    """The titled group of flags of one section of ``TrainConfig`` (e.g. ``columns`` for ``gnaq data stats``):
    its everyday settings shown in help, or (``advanced``) only its research settings."""
    section = getattr(TrainConfig(), name)
    fields = {key: f for key, f in type(section).model_fields.items() if not advanced or _is_advanced(f)}
    if not fields:
        return
    title = (type(section).__doc__ or "").strip().splitlines()[0].rstrip(".")
    group = parser.add_argument_group(f"[{name}] {title}")
    for key, inner in fields.items():
        flag = _RENAMED.get((name, key), _SECTION_PREFIX[name] + key)
        _add_flag(group, flag, f"{name}{SEPARATOR}{key}", inner, getattr(section, key),
                  shown=advanced or not _is_advanced(inner))


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



def _positive(kind: type) -> typing.Callable[[str], typing.Any]:
    def parse(text: str) -> typing.Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return value
    return parse


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """How many processes train (torchrun), and how long a rank waits for the others; not training settings."""
    group = parser.add_argument_group("distributed training (torch.distributed: gloo on CPU, nccl on CUDA)")
    group.add_argument("--nproc", type=_positive(int), default=None, metavar="N",
                       help="train with N processes on this machine: gnaq starts them with torchrun --standalone; "
                            "under torchrun (e.g. several nodes) it must equal the WORLD_SIZE torchrun set "
                            "(default: one process, or as many as torchrun started). --batch-size is the global "
                            "batch, split between the ranks, and the learning rates are those of that batch")
    group.add_argument("--dist-timeout", type=_positive(float), default=1800.0, metavar="SECONDS",
                       help="how long a rank waits for the others: at the rendezvous and at every collective, e.g. "
                            "while rank 0 validates or writes the artifact (default: 1800)")
