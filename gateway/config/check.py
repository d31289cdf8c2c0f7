"""`fngate check` (and `serve` before it starts): every problem of a config, with its path,
in one pass. Each stage looks at what the earlier ones could validate, so an error in one
function hides nothing about the others, nor about any trigger or destination."""

from __future__ import annotations

import importlib
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.config.load import read_document
from gateway.config.model import Config, FunctionConfig, TriggerConfig, _cross_checks, _range_messages
from gateway.errors import ConfigError
from gateway.observe.redact import scrub

Stage = Callable[[Config], list[str]]


@dataclass
class CheckResult:
    config: Config | None  # only when there is no error
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check_file(path: str | Path, env: dict[str, str] | None = None, *, load_code: bool = True) -> CheckResult:
    doc = read_document(path, env)
    errors = list(doc.errors)
    warnings: list[str] = []
    data = doc.data if doc.data is not None else {}
    if not isinstance(data, dict):
        errors.append("(root): must be a mapping")
        data = {}
    config: Config | None = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        errors.extend(_range_messages(data, exc.errors()))
    partial = config or _valid_parts(data)
    raw_functions = data.get("functions")
    known = {str(name) for name in raw_functions} if isinstance(raw_functions, dict) else set()
    errors.extend(_cross_checks(partial, known))
    stages: list[Stage] = [trigger_errors]
    if load_code:
        stages.append(code_errors)
    for stage in stages:
        errors.extend(stage(partial))
    dest_errors, dest_warnings = destination_problems(partial)
    errors.extend(dest_errors)
    warnings.extend(dest_warnings)
    warnings.extend(flow_warnings(partial))
    warnings.extend(trigger_warnings(partial))
    errors = [e for e in dict.fromkeys(errors) if not _repeats_unset(e, doc.unset_paths) or e in doc.errors]
    return CheckResult(
        config if not errors else None,
        [scrub(e, doc.secrets) for e in errors],
        [scrub(w, doc.secrets) for w in warnings],
    )


def _repeats_unset(error: str, unset: set[str]) -> bool:
    where = error.split(": ", 1)[0]
    return any(where == p or where.startswith(p + ".") for p in unset)


def _valid_parts(data: dict[str, Any]) -> Config:
    """The functions and triggers that validate on their own, for the later stages."""
    functions: dict[str, FunctionConfig] = {}
    raw_functions = data.get("functions")
    if isinstance(raw_functions, dict):
        for name, entry in raw_functions.items():
            try:
                functions[str(name)] = FunctionConfig.model_validate(entry if entry is not None else {})
            except ValidationError:
                pass
    triggers: list[TriggerConfig] = []
    raw_triggers = data.get("triggers")
    if isinstance(raw_triggers, list):
        for entry in raw_triggers:
            try:
                triggers.append(TriggerConfig.model_validate(entry))
            except ValidationError:
                pass
    return Config.model_construct(functions=functions, triggers=triggers)


def trigger_errors(config: Config) -> list[str]:
    """Each trigger type checks its own options."""
    from triggers.base import trigger_class

    errors: list[str] = []
    for trigger in config.triggers:
        where = f"triggers.{trigger.name}"
        try:
            cls = trigger_class(trigger.type, where)
        except ConfigError as exc:
            errors.extend(exc.errors)
            continue
        check = getattr(cls, "check_config", None)
        if check is not None:
            errors.extend(check(trigger, where))
    return errors


def trigger_warnings(config: Config) -> list[str]:
    """What each trigger type finds weaker than it looks in its own valid options."""
    from triggers.base import trigger_class

    warnings: list[str] = []
    for trigger in config.triggers:
        where = f"triggers.{trigger.name}"
        try:
            cls = trigger_class(trigger.type, where)
        except ConfigError:
            continue  # trigger_errors reports it
        warn = getattr(cls, "config_warnings", None)
        if warn is not None:
            warnings.extend(warn(trigger, where))
    return warnings


def flow_warnings(config: Config) -> list[str]:
    """A trigger's flow options that its function would not act on (a valid config, so a warning)."""
    warnings: list[str] = []
    for trigger in config.triggers:
        function = config.functions.get(trigger.function)
        if function is None:
            continue
        where = f"triggers.{trigger.name}"
        if trigger.concurrency_key is not None and function.key_concurrency is None:
            warnings.append(
                f"{where}.concurrency_key: function {trigger.function!r} has no key_concurrency, "
                "so the key limits nothing"
            )
        if trigger.priority != "normal" and not function.flow_controlled:
            warnings.append(
                f"{where}.priority: function {trigger.function!r} has no flow control (key_concurrency, rate_limit "
                "or priorities: true), so its tasks run in the order they came"
            )
    return warnings


def destination_problems(config: Config) -> tuple[list[str], list[str]]:
    from sinks.base import check_destinations

    errors, warnings = check_destinations(config)
    return list(errors), list(warnings)


def code_errors(config: Config) -> list[str]:
    """What can be loaded is loaded: a handler's module and attribute, a command's program."""
    errors: list[str] = []
    for name, function in config.functions.items():
        if function.handler:
            problem = handler_problem(function.handler)
            if problem:
                errors.append(f"functions.{name}.handler: {problem}")
        elif function.command:
            problem = program_problem(function.command[0], function.env)
            if problem:
                errors.append(f"functions.{name}.command: {problem}")
    return errors


def handler_problem(spec: str) -> str | None:
    _, module_name, attr = spec.split(":", 2)
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            return f"module {module_name!r} not found"
        return f"cannot import {module_name}: {exc}"
    except Exception as exc:  # whatever the module raises on import is the user's to see
        return f"cannot import {module_name}: {type(exc).__name__}: {exc}"
    for part in attr.split("."):
        if not hasattr(target, part):
            return f"{module_name} has no attribute {attr!r}"
        target = getattr(target, part)
    if not callable(target):
        return f"{module_name}:{attr} is not callable"
    return None


def program_problem(program: str, env: dict[str, str]) -> str | None:
    if not program:
        return "the program is empty"
    if os.sep in program:
        if not Path(program).is_file():
            return f"program {program!r} not found"
        if not os.access(program, os.X_OK):
            return f"program {program!r} is not executable"
        return None
    search = env.get("PATH", os.environ.get("PATH", os.defpath))
    if shutil.which(program, path=search) is None:
        return f"program {program!r} not found on PATH"
    return None
