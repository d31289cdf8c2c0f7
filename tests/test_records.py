"""The typed task record (gateway/tasks/records.py) and the model that documents it in the
OpenAPI document (gateway/web/schemas.py) name the same fields, at every level: a field added
to one and not the other fails here."""

from __future__ import annotations

import pytest
from pydantic import BaseModel

from gateway.tasks import records
from gateway.tasks.invocation import Invocation, Lineage, Source
from gateway.web import schemas

PAIRS: list[tuple[type, type[BaseModel]]] = [
    (records.Record, schemas.Task),
    (records.SourceEntry, schemas.Source),
    (records.ChainEntry, schemas.Chain),
    (records.TraceEntry, schemas.Trace),
    (records.TimelineEntry, schemas.TimelineEntry),
    (records.ErrorEntry, schemas.TaskError),
    (records.AttemptError, schemas.AttemptError),
    (records.DestinationEntry, schemas.DestinationEntry),
    (records.DeliveryAttempt, schemas.DeliveryAttempt),
]


@pytest.mark.parametrize(("typed", "model"), PAIRS, ids=[t.__name__ for t, _ in PAIRS])
def test_the_typed_record_and_its_schema_name_the_same_fields(typed: type, model: type[BaseModel]) -> None:
    assert set(typed.__annotations__) == set(model.model_fields)


def test_a_new_record_has_every_field_and_validates_against_its_schema() -> None:
    inv = Invocation(
        function="echo",
        task_id="t-1",
        payload=b"{}",
        submitted_at=1_764_547_200.5,
        source=Source("rerun", "t-0"),
        lineage=Lineage(chain_id="c-1", depth=1),
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    record = records.new_record(inv)
    assert records.Record.__required_keys__ <= set(record)  # type: ignore[attr-defined]
    assert record["trace"] == {"traceparent": inv.traceparent}
    assert record["rerun_of"] == "t-0"
    schemas.Task.model_validate(record)
