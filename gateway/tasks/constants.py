"""Names of streams, subjects, consumers and headers: one place, so every module agrees."""

TASKS_STREAM = "FNGATE_TASKS"
TASKS_SUBJECT = "fngate.tasks"  # fngate.tasks.{function}.{task_id}: one invocation message
STATE_STREAM = "FNGATE_STATE"
STATE_SUBJECT = "fngate.state"  # fngate.state.{task_id}: the latest task record
DELAY_STREAM = "FNGATE_DELAY"
DELAY_SUBJECT = "fngate.delay"  # fngate.delay.{function}.{task_id}: waits for its not-before time
DELAY_CONSUMER = "delay-scheduler"
STOP_SUBJECT = "fngate.ctl.stop"  # core NATS: fngate.ctl.stop.{task_id} cancels a running task
FUNCTION_CONSUMER_PREFIX = "fn-"

# Everything about an invocation but its payload, in one header (see Invocation.headers).
H_INVOCATION = "Fngate-Invocation"
H_CHAIN_ID = "Fngate-Chain-Id"
H_CHAIN_DEPTH = "Fngate-Chain-Depth"
H_CONTENT_TYPE = "Content-Type"
H_TRACEPARENT = "traceparent"
H_TRACESTATE = "tracestate"
H_EXPECTED_LAST_SUBJECT_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_MSG_ID = "Nats-Msg-Id"

# JetStream's error codes: gateway/jetstream/errors.py.

DELIVERIES_STREAM = "FNGATE_DELIVERIES"
DELIVERIES_SUBJECT = "fngate.deliveries"  # fngate.deliveries.{function}.{on}.{task_id}
DELIVERIES_CONSUMER = "deliveries"

LOGS_STREAM = "FNGATE_LOGS"
LOGS_SUBJECT = "fngate.logs"  # fngate.logs.{task_id}: batches of a task's function log lines
PRIORITY_SUBJECT = "fngate.flow.priority"  # fngate.flow.priority.{fn}: a high or low task was enqueued
FLOW_STREAM = "FNGATE_FLOW"  # work queue: parked tasks on fngate.flow.park.{fn}.{rank}.{key hash}
PARK_SUBJECT = "fngate.flow.park"
LEADERS_STREAM = "FNGATE_FLOW_LEADERS"  # one message per function, max_age = ack_wait
LEADER_SUBJECT = "fngate.flow.leader"  # fngate.flow.leader.{fn}: the replica leading it
OPS_STREAM = "FNGATE_OPS"  # work queue: fngate.ops.{operation}.{chunk}, the chunks of bulk operations
OPS_SUBJECT = "fngate.ops"
