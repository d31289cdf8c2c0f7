"""`fngate tasks rerun|stop --function F --status S …`: start a bulk operation, then follow
it to its end, printing its progress (stderr) and its final record (stdout)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from gateway.cli.wait import Client

POLL = 0.5  # seconds between looks at the operation
FILTERS = ("function", "status", "since", "until", "source", "condition", "chain", "prefix")


def add_filter_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", help="one task; without it, every task the filter options match")
    for name in FILTERS:
        p.add_argument(f"--{name}", help="ISO 8601 time or epoch seconds" if name in ("since", "until") else None)
    p.add_argument("--limit", type=int, help="act on at most this many tasks (default 10000)")
    p.add_argument("--dry-run", action="store_true", help="only count the tasks the filter matches")


def bulk_or_one(args: argparse.Namespace) -> bool:
    """True for a bulk operation (no task id); a task id with filter options is an error."""
    filtered = any(getattr(args, name) for name in FILTERS) or args.dry_run or args.limit
    if args.id and filtered:
        raise SystemExit("fngate: give a task id or filter options, not both")
    return not args.id


def run_bulk(client: Client, kind: str, args: argparse.Namespace) -> int:
    flt = {name: getattr(args, name) for name in FILTERS if getattr(args, name)}
    if not flt.get("function") and not flt.get("status"):
        print(f"fngate: tasks {kind} needs a task id, or --function and/or --status", file=sys.stderr)
        return 2
    body: dict[str, object] = {"filter": flt, "dry_run": args.dry_run}
    if args.limit:
        body["limit"] = args.limit
    status, _, raw = client.call(
        "POST", f"/v1/tasks/{kind}", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    if status >= 400:
        print(raw.decode(errors="replace"), file=sys.stderr)
        return 1
    answer = json.loads(raw)
    if args.dry_run:
        print(json.dumps(answer, indent=2))
        return 0
    return follow(client, answer["operation_id"])


def follow(client: Client, op_id: str) -> int:
    """Poll the operation until it ends; exit 0 when it Succeeded, 1 otherwise."""
    shown = None
    while True:
        status, _, raw = client.call("GET", f"/v1/operations/{op_id}")
        if status >= 500:  # the gateway or NATS away for a moment: the operation goes on
            time.sleep(POLL)
            continue
        if status >= 400:
            print(raw.decode(errors="replace"), file=sys.stderr)
            return 1
        op = json.loads(raw)
        progress = f"{op['kind']} {op_id}: {op['done']}/{op['matched']} done, {op['failed']} failed"
        if progress != shown:
            print(progress, file=sys.stderr, flush=True)
            shown = progress
        if op["status"] != "Running":
            print(json.dumps(op, indent=2))
            return 0 if op["status"] == "Succeeded" else 1
        time.sleep(POLL)
