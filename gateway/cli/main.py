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

from gateway.cli.table import task_table
from gateway.config.check import check_file
from gateway.config.model import Config
from gateway.errors import FngateError
from gateway.jetstream.datadir import hold
from gateway.jetstream.embedded import find_nats_server
from gateway.observe.logs import setup_logging
from gateway.tuning import new_event_loop

DEFAULT_CONFIG = "fngate.yaml"
URL_HELP = "the gateway's URL (default $FNGATE_URL or http://127.0.0.1:8080)"
TOKEN_HELP = "API token (default $FNGATE_TOKEN)"


def full_check(path: str) -> tuple[Config | None, list[str], list[str]]:
    """Every problem of a config in one pass (see configcheck), with its path."""
    result = check_file(path)
    return result.config, result.errors, result.warnings


def handlers_from_cwd() -> None:
    """Handlers named python:module:attr are looked up from the working directory, as the
    config's relative paths are."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def cmd_check(args: argparse.Namespace) -> int:
    handlers_from_cwd()
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

    from gateway.app import create_app
    from gateway.web.api import is_loopback
    from gateway.web.listener import announce, bind_listener

    handlers_from_cwd()
    config, errors, warnings = full_check(args.config)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if errors or config is None:
        for error in errors:
            print(error, file=sys.stderr)
        print(f"{args.config}: {len(errors)} error(s); not starting", file=sys.stderr)
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
    try:
        if config.nats.embedded:
            find_nats_server()
            # Before anything starts: a second gateway on this store must not harm the first.
            hold(config.nats.data_dir)
        sock = bind_listener(api.host, api.port)
        app = create_app(config)
        web.run_app(
            app,
            sock=sock,
            print=lambda _banner: announce(sock),
            access_log=None,
            shutdown_timeout=10,
            loop=new_event_loop(),
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
    if data == "@-":
        return sys.stdin.buffer.read()
    if data.startswith("@"):
        try:
            return Path(data[1:]).read_bytes()
        except OSError as exc:
            raise SystemExit(f"fngate: -d {data}: cannot read {data[1:]} ({exc.strerror})") from None
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
        from gateway.cli.wait import wait_for_end

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
                ("until", args.until),
                ("limit", args.limit),
                ("cursor", args.cursor),
            )
            if v
        }
        from urllib.parse import urlencode

        status, _, body = client.call("GET", "/v1/tasks" + (f"?{urlencode(query)}" if query else ""))
        if args.json or status >= 400:
            return print_response(status, body)
        print(task_table(json.loads(body)))
        return 0
    if args.tasks_command in ("stop", "rerun"):
        from gateway.cli.bulk import bulk_or_one, run_bulk

        if bulk_or_one(args):
            return run_bulk(client, args.tasks_command, args)
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

    # Accepted before the subcommand and after it: the subcommands' copies default to
    # SUPPRESS, so they override the global value only when given.
    parser.add_argument("--url", default=os.environ.get("FNGATE_URL", "http://127.0.0.1:8080"), help=URL_HELP)
    parser.add_argument("--token", default=os.environ.get("FNGATE_TOKEN"), help=TOKEN_HELP)

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--url", default=argparse.SUPPRESS, help=URL_HELP)
        p.add_argument("--token", default=argparse.SUPPRESS, help=TOKEN_HELP)

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
    listing.add_argument("--since", help="ISO 8601 time or epoch seconds")
    listing.add_argument("--until", help="ISO 8601 time or epoch seconds")
    listing.add_argument("--limit", type=int)
    listing.add_argument("--cursor", help="the next_cursor of the previous page")
    listing.add_argument("--json", action="store_true", help="the API's JSON answer instead of a table")
    client_options(listing)
    one = tasks_sub.add_parser("get")
    one.add_argument("id")
    client_options(one)
    from gateway.cli.bulk import add_filter_options

    for name in ("stop", "rerun"):
        helped = f"{name} one task by id, or every task the filter options match (a bulk operation)"
        bulk = tasks_sub.add_parser(name, help=helped)
        add_filter_options(bulk)
        client_options(bulk)
    tasks.set_defaults(func=cmd_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result: Any = args.func(args)
    return int(result)


if __name__ == "__main__":
    sys.exit(main())
