"""The `fngate` command: serve, check, invoke, tasks."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from .config import Config, load_config
from .embedded import find_nats_server
from .errors import ConfigError, FngateError
from .logs import setup_logging
from .tuning import new_event_loop

DEFAULT_CONFIG = "fngate.yaml"


def full_check(path: str) -> tuple[Config | None, list[str], list[str]]:
    """Load a config and ask every trigger and destination type to check its own options."""
    try:
        config = load_config(path)
    except ConfigError as exc:
        return None, exc.errors, []
    errors: list[str] = []
    warnings: list[str] = []
    from triggers.base import trigger_class

    for index, trigger in enumerate(config.triggers):
        where = f"triggers.{trigger.name or index}"
        try:
            cls = trigger_class(trigger.type, where)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        check = getattr(cls, "check_config", None)
        if check is not None:
            errors.extend(check(trigger, where))
    try:
        from sinks.base import check_destinations
    except ImportError:
        pass
    else:
        dest_errors, dest_warnings = check_destinations(config)
        errors.extend(dest_errors)
        warnings.extend(dest_warnings)
    return (config if not errors else None), errors, warnings


def cmd_check(args: argparse.Namespace) -> int:
    config, errors, warnings = full_check(args.config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{args.config}: {len(errors)} error(s)", file=sys.stderr)
        return 2
    assert config is not None
    print(f"{args.config}: ok ({len(config.functions)} functions, {len(config.triggers)} triggers)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from .api import is_loopback
    from .app import create_app

    config, errors, warnings = full_check(args.config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors or config is None:
        for error in errors:
            print(error, file=sys.stderr)
        return 2
    setup_logging(config.logging.level, config.logging.format)
    api = config.api
    if not api.tokens and not is_loopback(api.host) and not api.allow_unauthenticated:
        print(
            f"api.listen: refusing to listen on {api.listen} without tokens; configure api.tokens "
            "or set api.allow_unauthenticated: true",
            file=sys.stderr,
        )
        return 2
    # Handlers named python:module:attr are looked up from the working directory, as the
    # config's relative paths are.
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        if config.nats.embedded:
            find_nats_server()
        app = create_app(config)
        web.run_app(
            app, host=api.host, port=api.port, print=None, access_log=None, shutdown_timeout=10, loop=new_event_loop()
        )
    except FngateError as exc:
        print(f"fngate: {exc.message}", file=sys.stderr)
        return 1
    return 0


# --- client commands --------------------------------------------------------------------


class ApiClient:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def call(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=120) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()
        except urllib.error.URLError as exc:
            raise SystemExit(f"cannot reach {self.url}: {exc.reason}") from None


def print_response(status: int, body: bytes) -> int:
    text = body.decode(errors="replace")
    try:
        text = json.dumps(json.loads(text), indent=2)
    except ValueError:
        pass
    print(text, file=sys.stdout if status < 400 else sys.stderr)
    return 0 if status < 400 else 1


def read_data(data: str | None) -> bytes:
    if data is None:
        return b""
    if data.startswith("@"):
        return Path(data[1:]).read_bytes() if data != "@-" else sys.stdin.buffer.read()
    return data.encode()


def cmd_invoke(args: argparse.Namespace) -> int:
    if args.wait and not args.async_:
        print("fngate invoke: --wait needs --async", file=sys.stderr)
        return 2
    client = ApiClient(args.url, args.token)
    headers = {"Content-Type": args.content_type, "X-Invocation-Type": "async" if args.async_ else "sync"}
    if args.task_id:
        headers["X-Task-Id"] = args.task_id
    if args.delay is not None:
        headers["X-Delay"] = str(args.delay)
    status, _, body = client.call("POST", f"/v1/functions/{args.function}/invocations", read_data(args.data), headers)
    if args.wait and status == 202:
        from .cliwait import wait_for_end

        return wait_for_end(client, json.loads(body)["task_id"], args.timeout)
    return print_response(status, body)


def cmd_tasks(args: argparse.Namespace) -> int:
    client = ApiClient(args.url, args.token)
    if args.tasks_command == "list":
        query = {
            k: v
            for k, v in (
                ("function", args.function),
                ("status", args.status),
                ("since", args.since),
                ("limit", args.limit),
            )
            if v
        }
        from urllib.parse import urlencode

        status, _, body = client.call("GET", "/v1/tasks" + (f"?{urlencode(query)}" if query else ""))
        return print_response(status, body)
    if args.tasks_command == "get":
        status, _, body = client.call("GET", f"/v1/tasks/{args.id}")
    else:
        status, _, body = client.call("POST", f"/v1/tasks/{args.id}/{args.tasks_command}", b"")
    return print_response(status, body)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fngate", description="Self-hosted, event-driven function gateway.")
    sub = parser.add_subparsers(dest="command", required=True)
    default_config = os.environ.get("FNGATE_CONFIG", DEFAULT_CONFIG)

    serve = sub.add_parser("serve", help="run the gateway (API, triggers, workers, sinks)")
    serve.add_argument("-c", "--config", default=default_config)
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check", help="validate a config")
    check.add_argument("-c", "--config", default=default_config)
    check.set_defaults(func=cmd_check)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=os.environ.get("FNGATE_URL", "http://127.0.0.1:8080"))
        p.add_argument("--token", default=os.environ.get("FNGATE_TOKEN"))

    invoke = sub.add_parser("invoke", help="invoke a function through the API")
    invoke.add_argument("function")
    invoke.add_argument("--async", dest="async_", action="store_true")
    invoke.add_argument("--task-id")
    invoke.add_argument("--delay", type=float)
    invoke.add_argument("-d", "--data", help="JSON payload, or @file, or @- for stdin")
    invoke.add_argument("--content-type", default="application/json")
    invoke.add_argument("--wait", action="store_true", help="with --async: wait for the end and print the record")
    invoke.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds (exit 3)")
    client_options(invoke)
    invoke.set_defaults(func=cmd_invoke)

    tasks = sub.add_parser("tasks", help="list, read, stop or rerun tasks")
    tasks_sub = tasks.add_subparsers(dest="tasks_command", required=True)
    listing = tasks_sub.add_parser("list")
    listing.add_argument("--function")
    listing.add_argument("--status")
    listing.add_argument("--since")
    listing.add_argument("--limit", type=int)
    client_options(listing)
    for name in ("get", "stop", "rerun"):
        one = tasks_sub.add_parser(name)
        one.add_argument("id")
        client_options(one)
    tasks.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
