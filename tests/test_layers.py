"""The rooms of gateway/ and what each may import (docs/architecture.md, "Rooms"): a file's
folder says what it may touch, and this test keeps it so. Imports under TYPE_CHECKING are
for annotations only and do not count; imports inside functions do."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASE = {"errors", "units", "supervise", "tuning", "__init__"}  # gateway/*.py every room may use
# Room -> the rooms it may import, besides the base modules and itself.
ALLOWED: dict[str, set[str]] = {
    "base": set(),
    "observe": set(),
    "config": {"observe"},
    "tasks": {"observe"},
    "jetstream": {"observe", "tasks"},
    "history": {"observe", "config", "tasks", "jetstream"},  # its feed is a JetStream consumer
    "pipeline": {"observe", "config", "tasks", "jetstream"},
    "flow": {"observe", "config", "tasks", "jetstream", "pipeline"},
    "service": {"observe", "config", "tasks", "jetstream", "pipeline", "history", "flow"},
    "web": {"observe", "config", "tasks", "jetstream", "pipeline", "history", "flow", "service"},
    "bulk": {"observe", "config", "tasks", "jetstream", "history", "service", "web"},
    "cli": {"observe", "config", "tasks", "jetstream", "web", "app"},
    "app": {"observe", "config", "tasks", "jetstream", "pipeline", "history", "flow", "service", "web", "bulk"},
    # The event sources and result sinks build tasks; they never reach into the pipeline.
    "triggers": {"observe", "config", "tasks"},
    "sinks": {"observe", "config", "tasks"},
}
# Imports across the rules made on purpose, each with its reason: (importing module, imported module).
EXCEPTIONS = {
    # A worker hands its function to the flow leader only when the function has limits.
    ("gateway.pipeline.worker", "gateway.flow.run"),
    # The bulk routes document themselves; the OpenAPI document asks them when it is built.
    ("gateway.web.openapi", "gateway.bulk.openapi"),
}
# Leaf modules of a room (they import nothing of fngate) that any room may use: the flow limits' parsing and
# checks (config validation, the API's headers, triggers' options), and the JetStream error
# codes (the queue sink publishes to JetStream itself and reads its refusals as the store does).
SHARED = {"gateway.flow.limits", "gateway.jetstream.errors"}
PURE = {"tasks", "observe", "config"}  # no network client library
NETWORK = ("nats", "aiohttp", "aiokafka", "paho", "asyncpg")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def room_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] in ("triggers", "sinks"):
        return parts[0]
    if len(parts) == 1:
        return "base"
    if len(parts) == 2 and parts[1] in BASE:
        return "base"
    if parts[1] == "__main__":
        return "cli"  # python -m gateway runs the CLI
    return parts[1]


def imports_of(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    type_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            type_only.update(id(n) for child in node.body for n in ast.walk(child))
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            found.append(target)
    return found


def sources() -> list[Path]:
    return sorted(p for folder in ("gateway", "triggers", "sinks") for p in (ROOT / folder).rglob("*.py"))


def test_each_room_imports_only_what_lies_below_it() -> None:
    wrong = []
    for path in sources():
        module = module_name(path)
        room = room_of(module)
        for target in imports_of(path):
            if not target.startswith("gateway"):
                continue
            other = room_of(target)
            if other in (room, "base") or other in ALLOWED[room] or target in SHARED or (module, target) in EXCEPTIONS:
                continue
            wrong.append(f"{module} ({room}) imports {target} ({other})")
    assert wrong == []


def test_the_pure_rooms_use_no_network_library() -> None:
    wrong = [
        f"{module_name(path)} imports {target}"
        for path in sources()
        if room_of(module_name(path)) in PURE
        for target in imports_of(path)
        if target.split(".")[0] in NETWORK
    ]
    assert wrong == []


def test_the_shared_modules_are_pure() -> None:
    for module in SHARED:
        path = ROOT / (module.replace(".", "/") + ".py")
        assert [t for t in imports_of(path) if t.startswith("gateway")] == []  # leaves: nothing of fngate


def test_every_room_is_declared() -> None:
    rooms = {room_of(module_name(path)) for path in sources()}
    assert rooms <= set(ALLOWED), rooms - set(ALLOWED)
