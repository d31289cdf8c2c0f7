"""Every Prometheus metric fngate exports, defined in one place (documented in docs/operations.md)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

TASKS_SUBMITTED = Counter("fngate_tasks_submitted_total", "Async tasks accepted (202)", ["function"])
TASKS_FINISHED = Counter(
    "fngate_tasks_finished_total", "Tasks that reached a terminal status in this replica", ["function", "status"]
)
TASK_ATTEMPTS = Counter("fngate_task_attempts_total", "Executions started (first runs and retries)", ["function"])
TASKS_RUNNING = Gauge("fngate_tasks_running", "Executions running in this replica", ["function"])
TASKS_QUEUED = Gauge("fngate_tasks_queued", "Tasks waiting in the queue (from the task view)", ["function"])
TASKS_WAITING = Gauge(
    "fngate_tasks_waiting",
    "Tasks of a flow-controlled function held back, by reason (concurrency, key, rate); "
    "deployment-wide, the same in every replica",
    ["function", "reason"],
)
EXECUTION_SECONDS = Histogram(
    "fngate_execution_seconds",
    "Time a function ran, per attempt",
    ["function", "outcome"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300),
)
ATTEMPTS_PER_TASK = Histogram(
    "fngate_attempts_per_task", "Attempts a task took to finish", ["function"], buckets=(1, 2, 3, 4, 5, 6, 7, 8, 9)
)
SYNC_INVOCATIONS = Counter("fngate_sync_invocations_total", "Synchronous invocations", ["function", "outcome"])
DESTINATION_DELIVERIES = Counter(
    "fngate_destination_deliveries_total", "Destination delivery outcomes", ["function", "type", "outcome"]
)
LOOPS_DETECTED = Counter(
    "fngate_loops_detected_total", "Invocations refused for exceeding max_chain_depth", ["function"]
)
TRIGGER_EVENTS = Counter("fngate_trigger_events_total", "Events received by triggers", ["trigger", "type"])
TRIGGER_INVOCATIONS = Counter("fngate_trigger_invocations_total", "Invocations made by triggers", ["trigger", "type"])
TRIGGER_ERRORS = Counter("fngate_trigger_errors_total", "Trigger errors (bad input, NATS down)", ["trigger", "type"])
STATE_WRITES_REFUSED = Counter(
    "fngate_state_writes_refused_total",
    "Task record writes JetStream refused to store (store full, limits); each is retried until stored",
)
STORE_WRITABLE = Gauge("fngate_store_writable", "1 while JetStream stores task records, 0 while it refuses them")
STORE_WRITABLE.set(1)
TRIGGER_MATCHED = Counter("fngate_trigger_matched_total", "Events that passed a trigger's filter", ["trigger", "type"])
TRIGGER_DROPPED = Counter(
    "fngate_trigger_dropped_total", "Events a trigger's filter dropped (acknowledged, no task)", ["trigger", "type"]
)
INDEX_APPLIED = Counter("fngate_index_applied_total", "Stream messages applied to the task index here", ["stream"])
INDEX_FEEDING = Gauge("fngate_index_feeding", "How many of this replica's feeder processes apply the streams now")
INDEX_LAG_MESSAGES = Gauge("fngate_index_lag_messages", "Stream messages the index has not applied yet", ["stream"])
INDEX_LAG_SECONDS = Gauge("fngate_index_lag_seconds", "Age of the oldest message the index has not applied", ["stream"])
INDEX_APPLY_DELAY = Histogram(
    "fngate_index_apply_delay_seconds",
    "From a message stored in its stream to its batch committed in the index",
    ["stream"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
