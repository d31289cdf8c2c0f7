"""`fngate check` asks each trigger type to validate its own options, naming every bad key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from gateway.cli.main import full_check

ROOT = Path(__file__).resolve().parents[2]


def check(tmp_path: Path, triggers: list[dict[str, Any]]) -> list[str]:
    config = {"functions": {"fn": {"handler": "python:examples.functions:echo"}}, "triggers": triggers}
    path = tmp_path / "fngate.yaml"
    path.write_text(yaml.safe_dump(config))
    _config, errors, _warnings = full_check(str(path))
    return errors


def test_good_options_of_every_type_pass(tmp_path: Path) -> None:
    triggers: list[dict[str, Any]] = [
        {
            "name": "h",
            "type": "http",
            "function": "fn",
            "path": "/hooks/h",
            "auth": {"type": "hmac-sha256", "secret": "s"},
        },
        {"name": "t", "type": "timer", "function": "fn", "cron": "0 30 2 * * 1-5", "timezone": "Europe/Berlin"},
        {"name": "f", "type": "file", "function": "fn", "path": str(tmp_path), "events": ["created", "moved"]},
        {"name": "k", "type": "kafka", "function": "fn", "bootstrap_servers": "127.0.0.1:9092", "topics": ["a"]},
        {"name": "m", "type": "mqtt", "function": "fn", "url": "mqtt://127.0.0.1:1883", "topic": "a/+/b", "qos": 2},
        {"name": "n", "type": "nats", "function": "fn", "url": "nats://127.0.0.1:4222", "subject": "a.>"},
    ]
    assert check(tmp_path, triggers) == []


def test_bad_options_are_reported_with_their_paths(tmp_path: Path) -> None:
    triggers: list[dict[str, Any]] = [
        {"name": "h", "type": "http", "function": "fn", "path": "/v1/tasks", "auth": {"type": "hmac-sha256"}},
        {"name": "t", "type": "timer", "function": "fn", "cron": "* * *", "misfire": "later"},
        {"name": "t2", "type": "timer", "function": "fn", "every": "1s", "at": "2030-01-01T00:00:00Z"},
        {"name": "f", "type": "file", "function": "fn", "path": "/x", "events": ["renamed"], "setle": "1s"},
        {
            "name": "k",
            "type": "kafka",
            "function": "fn",
            "bootstrap_servers": "b:9092",
            "security_protocol": "SASL_SSL",
        },
        {"name": "m", "type": "mqtt", "function": "fn", "url": "http://x", "topic": "a/#/b", "protocol": 4},
    ]
    errors = check(tmp_path, triggers)
    expected = [
        "triggers.h.path: '/v1/tasks' belongs to the API",
        "triggers.h.auth.hmac-sha256.secret: Field required",
        "triggers.t.cron: cron needs 6 fields (with seconds) or 5, got 3",
        "triggers.t.misfire: Input should be 'skip' or 'run_once'",
        "triggers.t2: exactly one of cron, every, at must be set",
        "triggers.f.events.0: Input should be",
        "triggers.f.setle: Extra inputs are not permitted",
        "triggers.k: exactly one of topics, pattern must be set",
        "triggers.m.url: String should match pattern",
        "triggers.m.topic: '#' may only be the last level",
        "triggers.m.protocol: Input should be '5' or '3.1.1'",
    ]
    for line in expected:
        assert any(error.startswith(line) for error in errors), (line, errors)
    assert len(errors) == len(expected), errors


def test_filter_batch_retained_and_webhook_schemes_pass(tmp_path: Path) -> None:
    pattern = {"data": {"kind": ["a", {"prefix": "b"}], "n": [{"numeric": [">", 0, "<=", 9]}]}}
    triggers: list[dict[str, Any]] = [
        {"name": "h", "type": "http", "function": "fn", "path": "/h", "filter": pattern, "cloudevents": True},
        {"name": "f", "type": "file", "function": "fn", "path": str(tmp_path), "filter": pattern},
        {
            "name": "k",
            "type": "kafka",
            "function": "fn",
            "bootstrap_servers": "b:9092",
            "topics": ["a"],
            "filter": pattern,
            "batch": {"size": 100, "window": "2s"},
        },
        {
            "name": "m",
            "type": "mqtt",
            "function": "fn",
            "url": "mqtt://b",
            "topic": "a",
            "retained": "process",
            "batch": {"size": 10},
        },
        {"name": "n", "type": "nats", "function": "fn", "subject": "a", "batch": {"size": 10000, "window": "5m"}},
    ]
    for i, scheme in enumerate(("github", "stripe", "slack", "standard-webhooks")):
        secret = "whsec_c2VjcmV0" if scheme == "standard-webhooks" else "s"
        triggers.append(
            {
                "name": f"w{i}",
                "type": "http",
                "function": "fn",
                "path": f"/w{i}",
                "auth": {"type": scheme, "secret": secret},
            }
        )
    assert check(tmp_path, triggers) == []


def test_bad_filter_batch_retained_and_schemes_name_their_paths(tmp_path: Path) -> None:
    triggers: list[dict[str, Any]] = [
        {"name": "t", "type": "timer", "function": "fn", "every": "1s", "filter": {"a": [1]}},
        {
            "name": "k",
            "type": "kafka",
            "function": "fn",
            "bootstrap_servers": "b:9092",
            "topics": ["a"],
            "filter": {"data": {"n": [{"numeric": [">", "x"]}]}},
            "batch": {"size": 0, "window": "10m"},
        },
        {
            "name": "m",
            "type": "mqtt",
            "function": "fn",
            "url": "mqtt://b",
            "topic": "a",
            "retained": "keep",
            "batch": {"window": "1s"},
        },
        {"name": "n", "type": "nats", "function": "fn", "subject": "a", "batch": {"size": 2, "sise": 3}},
        {"name": "f", "type": "file", "function": "fn", "path": "/x", "batch": {"size": 2}},
        {
            "name": "h",
            "type": "http",
            "function": "fn",
            "path": "/h",
            "filter": {"a": "b"},
            "auth": {"type": "stripe", "secret": "s", "tolerance": "0s"},
        },
        {
            "name": "w",
            "type": "http",
            "function": "fn",
            "path": "/w",
            "auth": {"type": "standard-webhooks", "secret": "whsec_!!"},
        },
        {"name": "g", "type": "http", "function": "fn", "path": "/g", "auth": {"type": "gitlab", "secret": "s"}},
    ]
    errors = check(tmp_path, triggers)
    expected = [
        "triggers.t.filter: Extra inputs are not permitted",
        "triggers.k.filter: not an event pattern: data.n.0.numeric.1: must be a finite number",
        "triggers.k.batch.size: Input should be greater than or equal to 1",
        "triggers.k.batch.window: Input should be less than or equal to 300",
        "triggers.m.retained: Input should be 'skip' or 'process'",
        "triggers.m.batch.size: Field required",
        "triggers.n.batch.sise: Extra inputs are not permitted",
        "triggers.f.batch: Extra inputs are not permitted",
        "triggers.h.filter: not an event pattern: a: must be an object or a list of matchers",
        "triggers.h.auth.stripe.tolerance: Input should be greater than 0",
        "triggers.w.auth.standard-webhooks.secret: must be whsec_ followed by base64",
        "triggers.g.auth: Input tag 'gitlab' found using 'type' does not match any of the expected tags",
    ]
    for line in expected:
        assert any(error.startswith(line) for error in errors), (line, errors)
    assert len(errors) == len(expected), errors


def test_check_warns_of_a_generic_hmac_route_without_a_timestamp(tmp_path: Path) -> None:
    """Valid, but weaker than it looks: `fngate check` says so and still exits 0."""
    hmac_auth = {"type": "hmac-sha256", "secret": "s", "header": "X-Sig"}
    triggers = [
        {"name": "plain", "type": "http", "function": "fn", "path": "/plain", "auth": hmac_auth},
        {"name": "ts", "type": "http", "function": "fn", "path": "/ts", "auth": {**hmac_auth, "timestamp_header": "T"}},
        {"name": "gh", "type": "http", "function": "fn", "path": "/gh", "auth": {"type": "github", "secret": "s"}},
    ]
    config = {"functions": {"fn": {"handler": "python:examples.functions:echo"}}, "triggers": triggers}
    path = tmp_path / "fngate.yaml"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "gateway", "check", "-c", str(path)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, done.stderr
    assert warnings[0].startswith("warning: triggers.plain.auth: hmac-sha256 without timestamp_header")
    assert "set timestamp_header" in warnings[0]
