"""The event-pattern matcher on its own: EventBridge semantics, and errors that name the place."""

from __future__ import annotations

from typing import Any

import pytest

from triggers.pattern import PatternError, compile_pattern

EVENT: dict[str, Any] = {
    "type": "fngate.kafka.message",
    "subject": "orders.eu",
    "data": {
        "kind": "order.created",
        "amount": 300,
        "ratio": 0.25,
        "customer": {"tier": "Gold", "id": "c-17"},
        "tags": ["new", "vip"],
        "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-9", "qty": 1}],
        "note": None,
        "paid": True,
        "file": "photo.PNG",
    },
}


def matches(pattern: Any, event: Any = EVENT) -> bool:
    return compile_pattern(pattern).matches(event)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ({"data": {"kind": ["order.created"]}}, True),
        ({"data": {"kind": ["order.updated", "order.created"]}}, True),
        ({"data": {"kind": ["order.updated"]}}, False),
        ({"data": {"amount": [300]}}, True),
        ({"data": {"amount": [3.0e2]}}, True),
        ({"data": {"amount": ["300"]}}, False),
        ({"data": {"paid": [True]}}, True),
        ({"data": {"paid": [1]}}, False),
        ({"data": {"note": [None]}}, True),
        ({"data": {"missing": [None]}}, False),
        ({"data": {"tags": ["vip"]}}, True),
        ({"data": {"tags": ["old"]}}, False),
        ({"data": {"items": {"sku": ["B-9"]}}}, True),
        ({"data": {"items": {"sku": ["C-1"]}}}, False),
        ({"data": {"customer": {"tier": ["Gold"]}}, "subject": ["orders.eu"]}, True),
        ({"data": {"customer": {"tier": ["Gold"]}}, "subject": ["orders.us"]}, False),
        ({"data": {"kind": "order.created"}}, PatternError),
    ],
)
def test_exact_values(pattern: Any, expected: Any) -> None:
    if expected is PatternError:
        with pytest.raises(PatternError):
            compile_pattern(pattern)
    else:
        assert matches(pattern) is expected


@pytest.mark.parametrize(
    ("matcher", "field", "expected"),
    [
        ({"prefix": "order."}, "kind", True),
        ({"prefix": "invoice."}, "kind", False),
        ({"prefix": {"equals-ignore-case": "ORDER."}}, "kind", True),
        ({"suffix": ".png"}, "file", False),
        ({"suffix": {"equals-ignore-case": ".png"}}, "file", True),
        ({"equals-ignore-case": "ORDER.CREATED"}, "kind", True),
        ({"wildcard": "order.*"}, "kind", True),
        ({"wildcard": "*.created"}, "kind", True),
        ({"wildcard": "o*r.c*d"}, "kind", True),
        ({"wildcard": "order"}, "kind", False),
        ({"prefix": "3"}, "amount", False),  # string matchers never match numbers
        ({"anything-but": "order.updated"}, "kind", True),
        ({"anything-but": ["order.created", "x"]}, "kind", False),
        ({"anything-but": 300}, "amount", False),
        ({"anything-but": [1, 2]}, "amount", True),
        ({"anything-but": {"prefix": "order."}}, "kind", False),
        ({"anything-but": {"suffix": ".deleted"}}, "kind", True),
        ({"anything-but": {"wildcard": "*.created"}}, "kind", False),
        ({"anything-but": {"equals-ignore-case": ["ORDER.CREATED"]}}, "kind", False),
        ({"anything-but": "x"}, "missing", False),
        ({"numeric": [">", 0, "<=", 300]}, "amount", True),
        ({"numeric": [">", 300]}, "amount", False),
        ({"numeric": ["=", 0.25]}, "ratio", True),
        ({"numeric": [">=", 0]}, "kind", False),
        ({"numeric": ["<", 1]}, "paid", False),  # a boolean is not a number
        ({"exists": True}, "kind", True),
        ({"exists": True}, "missing", False),
        ({"exists": False}, "missing", True),
        ({"exists": False}, "kind", False),
        ({"exists": True}, "tags", True),
        ({"exists": True}, "note", True),
    ],
)
def test_content_matchers(matcher: dict[str, Any], field: str, expected: bool) -> None:
    assert matches({"data": {field: [matcher]}}) is expected


def test_a_matcher_on_an_object_field_needs_a_leaf() -> None:
    assert matches({"data": {"customer": [{"exists": True}]}}) is True
    assert matches({"data": {"customer": {"id": [{"prefix": "c-"}], "tier": [{"anything-but": "Silver"}]}}}) is True


def test_or_of_patterns() -> None:
    pattern = {"$or": [{"data": {"amount": [{"numeric": [">", 1000]}]}}, {"data": {"customer": {"tier": ["Gold"]}}}]}
    assert matches(pattern) is True
    assert matches({"$or": [{"subject": ["a"]}, {"subject": ["b"]}]}) is False


def test_events_that_are_not_objects_do_not_match() -> None:
    pattern = compile_pattern({"data": {"kind": [{"exists": True}]}})
    events: tuple[object, ...] = (None, [], "text", 3, {"data": "not an object"}, {"data": [1, 2]})
    for event in events:
        assert pattern.matches(event) is False
    assert compile_pattern({"data": {"x": [{"exists": False}]}}).matches({"data": "s"}) is True


@pytest.mark.parametrize(
    ("pattern", "where"),
    [
        ({}, "(pattern)"),
        ({"data": {"kind": []}}, "data.kind"),
        ({"data": {"kind": [{"prefix": 3}]}}, "data.kind.0.prefix"),
        ({"data": {"kind": [{"numeric": [">", "a"]}]}}, "data.kind.0.numeric.1"),
        ({"data": {"kind": [{"numeric": ["~", 1]}]}}, "data.kind.0.numeric.0"),
        ({"data": {"kind": [{"numeric": ["<", 1, ">", 0]}]}}, "data.kind.0.numeric"),
        ({"data": {"kind": [{"nope": 1}]}}, "data.kind.0.nope"),
        ({"data": {"kind": [{"exists": "yes"}]}}, "data.kind.0.exists"),
        ({"data": {"kind": [{"prefix": "a", "suffix": "b"}]}}, "data.kind.0"),
        ({"data": {"kind": [{"wildcard": "a**b"}]}}, "data.kind.0.wildcard"),
        ({"data": {"kind": [float("nan")]}}, "data.kind.0"),
        ({"$or": [{"a": [1]}]}, "$or"),
        ({"data": {"kind": [{"anything-but": []}]}}, "data.kind.0.anything-but"),
    ],
)
def test_bad_patterns_name_the_place(pattern: Any, where: str) -> None:
    with pytest.raises(PatternError) as caught:
        compile_pattern(pattern)
    assert str(caught.value).startswith(f"{where}:"), caught.value


def test_wildcard_escapes_and_literal_characters() -> None:
    assert compile_pattern({"a": [{"wildcard": "x\\*y"}]}).matches({"a": "x*y"}) is True
    assert compile_pattern({"a": [{"wildcard": "x\\*y"}]}).matches({"a": "xzy"}) is False
    assert compile_pattern({"a": [{"wildcard": "a.c*"}]}).matches({"a": "abc"}) is False
