"""Command-line options from dataclasses, as transformers' `HfArgumentParser` reads them, plus a config file.

Every option is accepted in both spellings (`--output_dir` and `--output-dir`), old names included (`aliases`), and
`--help` shows the defaults. A dataclass with a `config` field also reads a YAML or JSON file of option values
(`--config run.yaml`, or the file as the only argument, as in transformers' examples); the command line overrides it.

Options are declared with [`option`] (and the shared [`config_option`], [`model_option`]); the field metadata
understood on top of `HfArgumentParser`'s (`help`, `aliases`, argparse keywords):

- `group`: the `--help` section the option is listed in;
- `positional`: the field is a positional argument (no `--`);
- `nargs` on a list field: `"*"` lets the option come without a value (an empty list), where `HfArgumentParser`
  asks for one or more.
"""

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path

import yaml
from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .errors import UsageError
from .files import file_kind

CONFIG_FIELD = "config"
REQUIRED = dataclasses.MISSING  # the `default` of an `option` that must be given
CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Each option's default after its help (unless the help states it, or there is none); descriptions and epilogs
    keep their line breaks (examples)."""

    def _get_help_string(self, action):
        help = action.help or ""
        if action.default in (None, [], argparse.SUPPRESS) or "default" in help:
            return help
        return f"{help} (default: %(default)s)".lstrip()

    def _format_action(self, action):
        if not action.help and action.default not in (None, [], argparse.SUPPRESS):
            action.help = "(default: %(default)s)"  # argparse prints no line for an option without help
        return super()._format_action(action)


def option_spellings(option):
    """`--output-dir` -> [`--output-dir`, `--output_dir`]: both spellings of a long option, the given one first."""
    if not option.startswith("--"):
        return [option]
    name = option[2:]
    return list(dict.fromkeys([option, f"--{name.replace('-', '_')}", f"--{name.replace('_', '-')}"]))


class MARNetArgumentParser(HfArgumentParser):
    """An `HfArgumentParser` for one dataclass, whose [`parse`] returns its instance.

    Args:
        dataclass_type (`type`): the dataclass of the command's options. Its `__post_init__` checks the values and
            raises [`UsageError`] for bad ones.
        kwargs: `argparse.ArgumentParser` arguments (`prog`, `description`, `epilog`, ...).
    """

    def __init__(self, dataclass_type, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        self._groups = {}  # `--help` sections, filled while HfArgumentParser.__init__ adds the fields
        super().__init__(dataclass_type, **kwargs)
        self.dataclass_type = dataclass_type
        self.field_names = {field.name for field in dataclasses.fields(dataclass_type)}
        if self.usage is None:  # one line, not the 60 options of marnet-train: `--help` lists them
            positionals = [action.dest.upper() for action in self._actions if not action.option_strings]
            self.usage = " ".join(["%(prog)s", *positionals, "[options]"])

    def _add_dataclass_arguments(self, dtype):
        type_hints = typing.get_type_hints(dtype)
        for field in dataclasses.fields(dtype):
            metadata = dict(field.metadata)
            title = metadata.pop("group", None)
            parser = self if title is None else self._groups.setdefault(title, self.add_argument_group(title))
            element_type = _list_element_type(type_hints[field.name])
            if metadata.pop("positional", False):
                parser.add_argument(field.name, type=element_type or type_hints[field.name], **metadata)
                continue
            nargs = metadata.pop("nargs", None) if element_type is not None else None
            aliases = metadata.get("aliases", [])
            metadata["aliases"] = [
                spelling
                for alias in ([aliases] if isinstance(aliases, str) else aliases)
                for spelling in option_spellings(alias)
            ]
            self._parse_dataclass_field(parser, _copy_field(field, type_hints[field.name], metadata))
            if nargs is not None:
                self._actions[-1].nargs = nargs  # HfArgumentParser gives every list option nargs="+"

    def parse(self, argv=None):
        """The dataclass instance of `argv` (default `sys.argv[1:]`), over the values of its config file if any.

        Raises [`UsageError`] for a bad config file or bad values; a malformed command line exits with status 2 and
        argparse's message, as every argparse program.
        """
        argv = [str(arg) for arg in (sys.argv[1:] if argv is None else argv)]
        if CONFIG_FIELD in self.field_names:
            if len(argv) == 1 and argv[0].endswith(CONFIG_SUFFIXES):
                argv = [f"--{CONFIG_FIELD}", argv[0]]
            config_file = self._config_file(argv)
            if config_file is not None:
                self.set_defaults(**self.read_config_file(config_file))
        return self.from_namespace(self.parse_args(argv))

    def from_namespace(self, namespace):
        """The dataclass instance of a parsed namespace (this parser's, or its parent's for a sub-command)."""
        return self.dataclass_type(
            **{name: value for name, value in vars(namespace).items() if name in self.field_names}
        )

    def _config_file(self, argv):
        finder = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        for spelling in option_spellings(f"--{CONFIG_FIELD}"):
            finder.add_argument(spelling, dest=CONFIG_FIELD)
        return finder.parse_known_args(argv)[0].config

    def read_config_file(self, path):
        """{option: value} of a YAML/JSON file, each value checked and converted as on the command line.

        Keys are option names in either spelling (aliases too). A list option may be given as a list, a single
        value, or a mapping (`{field: value}` becomes the `field=value` entries of a KEY=VALUE option).
        """
        path = Path(path)
        if not path.exists():
            raise UsageError(f"--config {path}: no such file.")
        if not path.is_file():
            raise UsageError(f"--config {path} is a {file_kind(path.stat().st_mode)}, not a regular file.")
        text = path.read_text(encoding="utf-8-sig")  # a byte-order mark is no error
        kind = "JSON" if path.suffix == ".json" else "YAML"
        try:
            values = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise UsageError(f"--config {path}: not valid {kind}: {error}") from None
        if not isinstance(values, dict):
            raise UsageError(
                f"--config {path}: expected a mapping of option names to values, got {type(values).__name__}."
            )
        actions = {}
        for action in self._actions:
            for option in action.option_strings:
                actions[option.lstrip("-").replace("-", "_")] = action
        actions.pop(CONFIG_FIELD, None)
        actions.pop("help", None)
        unknown = sorted(str(key) for key in values if str(key).replace("-", "_") not in actions)
        if unknown:
            valid = sorted({action.dest for action in actions.values()})
            raise UsageError(f"--config {path}: unknown option(s) {unknown}. Valid keys: {', '.join(valid)}.")
        converted = {}
        for key, value in values.items():
            action = actions[str(key).replace("-", "_")]
            converted[action.dest] = _file_value(action, value, f"--config {path}: `{key}`")
        return converted


def option(default=None, *, help=None, group=None, **metadata):
    """One command-line option, declared as a field of a command's options dataclass (every CLI declares its
    options this way).

    Args:
        default: the value when the option is not given (a list is copied for each parse), or [`REQUIRED`] for a
            positional argument without one.
        help (`str`, *optional*): the `--help` text; the default is appended to it.
        group (`str`, *optional*): the `--help` section the option is listed in.
        metadata: the rest of [`MARNetArgumentParser`]'s field metadata: `aliases`, `positional`, and argparse
            keywords (`choices`, `metavar`, `action`, ...).
    """
    metadata = {"help": help, "group": group, **metadata}
    if default is REQUIRED:
        return dataclasses.field(metadata=metadata)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def config_option():
    """`--config FILE`, the options file every command reads (see [`MARNetArgumentParser.parse`])."""
    return option(
        help="YAML or JSON file of option values (keys as the options, `_` or `-`); the command line overrides them."
    )


def model_option():
    """`--model_name_or_path`, the model a command reads (marnet-eval, marnet-export)."""
    return option(
        aliases=["--model"],
        help="Model directory (a marnet-train output folder, one of its checkpoints/best-model) or Hub id, with its "
        "image processor.",
    )


def trust_remote_code_option():
    """`--trust_remote_code`, off unless given (marnet-eval, marnet-export)."""
    return option(False, help="Allow a Hub model to run its own code.")


def require(arguments, *names):
    """Raises [`UsageError`] naming the first of `names` (fields of `arguments`) left empty."""
    for name in names:
        if not getattr(arguments, name):
            raise UsageError(f"--{name} is required (on the command line or in --config).")


def parse_field_values(entries, flag):
    """`["field=value", ...]` -> {field: value}, values parsed as JSON when they can be (`0.2`, `true`, `"hm"`),
    otherwise kept as the string; `flag` names the option in the error a malformed entry raises."""
    values = {}
    for entry in entries:
        name, raw = _split_field_value(entry)
        if not name:
            raise UsageError(f"{flag} expects FIELD=VALUE, got {entry!r}.")
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def field_value_argument(entry):
    """An argparse `type=` for plain-argparse scripts' FIELD=VALUE options: a malformed entry is argparse's usage
    error (exit status 2, the option named), not a traceback; the entry itself is kept."""
    if not _split_field_value(entry)[0]:
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {entry!r}")
    return entry


def _split_field_value(entry):
    """ "a=1" -> ("a", "1"); ("", ...) when there is no `=` or no field name."""
    name, separator, raw = entry.partition("=")
    return (name.strip() if separator else ""), raw


def _list_element_type(type_hint):
    """`list[int]` or `list[int] | None` -> int; None for any other type."""
    if typing.get_origin(type_hint) in (typing.Union, types.UnionType):
        hints = [arg for arg in typing.get_args(type_hint) if arg is not type(None)]
        type_hint = hints[0] if len(hints) == 1 else None
    return typing.get_args(type_hint)[0] if typing.get_origin(type_hint) is list else None


def _copy_field(field, resolved_type, metadata):
    """`field` with its type resolved and `metadata` replaced (HfArgumentParser passes metadata to argparse)."""
    copy = dataclasses.field(default=field.default, default_factory=field.default_factory)
    copy.name, copy.type, copy.metadata = field.name, resolved_type, types.MappingProxyType(metadata)
    return copy


def _file_value(action, value, where):
    """`value` from a config file, converted and checked like the command-line string of `action`."""
    if value is None:
        return None
    takes_list = action.nargs in ("+", "*") or isinstance(action, (argparse._AppendAction, argparse._ExtendAction))
    if takes_list:
        if isinstance(value, dict):
            value = [f"{key}={json.dumps(item)}" for key, item in value.items()]
        return [_file_scalar(action, item, where) for item in (value if isinstance(value, list) else [value])]
    if isinstance(value, bool) and action.nargs == "?" and action.type is not string_to_bool:
        return action.const if value else action.default  # `augment: true` for an option with an optional value
    return _file_scalar(action, value, where)


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", Path: "a path"}


def _file_scalar(action, value, where):
    choices = ", ".join(map(str, action.choices or ()))
    expected = TYPE_NAMES.get(action.type) or (f"one of {choices}" if choices else "a valid value")
    if action.type is str and isinstance(value, (dict, list)):
        value = json.dumps(value)  # a JSON-valued option (e.g. --lr_scheduler_kwargs) written as YAML
    if action.type is not None and action.type is not string_to_bool:
        if isinstance(value, bool) or isinstance(value, (list, dict)):
            raise UsageError(f"{where} must be {expected}, got {value!r}.{_yaml_boolean_hint(value)}")
        if action.type is int and isinstance(value, float) and not value.is_integer():
            raise UsageError(f"{where} must be an integer, got {value!r}.")
        try:
            value = action.type(int(value) if action.type is int and isinstance(value, float) else value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise UsageError(f"{where} must be {expected}, got {value!r}.") from None
    elif action.type is string_to_bool and not isinstance(value, bool):
        # Strict: a quoted "no" or "false" is a string, and strings are not booleans (bool("no") is True).
        raise UsageError(f"{where} must be true or false (a YAML/JSON boolean, unquoted), got {value!r}.")
    if action.choices is not None and value not in action.choices:
        raise UsageError(f"{where} must be one of {choices}, got {value!r}.{_yaml_boolean_hint(value)}")
    return value


def _yaml_boolean_hint(value):
    """YAML reads unquoted yes/no/on/off/true/false as booleans: say so when one reached a string option."""
    if isinstance(value, bool):
        return " YAML reads unquoted no/yes/off/on as booleans: quote the value (e.g. 'no')."
    return ""
