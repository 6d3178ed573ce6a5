"""Checks of a settings dataclass's values (``CurationConfig``, ``TrainConfig``, …), run when one
is made, so a bad value is one ``ValueError`` naming its field instead of a failure deep in a
run (a ``ZeroDivisionError`` after the first step, a ``failed`` row for every video).

Each check returns None or one line naming the field; :func:`refuse` raises them together.
"""
from __future__ import annotations

import math
import numbers
import os
import tempfile
from pathlib import Path
from typing import Iterable

__all__ = ["whole", "number", "one_of", "truth", "text", "refuse", "cannot_write_in", "empty_path", "require_writable",
           "unique_keys", "read_yaml", "MAX_PROMPT_CHARS"]

#: The longest prompt (or negative prompt) taken, in characters. The text encoder reads its
#: first 77 tokens (about 300 characters of English); a prompt 30 times as long is no prompt,
#: and would fill every record, message and flow parameter it is copied into.
MAX_PROMPT_CHARS = 10_000


def _range(low, high) -> str:
    if low is not None and high is not None:
        return f"in [{low}, {high}]"
    return f"≥ {low}" if low is not None else f"≤ {high}"


def whole(name: str, value, low: int | None = None, high: int | None = None) -> str | None:
    """``value`` is an int (not a bool) within [low, high]."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool):
        return f"{name} must be a whole number, got {value!r}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name} must be a whole number {_range(low, high)}, got {value!r}"
    return None


def number(name: str, value, low: float | None = None, high: float | None = None, *,
           above: bool = False) -> str | None:
    """``value`` is a finite real number within [low, high] (above ``low``, not at it, with
    ``above``)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        return f"{name} must be a finite number, got {value!r}"
    if above and low is not None and not value > low:
        return f"{name} must be > {low}, got {value!r}"
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{name} must be {_range(low, high)}, got {value!r}"
    return None


def one_of(name: str, value, options: Iterable) -> str | None:
    options = tuple(options)
    if value not in options:
        return f"{name} must be {' or '.join(map(repr, options))}, got {value!r}"
    return None


def truth(name: str, value) -> str | None:
    if not isinstance(value, bool):
        return f"{name} must be true or false, got {value!r}"
    return None


def text(name: str, value, *, empty: bool = True, longest: int | None = None) -> str | None:
    """``value`` is a string (not blank unless ``empty``) of at most ``longest`` characters."""
    if not isinstance(value, str) or (not empty and not value.strip()):
        return f"{name} must be {'a' if empty else 'a non-empty'} string, got {value!r}"
    if longest is not None and len(value) > longest:
        return f"{name} is {len(value):,} characters long; at most {longest:,} are taken"
    return None


def refuse(owner: str, problems: Iterable[str | None]) -> None:
    """Raise one ``ValueError`` listing every problem (the Nones are checks that passed)."""
    found = [p for p in problems if p]
    if found:
        raise ValueError(f"{owner}: " + "; ".join(found))


def empty_path(what: str, value) -> str | None:
    """One line where ``value`` is a path given as an empty (or blank) string. Python reads that
    as the current folder, which is almost never what was meant: it is how an unset shell
    variable (``--out "$OUT"``) or a cleared form field arrives."""
    if isinstance(value, str) and not value.strip():
        return (f"{what} is an empty path (an unset variable?); it would mean the current folder: "
                "write . for that")
    return None


def require_writable(folder: str | os.PathLike, what: str) -> None:
    """A ``BadInputError`` naming ``what`` (the parameter) where no file can be created in
    ``folder``: an output folder that a flow's caller passed unchecked (a deployment's Run form)
    fails in its first second with that line, not at its first write. An empty path is refused
    the same way (:func:`empty_path`)."""
    from ic_data.errors import BadInputError

    problem = empty_path(what, folder)
    if problem:
        raise BadInputError(problem)
    problem = cannot_write_in(folder)
    if problem:
        raise BadInputError(f"{what} {folder}: {problem}")


def cannot_write_in(folder: str | os.PathLike) -> str | None:
    """Why no file can be created in ``folder`` (or, while it does not exist yet, in its nearest
    existing ancestor, where it would be made), or None. Tried with a file created and removed at
    once, not read from permission bits: root passes every permission check, and /proc, /sys or a
    read-only mount refuse anyway."""
    folder = Path(folder).expanduser()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    try:
        fd, name = tempfile.mkstemp(prefix=".ic-write-check-", dir=folder)
    except OSError as err:
        return f"cannot create files in {folder} ({err.strerror or err})"
    os.close(fd)
    os.unlink(name)
    return None


def unique_keys(pairs: list[tuple]) -> dict:
    """``json.loads(text, object_pairs_hook=unique_keys)``: the object as a dict, or a ValueError
    naming a key given twice (JSON alone keeps the last one, and the first is lost unsaid)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key!r} is given twice")
        out[key] = value
    return out


def read_yaml(text: str):
    """``yaml.safe_load``, refusing a mapping that gives a key twice (a ``yaml.YAMLError`` naming
    the key and its line) where PyYAML keeps the last one unsaid."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            if isinstance(node, yaml.MappingNode):
                seen = set()
                for key_node, _ in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        continue
                    key = self.construct_object(key_node, deep=True)
                    try:
                        twice = key in seen
                    except TypeError:  # an unhashable key: the base class names it
                        break
                    if twice:
                        raise yaml.constructor.ConstructorError(
                            None, None, f"the key {key!r} is given twice", key_node.start_mark)
                    seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
