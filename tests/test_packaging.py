"""A plain install runs every trigger and destination; `make run` installs no test tools."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions

from tests.services import ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(specs: list[str]) -> set[str]:
    return {canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs}


def core_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return requirement_names(project["dependencies"])


def otel_extra() -> set[str]:
    """OTLP export is the one optional part (`fngate[otel]`): imported only when configured."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return requirement_names(project["optional-dependencies"]["otel"])


def third_party_imports(package: str) -> set[str]:
    """Top-level modules imported anywhere in a package (also lazily, inside functions)."""
    names: set[str] = set()
    for path in (ROOT / package).glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    local = {"gateway", "triggers", "sinks"}
    return {n for n in names if n not in local and n not in sys.stdlib_module_names}


def test_every_trigger_and_sink_library_is_a_core_dependency() -> None:
    core = core_dependencies()
    providers = packages_distributions()
    missing = {}
    for package in ("gateway", "triggers", "sinks"):
        for module in third_party_imports(package):
            dists = {canonical(d) for d in providers.get(module, [module])}
            if not dists & core and not (module == "opentelemetry" and dists & otel_extra()):
                missing[f"{package}: {module}"] = sorted(dists)
    assert not missing, f"imported but not a core dependency: {missing}"
    assert {"apscheduler", "watchdog", "aiokafka", "paho-mqtt", "nats-py"} <= core


def make_dry_run(target: str) -> str:
    result = subprocess.run(
        ["make", "-n", "-B", target], capture_output=True, text=True, timeout=60, cwd=ROOT, check=True
    )
    return result.stdout


def test_make_run_installs_only_what_running_needs() -> None:
    run = make_dry_run("run")
    assert "pip install --quiet -e ." in run
    assert "[test]" not in run
    assert "[test]" in make_dry_run("test")
