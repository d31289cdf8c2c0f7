"""The task history: listing, counts and search over every task of the deployment, in a
database (SQLite by default, PostgreSQL across hosts) fed once per deployment from the
streams. JetStream stays the source of truth; see docs/architecture.md."""

from .backend import Backend, open_backend
from .index import TaskHistory
from .model import Counts, Cursor, Listed, TaskQuery
from .params import query_from_params

__all__ = ["Backend", "Counts", "Cursor", "Listed", "TaskHistory", "TaskQuery", "open_backend", "query_from_params"]
