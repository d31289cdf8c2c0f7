"""Admission rules and limit parsing, without NATS: the decisions the flow leader makes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.model import parse_config
from gateway.errors import ConfigError
from gateway.flow.admission import Admission, Waiter
from gateway.flow.limits import KEY_PATTERN, TokenBucket, parse_rate
from triggers.base import concurrency_key_at


def waiter(task_id: str, key: str = "", rank: int = 1) -> Waiter:
    return Waiter(None, task_id, key, rank, 0.0)


def test_key_limit_and_round_robin() -> None:
    adm = Admission(concurrency=10, key_limit=2, rate=None, now=0)
    for i in range(100):
        adm.add(waiter(f"a{i}", "A"))
    for i in range(3):
        adm.add(waiter(f"b{i}", "B"))
    started = [w.task_id for w in adm.admit(0).starts]
    assert started == ["a0", "b0", "a1", "b1"]  # two per key, keys alternating
    adm.finished("B")
    assert [w.task_id for w in adm.admit(0).starts] == ["b2"]
    adm.finished("A")
    assert [w.task_id for w in adm.admit(0).starts] == ["a2"]


def test_priority_before_any_lower_and_parked_high_blocks_lower() -> None:
    adm = Admission(concurrency=1, key_limit=None, rate=None, now=0)
    adm.add(waiter("low", rank=2))
    adm.add(waiter("normal", rank=1))
    adm.add(waiter("high", rank=0))
    assert [w.task_id for w in adm.admit(0).starts] == ["high"]
    adm.finished("")
    adm.add_parked((0, ""), 1)  # a high one parked: it is fetched, nothing lower starts meanwhile
    result = adm.admit(0)
    assert result.starts == [] and result.fetch == [(0, "")]
    adm.take_parked((0, ""))
    adm.add(waiter("high2", rank=0))
    adm.fetched((0, ""))
    assert [w.task_id for w in adm.admit(0).starts] == ["high2"]


def test_concurrency_bounds_all_keys_and_waiting_reasons() -> None:
    adm = Admission(concurrency=2, key_limit=1, rate=None, now=0)
    for key in "ABC":
        adm.add(waiter(f"{key}1", key))
        adm.add(waiter(f"{key}2", key))
    assert len(adm.admit(0).starts) == 2
    assert adm.waiting_by_reason(0) == {"concurrency": 2, "key": 2, "rate": 0}


def test_rate_bucket_spreads_starts() -> None:
    bucket = TokenBucket(parse_rate("100/s"), now=0.0)
    taken = sum(bucket.take(0.0) for _ in range(1000))
    assert taken == 10  # a tenth of the count at once, not the whole second's worth
    taken += sum(bucket.take(t / 1000) for t in range(1, 20001) for _ in range(2))
    assert 2000 <= taken <= 2010
    adm = Admission(concurrency=50, key_limit=None, rate=parse_rate("10/m"), now=0)
    for i in range(5):
        adm.add(waiter(f"t{i}"))
    result = adm.admit(0)
    assert len(result.starts) == 1 and result.rate_wait == pytest.approx(6.0)


def test_config_checks() -> None:
    fn = {"handler": "python:examples.functions:echo"}
    config = parse_config({"functions": {"f": {**fn, "key_concurrency": 2, "rate_limit": "100/s"}}})
    assert config.functions["f"].flow_controlled
    assert not parse_config({"functions": {"f": fn}}).functions["f"].flow_controlled
    for bad in ({"rate_limit": "fast"}, {"rate_limit": "0/s"}, {"key_concurrency": 0}):
        with pytest.raises(ConfigError):
            parse_config({"functions": {"f": {**fn, **bad}}})
    assert parse_rate("30/m").per_second == 0.5 and str(parse_rate("1000/h")) == "1000/h"


def test_fngate_check_names_bad_flow_keys(tmp_path: Path) -> None:
    config = tmp_path / "fngate.yaml"
    config.write_text(
        "functions:\n  f:\n    handler: python:examples.functions:echo\n"
        "    rate_limit: 10/d\n    key_concurrency: 0\n    priorities: maybe\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    output = result.stdout + result.stderr
    assert "functions.f.key_concurrency: must be 1..10000 (got 0)" in output
    assert "functions.f.rate_limit: must be a positive number of starts per s, m or h" in output
    assert "functions.f.priorities" in output


def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    config = tmp_path / "fngate.yaml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)], capture_output=True, text=True, timeout=60
    )
    return result.returncode, result.stdout + result.stderr


def test_fngate_check_names_bad_trigger_flow_options_by_path(tmp_path: Path) -> None:
    code, output = _check(
        tmp_path,
        "functions:\n  f:\n    handler: python:examples.functions:echo\n    key_concurrency: 1\n"
        "triggers:\n"
        "  - {name: hook, type: http, function: f, path: /hook, priority: urgent, concurrency_key: data..customer}\n"
        "  - {name: tick, type: timer, function: f, every: 5s, priority: HIGH, concurrency_key: payload.tenant}\n",
    )
    assert code == 2
    assert "triggers.hook.priority: priority must be high, normal or low" in output
    assert "triggers.hook.concurrency_key: must be a dotted path into the event" in output
    assert "triggers.tick" not in output  # any case of a priority; a path of two names


def test_fngate_check_warns_of_trigger_flow_options_its_function_ignores(tmp_path: Path) -> None:
    code, output = _check(
        tmp_path,
        "functions:\n  f:\n    handler: python:examples.functions:echo\n"
        "triggers:\n  - {name: tick, type: timer, function: f, every: 5s, priority: high, concurrency_key: a.b}\n",
    )
    assert code == 0, output
    assert "warning: triggers.tick.concurrency_key: function 'f' has no key_concurrency" in output
    assert "warning: triggers.tick.priority: function 'f' has no flow control" in output


def test_concurrency_key_from_an_event_path() -> None:
    event = b'{"data": {"customer": "acme", "n": 7, "name": "Globex Corp", "items": [{"sku": "x-1"}]}}'
    assert concurrency_key_at(event, ("data", "customer")) == "acme"
    assert concurrency_key_at(event, ("data", "items", "0", "sku")) == "x-1"
    assert concurrency_key_at(event, ("data", "n")) == "7"
    assert concurrency_key_at(event, ("data", "missing")) == ""
    assert concurrency_key_at(event, ("data", "customer", "deeper")) == ""
    digest = concurrency_key_at(event, ("data", "name"))
    assert digest.startswith("h:") and KEY_PATTERN.match(digest)
    assert digest == concurrency_key_at(b'{"data": {"name": "Globex Corp"}}', ("data", "name"))
    assert concurrency_key_at(b"[" + event + b"," + event.replace(b"acme", b"b") + b"]", ("data", "customer")) == "acme"
    assert concurrency_key_at(b"not json", ("data",)) == ""
