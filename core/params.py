"""A job's parameters, declared once: its flags, help, `run` config keys and checks.

Each job (and each trainer's config) subclasses `Params` and declares every parameter
with `param(...)`: its type by annotation, its default, bounds (`ge`, `gt`, `le`, `lt`),
help text and how it appears on the command line. From that one declaration:

- `add_flags(parser)` adds the argparse flags, with the default appended to the help;
- `from_namespace(args)` / `parse(argv)` build and check the parameters from flags;
- `from_mapping(values, prefix)` checks a `run` config section, naming `section.key`;
- `config_keys()` lists the keys a `run` config section may set.

Errors are `ValueError`s that name the flag (or config key), what it must be and the
value given: `--min-count must be >= 1, got 0`, `train.epochs must be an integer >= 1,
got 0`.
"""

import argparse
import typing

import annotated_types
import pydantic

REQUIRED = ...


def param(default=REQUIRED, *, help, flag=None, metavar=None, repeat=False,  # pylint: disable=redefined-builtin
          choices=None, negate=None, group=None, config=True, show_default=True,
          ge=None, gt=None, le=None, lt=None, min_length=None):
    """Declares one parameter.

    Args:
      default: the default; omit for a required parameter.
      help: one line for `--help` (the default is appended unless show_default=False).
      flag: the command-line flag (default: `--` + the name with dashes).
      metavar: argparse's metavar.
      repeat: the flag may be given several times; the values form a list.
      choices: the allowed values.
      negate: for a bool, the flag that sets it False (e.g. `--no-standardize`); with
        `flag=None` and a True default there is no flag that sets it True.
      group: flags of the same group are mutually exclusive.
      config: whether a `run` config section may set it (paths between jobs may not).
      show_default: append "(default X)" to the help.
      ge, gt, le, lt: numeric bounds; min_length: least list length.
    """
    extra = {"flag": flag, "metavar": metavar, "repeat": repeat, "choices": choices,
             "negate": negate, "group": group, "config": config, "show_default": show_default}
    bounds = {k: v for k, v in {"ge": ge, "gt": gt, "le": le, "lt": lt,
                                "min_length": min_length}.items() if v is not None}
    return pydantic.Field(default, description=help, json_schema_extra=extra, **bounds)


def _extra(field):
    return field.json_schema_extra or {}


def _bounds(field):
    found = {}
    for meta in field.metadata:
        for key in ("ge", "gt", "le", "lt", "min_length"):
            if getattr(meta, key, None) is not None:
                found[key] = getattr(meta, key)
        if isinstance(meta, annotated_types.Interval):
            found.update({k: v for k, v in vars(meta).items() if v is not None})
    return found


def _base_type(annotation):
    """int, float, str, bool or list for an annotation such as `int | None`."""
    if typing.get_origin(annotation) in (list, tuple):
        return list
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return _base_type(args[0])
    return annotation


def _allows_none(field):
    return type(None) in typing.get_args(field.annotation) or field.annotation is type(None)


def _range_text(bounds):
    low = ("[", bounds["ge"]) if "ge" in bounds else ("(", bounds["gt"]) if "gt" in bounds else None
    high = ("]", bounds["le"]) if "le" in bounds else (")", bounds["lt"]) if "lt" in bounds else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    if high:
        return f"{'<=' if high[0] == ']' else '<'} {high[1]}"
    return ""


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
               list: "a list of strings"}


def describe(field, with_type):
    """What a value of `field` must be: 'an integer >= 1', '>= 1', 'one of [...]'."""
    extra = _extra(field)
    if extra.get("choices"):
        return f"one of {list(extra['choices'])}"
    base = _base_type(field.annotation)
    bounds = _bounds(field)
    text = _range_text(bounds)
    if with_type or not text:
        text = f"{_TYPE_WORDS.get(base, 'valid')} {text}".strip()
    if _allows_none(field) and with_type:
        text += " or null"
    return text


class Params(pydantic.BaseModel):
    """Base of every job's and trainer's parameters (see the module docstring)."""

    model_config = pydantic.ConfigDict(extra="forbid", strict=False)

    @classmethod
    def flag_of(cls, name):
        return _extra(cls.model_fields[name]).get("flag") or "--" + name.replace("_", "-")

    @classmethod
    def group_members(cls, name):
        """The other parameters of `name`'s mutually exclusive group ([] if none)."""
        group = _extra(cls.model_fields[name]).get("group")
        return [n for n, f in cls.model_fields.items() if group and n != name and _extra(f).get("group") == group]

    @classmethod
    def config_keys(cls):
        return [n for n, f in cls.model_fields.items() if _extra(f).get("config", True)]

    @classmethod
    def defaults(cls):
        """{name: default} of the parameters a `run` config may set."""
        return {n: cls.model_fields[n].get_default(call_default_factory=True) for n in cls.config_keys()}

    @classmethod
    def add_flags(cls, parser):
        """Adds one flag per parameter to an argparse parser."""
        groups = {}
        for name, field in cls.model_fields.items():
            extra = _extra(field)
            target = parser
            if extra.get("group"):
                if extra["group"] not in groups:
                    groups[extra["group"]] = parser.add_mutually_exclusive_group()
                target = groups[extra["group"]]
            _add_flag(target, cls, name, field, extra)
        return parser

    @classmethod
    def from_args(cls, args):
        """Checked parameters from an argparse namespace; flags not given take the defaults."""
        values = {n: v for n, v in vars(args).items() if n in cls.model_fields and v is not None}
        return cls.check(values, cls.flag_of)

    @classmethod
    def check_keys(cls, values, prefix, extra=()):
        """Raises on a key that is neither a config key nor in `extra`; returns the config keys."""
        keys = cls.config_keys()
        unknown = sorted(set(values) - set(keys) - set(extra))
        if unknown:
            known = ", ".join([*keys, *extra])
            raise ValueError(f"unknown key {prefix}.{unknown[0]} (known in {prefix}: {known})")
        return keys

    @classmethod
    def from_mapping(cls, values, prefix):
        """Checks a `run` config section; messages name `prefix.key`.

        Returns:
          {key: checked value} of every config key (defaults for those not given).
        """
        keys = cls.check_keys(values, prefix)
        # Paths between jobs are not config keys: stand-ins let the rest be checked.
        stand_ins = {n: _stand_in(f) for n, f in cls.model_fields.items()
                     if n not in keys and f.is_required()}
        # A config may name one path where a list is expected, and null where the
        # parameter takes no null: "the job's default".
        fields = cls.model_fields
        values = {k: [v] if isinstance(v, str) and _base_type(fields[k].annotation) is list else v
                  for k, v in values.items() if v is not None or _allows_none(fields[k])}
        checked = cls.check({**stand_ins, **values}, lambda name: f"{prefix}.{name}", with_type=True)
        # Keys not given keep the declared default, and keys given as null stay null, not
        # a value a validator derived from other fields (or the stand-ins): `to_argv`
        # leaves those out, so the job derives them itself.
        return {k: getattr(checked, k) if values.get(k) is not None else
                values[k] if k in values else fields[k].get_default(call_default_factory=True)
                for k in keys}

    @classmethod
    def check(cls, values, name_of, with_type=False):
        """Builds the parameters from `values`, or raises a ValueError naming `name_of(key)`."""
        for name, value in values.items():
            choices = _extra(cls.model_fields[name]).get("choices") if name in cls.model_fields else None
            if choices and value is not None and value not in choices:
                raise ValueError(f"{name_of(name)} must be one of {list(choices)}, got {value!r}")
        try:
            return cls(**values)
        except pydantic.ValidationError as e:
            raise ValueError(_message(cls, e, values, name_of, with_type)) from None

    def as_dict(self):
        return self.model_dump()

    @classmethod
    def to_argv(cls, values):
        """{name: value} -> the job's command line: a flag per value, repeated for lists,
        bare for a bool; None and declared defaults are left out (the job applies them)."""
        argv = []
        for name, value in values.items():
            field = cls.model_fields[name]
            extra = _extra(field)
            if value is None or value == field.get_default(call_default_factory=True):
                continue
            if _base_type(field.annotation) is bool:
                argv.append(_bool_flag(cls, name, extra, value))
                continue
            if isinstance(value, (list, tuple)):
                argv += [a for v in value for a in (cls.flag_of(name), str(v))]
            else:
                argv += [cls.flag_of(name), str(value)]
        return argv


def _stand_in(field):
    choices = _extra(field).get("choices")
    if choices:
        return choices[0]
    return ["-"] if _base_type(field.annotation) is list else "-"


def _bool_flag(cls, name, extra, value):
    """The flag that sets a bool parameter to `value`."""
    if value is False:
        flag = extra.get("negate")
    else:
        flag = cls.flag_of(name) if extra.get("flag") or not extra.get("negate") else None
    if not flag:
        raise ValueError(f"{cls.flag_of(name)}: no flag sets it to {value}")
    return flag


def _message(cls, error, values, name_of, with_type):
    first = error.errors()[0]
    name = first["loc"][0] if first["loc"] else None
    if name not in cls.model_fields:
        # A model-level check (a validator on several fields) raised it.
        text = str(first.get("ctx", {}).get("error") or first["msg"])
        return text.removeprefix("Value error, ")
    field = cls.model_fields[name]
    if first["type"] == "value_error":
        return f"{name_of(name)} {first['ctx']['error']}"
    shown = values.get(name)
    if first["type"] == "too_short":
        return f"{name_of(name)} must name at least one path, got {shown!r}"
    return f"{name_of(name)} must be {describe(field, with_type)}, got {shown!r}"


def _add_flag(target, cls, name, field, extra):
    flag = cls.flag_of(name)
    required = field.is_required()
    default = None if required else field.get_default(call_default_factory=True)
    help_text = field.description or ""
    base = _base_type(field.annotation)
    if base is bool:
        if extra.get("negate"):
            target.add_argument(extra["negate"], dest=name, action="store_false", default=None,
                                help=help_text)
            if extra.get("flag"):
                target.add_argument(flag, dest=name, action="store_true", default=None,
                                    help=f"the opposite of {extra['negate']}")
        else:
            target.add_argument(flag, dest=name, action="store_true", default=None, help=help_text)
        return
    if extra.get("show_default", True) and not required and default not in (None, [], ()):
        shown = f"{default:,}" if isinstance(default, int) and abs(default) >= 10_000 else default
        help_text += f" (default {shown})"
    kwargs = {"dest": name, "help": help_text, "metavar": extra.get("metavar"), "default": None}
    if extra.get("choices"):
        kwargs["choices"] = list(extra["choices"])
    if extra.get("repeat"):
        kwargs["action"] = "append"
    else:
        kwargs["type"] = {int: int, float: float}.get(base, str)
    if required:
        kwargs["required"] = True
    target.add_argument(flag, **kwargs)


def parse_known(cls, parser, argv):
    """Parses `argv` with `parser` (whose flags came from `cls.add_flags`).

    Returns:
      (checked parameters, the arguments the parser did not know: Beam's).
    """
    args, rest = parser.parse_known_args(argv)
    return cls.from_args(args), rest


def parse_all(cls, parser, argv):
    """As `parse_known`, for a job that takes no Beam flags: an unknown flag is an error."""
    params, rest = parse_known(cls, parser, argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return params


def new_parser(prog, description, epilog=None):
    """An argparse parser for a job. No abbreviated flags: a Beam flag the job does not
    know must reach Beam whole, never be taken for a prefix of one of the job's."""
    return argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                   allow_abbrev=False)
