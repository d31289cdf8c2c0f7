"""The pure helpers under the gateway, without a server: cron weekdays and catch-up, the
invocation header, ack subjects, `iso()` and destination cycles. Milliseconds each; the
end-to-end tests that use them take seconds and would not say which helper went wrong."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg
from nats.js.errors import APIError

from gateway.config.model import Config
from gateway.history.feed import ack_position
from gateway.history.model import iso_ms, to_ms
from gateway.jetstream.publisher import DuplicateMessage, parse_ack
from gateway.tasks import constants as c
from gateway.tasks.invocation import (
    MAX_CHAIN_DEPTH_VALUE,
    Invocation,
    Lineage,
    Source,
    iso,
    lineage_from_headers,
    parse_iso,
)
from sinks.base import cycle_warnings
from triggers.timer import TimerOptions, cron_schedule, latest_tick, tick_task_id, weekday_names

UTC_ZONE = ZoneInfo("UTC")
# A Wednesday: the weekday tests count from it.
WEDNESDAY = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)

# --- cron weekdays ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "names"),
    [
        ("0", "sun"),
        ("7", "sun"),
        ("1-5", "mon,tue,wed,thu,fri"),
        ("5-7", "fri,sat,sun"),
        ("0,7", "sun"),  # the same day twice is named once
        ("*/2", "sun,tue,thu,sat"),
        ("1/2", "mon,wed,fri"),  # from Monday on, every second day
        ("1-5/2", "mon,wed,fri"),
        ("6,0", "sat,sun"),
        ("*", "*"),
        ("MON-FRI", "mon-fri"),  # names pass through to APScheduler as they are
        ("sat,1", "sat,mon"),
    ],
)
def test_cron_weekday_numbers_become_names(field: str, names: str) -> None:
    assert weekday_names(field) == names


@pytest.mark.parametrize("field", ["8", "5-3", "0-9", "*/0"])
def test_bad_cron_weekdays_are_refused(field: str) -> None:
    with pytest.raises(ValueError):
        weekday_names(field)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # cron's Sunday, 0 or 7 — APScheduler alone would read 0 as Monday.
        ("0 9 * * 0", datetime(2026, 12, 6, 9, 0, tzinfo=UTC)),
        ("0 9 * * 7", datetime(2026, 12, 6, 9, 0, tzinfo=UTC)),
        ("0 9 * * 1", datetime(2026, 12, 7, 9, 0, tzinfo=UTC)),
        ("0 9 * * 1-5", datetime(2026, 12, 3, 9, 0, tzinfo=UTC)),  # Wednesday noon: Thursday next
        ("30 0 9 * * ?", datetime(2026, 12, 3, 9, 0, 30, tzinfo=UTC)),  # 6 fields, `?` is any
    ],
)
def test_cron_next_tick_counts_weekdays_from_sunday(expression: str, expected: datetime) -> None:
    assert cron_schedule(expression, UTC_ZONE).get_next_fire_time(None, WEDNESDAY) == expected


def test_cron_needs_five_or_six_fields() -> None:
    with pytest.raises(ValueError, match="6 fields"):
        cron_schedule("* * * *", UTC_ZONE)
    with pytest.raises(ValueError, match="invalid cron"):
        cron_schedule("0 61 * * *", UTC_ZONE)


# --- catch-up ---------------------------------------------------------------------------


def schedule_of(**options: Any) -> Any:
    return TimerOptions.model_validate(options).schedule()


def test_latest_tick_is_the_last_one_in_the_window_after_exclusive_now_inclusive() -> None:
    hourly = schedule_of(cron="0 * * * *")
    after = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    assert latest_tick(hourly, after, datetime(2026, 12, 2, 12, 30, tzinfo=UTC)) == datetime(
        2026, 12, 2, 12, 0, tzinfo=UTC
    )
    # The tick at `after` was fired already; one exactly at `now` is due.
    assert latest_tick(hourly, after, datetime(2026, 12, 2, 9, 59, tzinfo=UTC)) is None
    assert latest_tick(hourly, after, datetime(2026, 12, 2, 10, 0, tzinfo=UTC)) == datetime(
        2026, 12, 2, 10, 0, tzinfo=UTC
    )


def test_latest_tick_after_long_downtime_and_rare_schedules() -> None:
    now = datetime(2026, 12, 2, 12, 0, 0, 400000, tzinfo=UTC)
    # A per-second schedule after a week down: the latest second, not the first missed one.
    every_second = schedule_of(every="1s")
    assert latest_tick(every_second, now - timedelta(days=7), now) == datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
    # A yearly tick missed eleven months ago is found through the widest windows.
    yearly = schedule_of(cron="0 0 1 1 *")
    assert latest_tick(yearly, datetime(2025, 6, 1, tzinfo=UTC), now) == datetime(2026, 1, 1, tzinfo=UTC)
    assert latest_tick(yearly, datetime(2026, 1, 1, tzinfo=UTC), now) is None


def test_latest_tick_of_a_one_time_schedule() -> None:
    at = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
    once = schedule_of(at=at.isoformat())
    assert latest_tick(once, at - timedelta(hours=1), WEDNESDAY) == at
    # Fired already, or passed before the trigger first ran: not missed.
    assert latest_tick(once, at, WEDNESDAY) is None
    assert latest_tick(once, at + timedelta(hours=5), WEDNESDAY) is None
    assert latest_tick(once, at - timedelta(hours=1), at - timedelta(minutes=1)) is None


def test_latest_tick_honours_the_time_zone() -> None:
    # 09:00 in Berlin is 08:00 UTC in winter.
    berlin = schedule_of(cron="0 9 * * *", timezone="Europe/Berlin")
    found = latest_tick(berlin, datetime(2026, 12, 1, 12, 0, tzinfo=UTC), WEDNESDAY)
    assert found is not None and found.astimezone(UTC) == datetime(2026, 12, 2, 8, 0, tzinfo=UTC)


def test_tick_ids_round_to_the_millisecond() -> None:
    tick = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    assert tick_task_id("nightly", tick) == "tick-nightly-20261201T020000-000Z"
    # Float noise from interval arithmetic on either side of the tick gives the same id.
    assert tick_task_id("nightly", tick - timedelta(microseconds=3)) == tick_task_id("nightly", tick)
    assert tick_task_id("nightly", tick + timedelta(microseconds=3)) == tick_task_id("nightly", tick)
    assert tick_task_id("n", tick + timedelta(milliseconds=999, microseconds=700)) == "tick-n-20261201T020001-000Z"


# --- iso() ------------------------------------------------------------------------------


def reference_iso(ts: float) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1.2345, "1970-01-01T00:00:01.234Z"),  # milliseconds are cut, as datetime's isoformat does
        (1.9999996, "1970-01-01T00:00:02.000Z"),  # rounds up to the next second, not to .1000
        (1.9994, "1970-01-01T00:00:01.999Z"),
        (1796184001.12, "2026-12-02T04:00:01.120Z"),
    ],
)
def test_iso_formats_and_rounds_like_datetime(ts: float, text: str) -> None:
    assert iso(ts) == text == reference_iso(ts)
    assert iso(None) is None


@given(st.lists(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False), min_size=1, max_size=20))
def test_iso_agrees_with_datetime_across_cached_seconds(stamps: list[float]) -> None:
    # More distinct seconds than the cache holds, in any order: the cache never leaks one
    # second's text into another's.
    assert [iso(ts) for ts in stamps] == [reference_iso(ts) for ts in stamps]


# --- the invocation header --------------------------------------------------------------

tokens = st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-", min_size=1, max_size=20)
stamps = st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False)


@given(
    task_id=tokens,
    function=tokens,
    submitted=stamps,
    scheduled=stamps,
    not_before=stamps,
    attempt=st.integers(0, 1000),
    transient=st.integers(0, 1000),
    source=st.tuples(st.text(max_size=10), st.text(max_size=10)),
    chain=st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True),
    depth=st.integers(1, MAX_CHAIN_DEPTH_VALUE),
    priority=st.sampled_from(["high", "normal", "low"]),
    key=st.text(alphabet="abcxyz0123:-", max_size=12),
)
def test_the_invocation_header_round_trips(
    task_id: str,
    function: str,
    submitted: float,
    scheduled: float,
    not_before: float,
    attempt: int,
    transient: int,
    source: tuple[str, str],
    chain: str,
    depth: int,
    priority: str,
    key: str,
) -> None:
    inv = Invocation(
        task_id=task_id,
        function=function,
        payload=b'{"a": 1}',
        submitted_at=submitted,
        scheduled_at=scheduled,
        not_before=not_before,
        attempt=attempt,
        transient=transient,
        # Any text, `|` included: the header percent-encodes the source.
        source=Source(*source),
        lineage=Lineage(chain, depth),
        priority=priority,
        concurrency_key=key,
    )
    headers = inv.headers()
    back = Invocation.from_message(headers, inv.payload)
    assert back == inv.but(scheduled_at=scheduled or submitted)
    assert Invocation.identity(headers) == (task_id, function, submitted)
    assert Invocation.flow(headers) == (task_id, scheduled or submitted, not_before, priority, key)
    # Flow control's two fields only when set: the common header keeps its twelve.
    flow_fields = priority != "normal" or bool(key)
    assert len(headers[c.H_INVOCATION].split("|")) == (14 if flow_fields else 12)


def test_the_invocation_header_carries_trace_context_only_when_set() -> None:
    plain = Invocation("t1", "fn", b"")
    assert set(plain.headers()) == {c.H_INVOCATION, c.H_CONTENT_TYPE}
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    traced = plain.but(traceparent=parent, tracestate="k=v")
    headers = traced.headers()
    assert (headers[c.H_TRACEPARENT], headers[c.H_TRACESTATE]) == (parent, "k=v")
    back = Invocation.from_message(headers, b"")
    assert (back.traceparent, back.tracestate) == (parent, "k=v")
    # A tracestate means nothing without its traceparent.
    assert c.H_TRACESTATE not in plain.but(tracestate="k=v").headers()
    assert Invocation.from_message({c.H_INVOCATION: plain.headers()[c.H_INVOCATION]}, None).content_type == (
        "application/octet-stream"
    )


@pytest.mark.parametrize(
    "meta",
    ["2|t|fn|1.0|1.0|0|0|0|api||c|1", "1|t|fn|1.0|1.0|0|0|0|api||c", "1|t|fn|1.0|1.0|0|0|0|api||c|1|high"],
)
def test_unknown_invocation_headers_are_refused(meta: str) -> None:
    with pytest.raises(ValueError, match="unknown invocation header"):
        Invocation.from_message({c.H_INVOCATION: meta}, b"")
    with pytest.raises(ValueError, match="unknown invocation header"):
        Invocation.flow({c.H_INVOCATION: meta})


def test_lineage_from_outside_headers() -> None:
    assert lineage_from_headers({}) is None
    carried = lineage_from_headers({c.H_CHAIN_ID: "c-abc", c.H_CHAIN_DEPTH: "3"})
    assert carried is not None and (carried.chain_id, carried.depth) == ("c-abc", 4)
    # A malformed chain id starts a new chain but keeps the depth loop detection needs.
    renamed = lineage_from_headers({c.H_CHAIN_ID: "bad|id", c.H_CHAIN_DEPTH: "3"})
    assert renamed is not None and renamed.chain_id != "bad|id" and renamed.depth == 4
    # A malformed depth counts as 0; a huge one is capped.
    for depth, expected in (("x", 1), ("-2", 1), ("9999999", 1), ("100000", MAX_CHAIN_DEPTH_VALUE + 1)):
        lineage = lineage_from_headers({c.H_CHAIN_ID: "c-abc", c.H_CHAIN_DEPTH: depth})
        assert lineage is not None and lineage.depth == expected, depth


# --- ack_position -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reply",
    [
        "$JS.ACK.FNGATE_TASKS.index.1.4711.42.1796184001120000000.9",  # without domain and account hash
        "$JS.ACK._.ACCHASH.FNGATE_TASKS.index.2.4711.42.1796184001120000000.9.token",
        "$JS.ACK.hub.ACCHASH.FNGATE_TASKS.index.1.18446744073709551615.1.1796184001120000001.0.x",
    ],
)
def test_ack_position_agrees_with_the_clients_metadata(reply: str) -> None:
    meta = Msg.Metadata._from_reply(reply)
    tokens = reply.split(".")
    stored_ns = int(tokens[7] if len(tokens) == 9 else tokens[9])
    assert ack_position(reply) == (meta.sequence.stream, meta.num_pending, stored_ns)
    # The nanoseconds kept whole: the client's datetime has only microseconds.
    assert abs(stored_ns / 1e9 - meta.timestamp.timestamp()) < 1e-5


# --- destination cycles -----------------------------------------------------------------


def config_with(edges: dict[str, dict[str, str]]) -> Config:
    functions: dict[str, Any] = {}
    for name in {*edges, *(t for targets in edges.values() for t in targets.values())}:
        destinations = {key: {"type": "function", "function": target} for key, target in edges.get(name, {}).items()}
        functions[name] = {"handler": "python:examples.functions:echo", "async": destinations}
    return Config.model_validate({"functions": functions})


def test_cycles_among_function_destinations_are_warned_about_once() -> None:
    warnings = cycle_warnings(
        config_with(
            {"a": {"on_success": "b"}, "b": {"on_failure": "c"}, "c": {"on_success": "a"}, "d": {"on_success": "d"}}
        )
    )
    assert warnings == [
        "functions.a.async.on_success: destinations form a cycle a -> b -> c -> a "
        "(stopped at max_chain_depth 16 at run time)",
        "functions.d.async.on_success: destinations form a cycle d -> d (stopped at max_chain_depth 16 at run time)",
    ]


def test_chains_without_a_way_back_are_not_cycles() -> None:
    assert cycle_warnings(config_with({"a": {"on_success": "b", "on_failure": "c"}, "b": {"on_success": "c"}})) == []
    # Destinations of other types never close a cycle.
    other = Config.model_validate(
        {
            "functions": {
                "a": {
                    "handler": "python:examples.functions:echo",
                    "async": {"on_success": {"type": "queue", "backend": "nats", "subject": "a"}},
                }
            }
        }
    )
    assert cycle_warnings(other) == []


def test_two_cycles_through_one_function_are_both_named() -> None:
    warnings = cycle_warnings(
        config_with({"a": {"on_success": "b", "on_failure": "c"}, "b": {"on_success": "a"}, "c": {"on_success": "a"}})
    )
    assert [w.split(": ", 1)[1].split(" (")[0] for w in warnings] == [
        "destinations form a cycle a -> c -> a",
        "destinations form a cycle a -> b -> a",
    ]


# --- JetStream publish acks ---------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b'{"stream":"FNGATE_TASKS", "seq":1042}',  # as nats-server 2.9 writes it
        b'{"stream":"FNGATE_TASKS","seq":1042}',
        b'{"stream":"FNGATE_TASKS", "seq": 1042}',
        b'{"stream":"FNGATE_TASKS","domain":"hub","seq":1042}',
        b'{"stream":"FNGATE_TASKS","seq":1042,"domain":"hub"}',
    ],
)
def test_an_ack_gives_its_sequence_with_or_without_the_json_parse(data: bytes) -> None:
    assert parse_ack(data) == 1042


def test_a_duplicate_or_refused_publish_is_never_read_as_stored() -> None:
    duplicate = b'{"stream":"FNGATE_TASKS", "seq":7,"duplicate": true}'
    with pytest.raises(DuplicateMessage) as held:
        parse_ack(duplicate)
    assert held.value.seq == 7
    refused = b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 1"},"stream":"S","seq":0}'
    with pytest.raises(APIError) as error:
        parse_ack(refused)
    assert error.value.err_code == 10071


@given(st.floats(min_value=0, max_value=4_102_444_800, allow_nan=False))
def test_a_stamp_iso_writes_reads_back_to_the_milliseconds_of_the_general_parse(ts: float) -> None:
    stamp = iso(ts)
    assert iso_ms(stamp) == to_ms(parse_iso(stamp))


@pytest.mark.parametrize(
    "stamp", ["2026-12-02T12:00:00Z", "2026-12-02T12:00:00.5+00:00", "2026-12-02T12:00:00.123456Z"]
)
def test_other_iso_forms_take_the_general_parse(stamp: str) -> None:
    assert iso_ms(stamp) == to_ms(parse_iso(stamp))


def test_a_stamp_with_an_offset_in_its_second_is_no_stamp_of_iso() -> None:
    with pytest.raises(ValueError):
        iso_ms("2026-11-22T16:20+01.123Z")
