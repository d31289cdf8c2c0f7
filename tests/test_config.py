"""Config validation: every error with its path and allowed range; env interpolation; units."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config.model import interpolate, load_config, parse_config
from gateway.errors import ConfigError
from gateway.units import parse_duration, parse_size
from tests.services import ROOT


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("5m", 300), ("1h", 3600), ("7d", 604800), (12, 12), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "size"), [("64KiB", 65536), ("1MiB", 1048576), (100, 100), ("6MiB", 6 * 1048576)])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 minutes", "-1", "x", True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_interpolation() -> None:
    env = {"A": "1", "EMPTY": ""}
    assert interpolate("${A} ${B:-two} ${EMPTY:-x}", env) == "1 two "
    with pytest.raises(ConfigError) as info:
        interpolate("${MISSING}", env)
    assert "MISSING" in info.value.errors[0]


def test_every_error_is_reported_with_its_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "api": {"listen": "nowhere", "max_request_body": "lots"},
                "functions": {
                    "resize": {"handler": "python:a:b", "async": {"max_retries": 9, "retention": "1s"}, "bogus": 1},
                    "empty": {},
                    "both": {"handler": "python:a:b", "url": "http://x"},
                },
            }
        )
    errors = info.value.errors
    assert "functions.resize.async.max_retries: must be 0..8 (got 9)" in errors
    assert any(e.startswith("functions.resize.async.retention: must be 1m..365d") for e in errors), errors
    assert "functions.resize.bogus: unknown key" in errors
    assert any(e.startswith("functions.empty: exactly one of handler, url, command") for e in errors)
    assert any(e.startswith("functions.both: exactly one of") for e in errors)
    assert any(e.startswith("api.listen: must be host:port") for e in errors)
    assert any(e.startswith("api.max_request_body: must be a size") for e in errors)


def test_cross_references_are_checked() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(
            {
                "functions": {"a": {"handler": "python:m:f"}},
                "triggers": [{"name": "t", "type": "timer", "function": "missing", "every": "1s"}],
            }
        )
    assert info.value.errors == ["triggers.t.function: unknown function 'missing'"]


def test_defaults_from_contract() -> None:
    config = parse_config({"functions": {"f": {"handler": "python:m:f"}}})
    assert config.nats.url == "embedded" and config.nats.data_dir == ".fngate"
    assert config.api.listen == "127.0.0.1:8080" and config.api.max_request_body == 6 * 1024 * 1024
    fn = config.functions["f"]
    assert (fn.async_.max_retries, fn.async_.max_event_age, fn.async_.retention) == (3, 6 * 3600, 7 * 86400)
    assert config.max_chain_depth == 16


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **(env or {})},
    )


def test_check_command(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("functions:\n  f:\n    handler: python:examples.functions:echo\n    timeout: ${T:-5s}\n")
    result = run_cli("check", "-c", str(good))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("functions:\n  resize:\n    handler: python:m:f\n    async: {max_retries: 12}\n    concurrency: 0\n")
    result = run_cli("check", "-c", str(bad))
    assert result.returncode == 2
    assert "functions.resize.async.max_retries: must be 0..8 (got 12)" in result.stderr
    assert "functions.resize.concurrency: must be 1..10000 (got 0)" in result.stderr
    assert load_config(good).functions["f"].timeout == 5


def test_secrets_from_env_never_printed(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "api:\n  tokens:\n    - {name: ops, token: '${TOKEN}', scopes: [admin, bogus]}\n"
        "functions: {f: {handler: 'python:m:f'}}\n"
    )
    result = run_cli("check", "-c", str(config), env={"TOKEN": "s3cr3t-value-123"})
    assert result.returncode == 2
    assert "s3cr3t-value-123" not in result.stderr + result.stdout


def test_serve_refuses_public_listen_without_tokens(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("api: {listen: 0.0.0.0:0}\nfunctions: {f: {handler: 'python:examples.functions:echo'}}\n")
    result = run_cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert "allow_unauthenticated" in result.stderr


def test_check_reports_every_problem_of_every_stage_in_one_pass(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "functions:\n"
        "  bad: {handler: 'python:examples.functions:echo', async: {max_retries: 12}}\n"
        "  nomodule: {handler: 'python:no_such_module_here:f'}\n"
        "  noattr: {handler: 'python:examples.functions:no_such_function'}\n"
        "  noprogram: {command: [no-such-program-fngate, -x]}\n"
        "  slow: {handler: 'python:examples.functions:echo', timeout: '${SLOW_TIMEOUT}'}\n"
        "  notify:\n"
        "    handler: python:examples.functions:echo\n"
        "    concurrency: 2\n"
        "    concurrency: 3\n"
        "    async: {on_success: {type: function, function: nowhere}, on_failure: {type: quuee}}\n"
        "triggers:\n"
        "  - {name: t1, type: timer, function: missing, every: 1s}\n"
        "  - {name: t2, type: timer, function: notify, cron: '* * *'}\n"
        "  - {name: t3, type: timr, function: notify}\n"
        "  - {name: t4, type: timer, function: bad, every: 1s}\n"
        "  - {name: t5, type: mqtt, function: notify, url: 'mqtt://${BROKER_HOST}:1883', topic: a}\n"
        "  - {name: t2, type: timer, function: notify, every: 1s}\n"
    )
    result = run_cli("check", "-c", str(config))
    assert result.returncode == 2
    errors = result.stderr.splitlines()
    expected = [
        "functions.bad.async.max_retries: must be 0..8 (got 12)",
        "functions.nomodule.handler: module 'no_such_module_here' not found",
        "functions.noattr.handler: examples.functions has no attribute 'no_such_function'",
        "functions.noprogram.command: program 'no-such-program-fngate' not found on PATH",
        "functions.slow.timeout: environment variable SLOW_TIMEOUT is not set",
        "functions.notify.concurrency: duplicate key (lines 9 and 10)",
        "functions.notify.async.on_success.function: unknown function 'nowhere'",
        "triggers.t1.function: unknown function 'missing'",
        "triggers.t2.cron: cron needs 6 fields (with seconds) or 5, got 3: '* * *'",
        "triggers.t5.url: environment variable BROKER_HOST is not set",
        "triggers.t2.name: duplicate trigger name",
    ]
    for line in expected:
        assert line in errors, f"{line!r} missing from:\n{result.stderr}"
    assert any(e.startswith("triggers.t3.type: unknown trigger type 'timr'") for e in errors), errors
    assert any(e.startswith("functions.notify.async.on_failure.type: unknown destination type") for e in errors)
    # t4's function exists (with an error of its own): not also "unknown"; the unset
    # variable's path gets its one error, not the validation errors of an empty value.
    assert not any(e.startswith(("triggers.t4", "functions.slow.timeout: must")) for e in errors), errors
    assert errors[-1] == f"{config}: {len(errors) - 1} error(s)"


def test_serve_reports_the_same_errors_before_starting(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "functions:\n"
        "  a: {handler: 'python:no_such_module_here:f'}\n"
        "triggers:\n"
        "  - {name: t1, type: timer, function: missing, every: 1s}\n"
    )
    result = run_cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert "functions.a.handler: module 'no_such_module_here' not found" in result.stderr
    assert "triggers.t1.function: unknown function 'missing'" in result.stderr


def test_duplicate_keys_are_errors_with_their_path(tmp_path: Path) -> None:
    path = tmp_path / "dup.yaml"
    path.write_text("api: {listen: '127.0.0.1:1'}\napi: {listen: '127.0.0.1:2'}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.errors == ["api: duplicate key (lines 1 and 2)"]


def test_check_and_serve_never_show_credentials(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "nats: {url: 'nats:/admin:hunter2-nats@h:4222'}\n"
        "functions:\n"
        "  a: {url: 'htp://user:${FN_PASSWORD}@h/x'}\n"
        "  b: {url: 'ftp://user:p@ss-at-sign@h/x', timeout: 0}\n"
        "triggers:\n"
        "  - {name: m, type: mqtt, function: a, url: 'http://u:trigger-secret-1@x', topic: a}\n"
    )
    secrets = ["hunter2-nats", "env-password-123", "ss-at-sign", "trigger-secret-1"]
    for command in ("check", "serve"):
        result = run_cli(command, "-c", str(config), env={"FN_PASSWORD": "env-password-123"})
        assert result.returncode == 2
        shown = result.stdout + result.stderr
        assert "nats.url: must be 'embedded' or nats://host:port (got '***@h:4222')" in shown
        assert "functions.a: url must start with http:// or https:// (got 'htp://***@h/x')" in shown
        assert all(secret not in shown for secret in secrets), shown
