"""Flow control across the deployment: concurrency per key, priorities, rate limits.

A function with `key_concurrency`, `rate_limit` or `priorities: true` is flow-controlled:
one replica, elected through JetStream, leads it (leader.py). The leader alone pulls the
function's queue, keeps the waiting tasks in memory (the overflow parked on FNGATE_FLOW),
and hands each task it admits to a worker of any replica over core NATS (runner.py); the
worker acks the JetStream message itself. See docs/architecture.md, "Flow control".
"""
