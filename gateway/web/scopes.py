"""Who may call what: every API route declares its scope here, by method and path.

- `read`: everything that reads — functions, triggers, task records, listings, a task's
  payload, its function logs and its live events, operations, metrics. Task data is the
  callers' data: a read token reads every task's payload, result and logs.
- `invoke`: invoke a function, and rerun a task (one, or in bulk) — a rerun submits that
  task's stored payload again, whoever sent it first, without showing it.
- `admin`: everything, including stopping tasks (one, or in bulk).

A route missing from this table needs `admin`: a new route is never open to a weaker
token by accident (tests/test_security.py checks that every route is declared).
Query-string tokens (`?token=`) are accepted only on the streaming routes, where a
browser's EventSource cannot send a header; anywhere else they are refused, since URLs
end up in access logs, proxies and browser history.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

Scope = Literal["invoke", "read", "admin"]


class Access(NamedTuple):
    scope: Scope | None  # None: public, no token needed
    query_token: bool = False  # the token may come as ?token= (SSE routes only)


PUBLIC = Access(None)
READ = Access("read")
INVOKE = Access("invoke")
ADMIN = Access("admin")
STREAM = Access("read", query_token=True)

ROUTES: dict[tuple[str, str], Access] = {
    # Probes, the console's page and files, and the API description: no secrets, no data.
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    ("GET", "/"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/openapi.json"): PUBLIC,
    ("POST", "/v1/functions/{fn}/invocations"): INVOKE,
    ("GET", "/v1/functions"): READ,
    ("GET", "/v1/functions/{fn}"): READ,
    ("GET", "/v1/functions/{fn}/stats"): READ,
    ("GET", "/v1/triggers"): READ,
    ("GET", "/v1/tasks"): READ,
    ("GET", "/v1/tasks/{id}"): READ,
    ("GET", "/v1/tasks/{id}/payload"): READ,
    ("GET", "/v1/tasks/{id}/logs"): STREAM,
    ("GET", "/v1/tasks/{id}/events"): STREAM,
    ("POST", "/v1/tasks/{id}/rerun"): INVOKE,
    ("POST", "/v1/tasks/rerun"): INVOKE,
    ("POST", "/v1/tasks/{id}/stop"): ADMIN,
    ("POST", "/v1/tasks/stop"): ADMIN,
    ("GET", "/v1/operations"): READ,
    ("GET", "/v1/operations/{id}"): READ,
    ("GET", "/metrics"): READ,
}


def access_for(method: str, path: str) -> Access | None:
    """The declared access of a route (HEAD as its GET), or None when undeclared."""
    return ROUTES.get(("GET" if method == "HEAD" else method, path))
