"""Bulk operations (redrive): rerun or stop every task an index filter matches, as a durable
operation that any replica carries on. See docs/architecture.md "Bulk operations"."""

from .operations import BulkOperations
from .request import BulkRequest, parse_request

__all__ = ["BulkOperations", "BulkRequest", "parse_request"]
