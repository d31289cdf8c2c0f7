"""Event patterns in the syntax of Amazon EventBridge, compiled once and matched against events.

A pattern is a JSON object whose keys name fields of the event; a nested object descends
into the event, a leaf is a list of matchers of which one must match (OR), and every key
of the pattern must match (AND). Matchers: exact values (string, number, boolean, null),
`{"prefix": s}`, `{"suffix": s}` (either also `{"equals-ignore-case": s}` inside),
`{"equals-ignore-case": s}`, `{"wildcard": "a*b"}`, `{"anything-but": v | [v…] |
{"prefix"|"suffix"|"wildcard"|"equals-ignore-case": …}}`, `{"numeric": [">", 0, "<=", 5]}`,
`{"exists": true|false}`, and `{"$or": [pattern, …]}` at any object level.

An event value that is a list matches when any of its elements does (EventBridge flattens
arrays). Exact numbers compare as numbers (`300` matches `3.0e2`), never as strings, and
a boolean is never a number. Pure: no I/O, no state, so it is cheap to test and to reuse.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from gateway.errors import FngateError

Matcher = Callable[[Any, bool], bool]  # (value, present) -> matched
_MISSING = object()
_NUMERIC_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "=": lambda a, b: a == b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


class PatternError(FngateError, ValueError):
    """A pattern that cannot be compiled; the message names the place in the pattern."""

    status = 400
    code = "InvalidPattern"


class EventPattern:
    """A compiled pattern: `matches(event)` is all there is."""

    def __init__(self, pattern: Any) -> None:
        self.source = pattern
        self._match = _compile_object(pattern, "")

    def matches(self, event: Any) -> bool:
        return self._match(event)


def compile_pattern(pattern: Any) -> EventPattern:
    """Compile `pattern`, raising PatternError (naming the key) when it is not a valid one."""
    return EventPattern(pattern)


def _where(path: str) -> str:
    return path or "(pattern)"


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _compile_object(pattern: Any, path: str) -> Callable[[Any], bool]:
    if not isinstance(pattern, Mapping) or not pattern:
        raise PatternError(f"{_where(path)}: must be a non-empty object")
    checks: list[Callable[[Any], bool]] = []
    for key, sub in pattern.items():
        here = f"{path}.{key}" if path else str(key)
        if key == "$or":
            if not isinstance(sub, list) or len(sub) < 2:
                raise PatternError(f"{here}: must be a list of at least two patterns")
            alternatives = [_compile_object(p, f"{here}.{i}") for i, p in enumerate(sub)]
            checks.append(_any_of(alternatives))
        elif isinstance(sub, Mapping):
            checks.append(_descend(str(key), _compile_object(sub, here)))
        elif isinstance(sub, list):
            checks.append(_leaf(str(key), _compile_leaf(sub, here)))
        else:
            raise PatternError(f"{here}: must be an object or a list of matchers, got {type(sub).__name__}")
    return lambda event: all(check(event) for check in checks)


def _any_of(alternatives: list[Callable[[Any], bool]]) -> Callable[[Any], bool]:
    return lambda event: any(alt(event) for alt in alternatives)


def _descend(key: str, inner: Callable[[Any], bool]) -> Callable[[Any], bool]:
    def check(event: Any) -> bool:
        if not isinstance(event, Mapping):
            return inner({})
        value = event.get(key, _MISSING)
        # What is not an object has no fields: matched as an empty one, so `exists: false` holds.
        if isinstance(value, list):
            objects = [v for v in value if isinstance(v, Mapping)]
            return any(inner(v) for v in objects) if objects else inner({})
        return inner(value if isinstance(value, Mapping) else {})

    return check


def _leaf(key: str, matchers: list[Matcher]) -> Callable[[Any], bool]:
    def check(event: Any) -> bool:
        value = event.get(key, _MISSING) if isinstance(event, Mapping) else _MISSING
        present = value is not _MISSING
        if isinstance(value, list):
            # exists: a list counts as present; every other matcher looks at its elements
            return any(m(None, True) for m in matchers if getattr(m, "exists", False)) or any(
                m(v, True) for v in value for m in matchers if not getattr(m, "exists", False)
            )
        return any(m(value, present) for m in matchers)

    return check


def _compile_leaf(matchers: list[Any], path: str) -> list[Matcher]:
    if not matchers:
        raise PatternError(f"{path}: an empty list matches nothing")
    return [_compile_matcher(m, f"{path}.{i}") for i, m in enumerate(matchers)]


def _compile_matcher(spec: Any, path: str) -> Matcher:
    if spec is None:
        return lambda value, present: present and value is None
    if isinstance(spec, bool):
        return lambda value, present: present and isinstance(value, bool) and value is spec
    if _is_number(spec):
        if not math.isfinite(spec):
            raise PatternError(f"{path}: numbers must be finite")
        return lambda value, present: present and _is_number(value) and value == spec
    if isinstance(spec, str):
        return lambda value, present: present and isinstance(value, str) and value == spec
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise PatternError(f"{path}: a matcher is a value or an object with exactly one key")
    ((op, arg),) = spec.items()
    here = f"{path}.{op}"
    if op == "exists":
        if not isinstance(arg, bool):
            raise PatternError(f"{here}: must be true or false")
        matcher: Matcher = lambda value, present: present is arg  # noqa: E731
        matcher.exists = True  # type: ignore[attr-defined]
        return matcher
    if op == "numeric":
        return _numeric(arg, here)
    if op == "anything-but":
        return _anything_but(arg, here)
    test = _string_test(op, arg, here)
    return lambda value, present: present and isinstance(value, str) and test(value)


def _string_test(op: str, arg: Any, path: str) -> Callable[[str], bool]:
    """prefix, suffix, equals-ignore-case, wildcard: a test of a string value."""
    if op in ("prefix", "suffix"):
        if (
            isinstance(arg, Mapping)
            and list(arg) == ["equals-ignore-case"]
            and isinstance(arg["equals-ignore-case"], str)
        ):
            folded = arg["equals-ignore-case"].casefold()
            if op == "prefix":
                return lambda s: s.casefold().startswith(folded)
            return lambda s: s.casefold().endswith(folded)
        if not isinstance(arg, str):
            raise PatternError(f"{path}: must be a string (or {{equals-ignore-case: string}})")
        if op == "prefix":
            return lambda s: s.startswith(arg)
        return lambda s: s.endswith(arg)
    if op == "equals-ignore-case":
        if not isinstance(arg, str):
            raise PatternError(f"{path}: must be a string")
        folded = arg.casefold()
        return lambda s: s.casefold() == folded
    if op == "wildcard":
        if not isinstance(arg, str):
            raise PatternError(f"{path}: must be a string")
        if "**" in arg:
            raise PatternError(f"{path}: consecutive wildcards are not allowed")
        # `*` matches any run of characters; `\*` is a literal star (EventBridge's escape).
        parts = re.split(r"(?<!\\)\*", arg)
        regex = re.compile(".*".join(re.escape(p.replace("\\*", "*")) for p in parts), re.DOTALL)
        return lambda s: regex.fullmatch(s) is not None
    raise PatternError(
        f"{path}: unknown matcher {op!r} (known: prefix, suffix, equals-ignore-case, wildcard, "
        "anything-but, numeric, exists)"
    )


def _numeric(arg: Any, path: str) -> Matcher:
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise PatternError(f"{path}: must be [op, number] or [op, number, op, number]")
    tests: list[tuple[Callable[[Any, Any], bool], float]] = []
    for i in range(0, len(arg), 2):
        op, bound = arg[i], arg[i + 1]
        if op not in _NUMERIC_OPS:
            raise PatternError(f"{path}.{i}: unknown comparison {op!r} (known: {', '.join(_NUMERIC_OPS)})")
        if not _is_number(bound) or not math.isfinite(bound):
            raise PatternError(f"{path}.{i + 1}: must be a finite number")
        tests.append((_NUMERIC_OPS[op], bound))
    if len(tests) == 2 and (arg[0] not in (">", ">=") or arg[2] not in ("<", "<=")):
        raise PatternError(f"{path}: a range is a lower bound (> or >=) then an upper one (< or <=)")

    def matcher(value: Any, present: bool) -> bool:
        if not (present and _is_number(value) and math.isfinite(value)):
            return False
        return all(compare(value, bound) for compare, bound in tests)

    return matcher


def _anything_but(arg: Any, path: str) -> Matcher:
    if isinstance(arg, Mapping):
        if len(arg) != 1 or next(iter(arg)) not in ("prefix", "suffix", "wildcard", "equals-ignore-case"):
            raise PatternError(
                f"{path}: takes a value, a list of values, or one of prefix, suffix, wildcard, equals-ignore-case"
            )
        ((op, inner),) = arg.items()
        if op == "equals-ignore-case" and isinstance(inner, list):
            folded = {s.casefold() for s in inner if isinstance(s, str)}
            if len(folded) != len(inner):
                raise PatternError(f"{path}.{op}: must be strings")
            return lambda value, present: present and isinstance(value, str) and value.casefold() not in folded
        test = _string_test(op, inner, f"{path}.{op}")
        return lambda value, present: present and isinstance(value, str) and not test(value)
    values = arg if isinstance(arg, list) else [arg]
    if not values or not all(isinstance(v, str) or (_is_number(v) and math.isfinite(v)) for v in values):
        raise PatternError(f"{path}: values must be strings or finite numbers")
    strings = {v for v in values if isinstance(v, str)}
    numbers = [v for v in values if not isinstance(v, str)]

    def matcher(value: Any, present: bool) -> bool:
        if not present:
            return False  # anything-but matches only a field that is there
        if isinstance(value, str):
            return value not in strings
        if _is_number(value):
            return value not in numbers
        return True

    return matcher
