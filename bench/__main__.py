"""`python -m bench [--quick] [--only NAME ...]`: run the scenarios, print the table, write JSON."""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from . import backlog, bulk, end_to_end, flow, history_queries, latency, scale_out, submit, triggers
from .harness import BENCH_DIR, Figure, Settings, Stack, machine, stack

SCENARIOS: dict[str, Callable[[Stack, Settings], list[Figure]]] = {
    "submit": submit.run,
    "end_to_end": end_to_end.run,
    "latency": latency.run,
    "triggers": triggers.run,
    "trigger_shapes": triggers.shapes,
    "backlog": backlog.run,
    "flow": flow.run,
    "scale_out": scale_out.run,
    "history_queries": history_queries.run,
    "bulk": bulk.run,
}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short runs: a smoke test of the suite, not figures")
    parser.add_argument("--only", nargs="+", choices=sorted(SCENARIOS), help="run only these scenarios")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the JSON results go")
    args = parser.parse_args()
    settings = Settings.quick() if args.quick else Settings()
    names = args.only or list(SCENARIOS)

    figures: list[Figure] = []
    failed: dict[str, str] = {}
    for name in names:
        print(f"== {name}", flush=True)
        started = time.monotonic()
        try:
            with stack() as run_stack:
                found = SCENARIOS[name](run_stack, settings)
        except Exception:  # one broken scenario must not hide the others' figures
            failed[name] = traceback.format_exc()
            print(failed[name], flush=True)
            continue
        figures.extend(found)
        print(table(found), f"\n   ({time.monotonic() - started:.0f} s)", flush=True)

    print("\n" + table(figures))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / time.strftime("%Y%m%d-%H%M%S.json")
    out.write_text(json.dumps({
        "machine": machine(), "settings": settings.__dict__, "quick": args.quick,
        "figures": [f.as_dict() for f in figures], "failed": failed,
    }, indent=2))  # fmt: skip
    print(f"\nwritten to {out}")
    return 1 if failed else 0


def table(figures: list[Figure]) -> str:
    rows = [("scenario", "figure", "value", "ratio", "target", "met")]
    for f in figures:
        value = f"{f.value:,.0f} {f.unit}" if f.value >= 100 else f"{f.value:.2f} {f.unit}"
        ratio = f"{f.ratio:.2f} x {f.reference}" if f.ratio is not None else ""
        met = "" if f.met is None else ("yes" if f.met else "NO")
        rows.append((f.scenario, f.name, value, ratio, f.target or "", met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


if __name__ == "__main__":
    raise SystemExit(main())
