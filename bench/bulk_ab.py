"""`python -m bench.bulk_ab DIR_A DIR_B [...]`: the bulk rerun of bench/bulk.py, one fill
shared by several versions of the code (each a directory holding a checkout, e.g. from
`git archive`), their gateways taking turns on the same Failed tasks, ROUNDS times
(default 2). Each turn prints the rate and the CPU per task of the gateway and of
nats-server: on a machine shared with other work the rates of two turns may differ
several-fold, the CPU per task far less, and the turns of one round ran under the same load.
N (default 30000) sets the number of Failed tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway.jetstream.embedded import die_with_parent
from tests.services import GatewayProcess

from .bulk import FAILING, FUNCTION, call, cpu_seconds, failed_count, rerun_failed
from .harness import function, stack, wait_for, wrk


class Versioned(GatewayProcess):
    """A gateway run from another checkout of the code."""

    def __init__(self, workdir: Path, config: dict[str, Any], code: str) -> None:
        super().__init__(workdir, config)
        self.code = code

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONPATH": self.code, **self.env}
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.code,
            env=env,
            preexec_fn=die_with_parent,
        )
        log.close()
        self.wait_ready()


def main(versions: list[str]) -> None:
    wanted = int(os.environ.get("N", 30000))
    with stack() as run:
        nats_server = run.nats()
        base = {"nats": {"url": nats_server.url}, "index": {"url": f"sqlite://{run.root / 'index.db'}"}}
        filler = run.gateway({**base, "functions": {FUNCTION: FAILING}})
        url = f"{filler.url}/v1/functions/{FUNCTION}/invocations"
        while (failed := failed_count(filler.url)) < wanted:
            wrk(url, seconds=max(1, min(30, (wanted - failed) // 3000)), connections=64)
            wait_for(lambda: failed_count(filler.url) > failed, 120, 0.5, "tasks to fail")
        filler.stop()
        parked = {**function("park", concurrency=1, timeout="2h"), "async": {"max_retries": 0}}
        results: dict[str, list[dict[str, float]]] = {v: [] for v in versions}
        for n in range(int(os.environ.get("ROUNDS", 2))):
            for code in versions:
                config = {**base, "functions": {FUNCTION: parked}}
                gw = Versioned(run.root / f"gateway-{n}-{len(run.services)}", config, code)
                gw.start()
                run.services.append(gw)
                results[code].append(turn(gw, nats_server.proc.pid if nats_server.proc else 0))
                print(f"round {n} {code}: {json.dumps(results[code][-1])}", flush=True)
                gw.stop()
        print(json.dumps(results, indent=1))


def turn(gw: Versioned, nats_pid: int) -> dict[str, float]:
    def settled() -> bool:
        _, ready = call(gw.url, "GET", "/readyz")
        index = ready["checks"]["index"]
        return bool(index["known"] and index["lag_messages"] == 0)

    wait_for(settled, 300, 0.5, "the index to catch up")
    assert gw.proc is not None
    cpu = (cpu_seconds(gw.proc.pid), cpu_seconds(nats_pid))
    _, op, _, seconds = rerun_failed(gw.url, {"function": FUNCTION, "status": "Failed"}, poll=0.05)
    done = op["done"]
    return {
        "tasks": done,
        "seconds": round(seconds, 2),
        "tasks_per_s": round(done / seconds),
        "gateway_cpu_us_per_task": round((cpu_seconds(gw.proc.pid) - cpu[0]) / done * 1e6),
        "nats_cpu_us_per_task": round((cpu_seconds(nats_pid) - cpu[1]) / done * 1e6),
        "load_average": round(os.getloadavg()[0], 1),
    }


if __name__ == "__main__":
    main(sys.argv[1:])
