"""One error tree; each error knows its HTTP status and its CONTRACT error code."""

from __future__ import annotations


class FngateError(Exception):
    status = 500
    code = "InternalError"

    def __init__(self, message: str = "") -> None:
        super().__init__(message or self.code)
        self.message = message or self.code


class ConfigError(FngateError):
    """A config that does not validate; `errors` holds one line per problem, each with its path."""

    code = "InvalidConfig"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


class BadRequest(FngateError):
    status = 400
    code = "BadRequest"


class Unauthorized(FngateError):
    status = 401
    code = "Unauthorized"


class Forbidden(FngateError):
    status = 403
    code = "Forbidden"


class NotFound(FngateError):
    status = 404
    code = "NotFound"


class FunctionNotFound(NotFound):
    code = "FunctionNotFound"


class TaskNotFound(NotFound):
    code = "TaskNotFound"


class DuplicateTask(FngateError):
    status = 409
    code = "DuplicateTask"
    # {task_id, function, status} of the task that holds the id, when known (the 409 body's "task").
    task: dict[str, object] | None = None


class TaskNotStoppable(FngateError):
    status = 409
    code = "TaskNotStoppable"


class PayloadTooLarge(FngateError):
    status = 413
    code = "PayloadTooLarge"


class ResourceExhausted(FngateError):
    status = 429
    code = "ResourceExhausted"


class ServiceUnavailable(FngateError):
    status = 503
    code = "ServiceUnavailable"


class NatsServerNotFound(FngateError):
    code = "NatsServerNotFound"


# Outcomes of running a function once.
class FunctionError(FngateError):
    """The function ran and failed: counted against max_retries."""

    status = 502
    code = "FunctionError"


class FunctionTimeout(FunctionError):
    status = 504
    code = "Timeout"


class TransientError(FngateError):
    """The function could not be reached (connection refused, 429, 503): retried until max_event_age."""

    status = 502
    code = "TransientError"
