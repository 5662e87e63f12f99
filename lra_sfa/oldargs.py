"""One line for a command line in an entry point's retired argparse form.

Every entry point is a Hydra app (``key=value`` overrides of its config under
``conf/``). Commands typed in the earlier ``--flag value`` form must not just
fail in Hydra's several-line parse error: ``replacement`` recognises them
(an option the old parser had, or its leading positional word) and spells the
Hydra command that does the same, which the app prints instead of running.
Written here rather than with argparse because the point is to translate the
old line, not to parse it: values are carried over as typed.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence


def _hydra_value(values: list[str], as_list: bool) -> str:
    if as_list:
        items = [item for value in values for item in value.split(",") if item]
        return "[" + ",".join(items) + "]"
    return " ".join(values) if values else "true"


# the training config's groups and keys: what the old form passed through to a run (``attn=sfa``)
RUN_ROOTS = ("attn", "task", "model", "trainer", "experiment", "seed", "paths", "resume")


def _foreign(arg: str, keys: Sequence[str]) -> bool:
    """``arg`` is a ``key=value`` override of a run's config that the new config does not have (a mistyped key
    of the new config is not: Hydra names it)."""
    key, sep, _ = arg.lstrip("+~").partition("=")
    root = key.split(".")[0].split("/")[0]
    return bool(sep) and not arg.startswith("-") and root in RUN_ROOTS and root not in (*keys, "hydra")


def replacement(command: str, config: str, argv: Sequence[str], options: Mapping[str, str],
                lists: Sequence[str] = (), positional: tuple[str, Sequence[str]] | None = None,
                rest: str | None = None, keys: Sequence[str] = ()) -> str | None:
    """The Hydra command replacing ``argv`` when it is in the old argparse form, else None.

    ``options`` maps each old option name (without ``--``) to its config key; names in ``lists`` took
    several values (``--lengths 1024 4096`` or ``1024,4096``) and become ``key=[1024,4096]``; an option
    given without a value was a switch and becomes ``key=true``. ``positional`` = (key, words): a first
    argument among ``words`` (``samples``) becomes ``key=word``. ``rest``: the list key that takes the
    old line's remaining ``key=value`` arguments (overrides passed through to another config), quoted;
    with ``rest``, an argument whose key is none of the new config's ``keys`` (nor ``hydra``) also marks
    the old form (``attn=sfa`` was passed through).
    """
    args = list(argv)
    parts: list[str] = []
    if positional and args and args[0] in positional[1]:
        parts.append(f"{positional[0]}={args.pop(0)}")
    elif not any(arg.startswith("--") and arg[2:].partition("=")[0] in options for arg in args) and not (
            rest and any(_foreign(arg, keys) for arg in args)):
        return None
    passed: list[str] = []
    current: tuple[str, list[str]] | None = None
    for arg in [*args, "--"]:
        if current and not arg.startswith("--") and "=" not in arg:
            current[1].append(arg)
            continue
        if current:
            name, values = current
            parts.append(f"{options[name]}={_hydra_value(values, name in lists)}")
            current = None
        if arg.startswith("--") and arg != "--":
            name, _, value = arg[2:].partition("=")
            if name not in options:
                return f"{command}: {arg.partition('=')[0]} is no option; see {command} --help ({config})"
            current = (name, [value] if value else [])
        elif arg != "--" and rest and _foreign(arg, keys):
            passed.append(arg)
        elif arg != "--":
            parts.append(arg)
    if passed:
        parts.append(f'"{rest}=[' + ",".join(f"'{item}'" for item in passed) + ']"')
    return f"{command} takes Hydra overrides now ({config}): {command} {' '.join(parts)}"


def exit_if_old_form(message: str | None) -> None:
    """Stop with ``message`` (one line on stderr, exit status 2) when the command line was the old form."""
    if message:
        print(message, file=sys.stderr)
        raise SystemExit(2)
