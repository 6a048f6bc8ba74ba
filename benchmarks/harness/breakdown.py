"""Where a fresh ``swarmkeeper apply`` process spends its time, step by step.

Run as ``python -m harness.breakdown STATE_DIR`` in a fresh process (the
harness does): it times the imports apply needs, then loading the desired
state, reading the live state and planning, each once, as a new apply
process pays them, and prints the numbers as JSON. Nothing is written to the
swarm. ``--repeat`` adds warm repetitions of the in-process steps, as the
daemon pays them on every pass.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("state_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()

    started = time.perf_counter()
    from swarmkeeper.engine import Engine
    from swarmkeeper.live import read_live_state
    from swarmkeeper.loading.statedir import load_desired_state
    from swarmkeeper.planning import make_plan

    timings: dict[str, Any] = {"imports": time.perf_counter() - started}

    async def read() -> Any:
        async with Engine.connect(None, call_timeout=60) as engine:
            return await read_live_state(engine)

    rounds = []
    for _ in range(1 + arguments.repeat):
        t0 = time.perf_counter()
        desired = load_desired_state(arguments.state_dir, environ=dict(os.environ))
        t1 = time.perf_counter()
        live = asyncio.run(read())
        t2 = time.perf_counter()
        plan = make_plan(desired, live)
        t3 = time.perf_counter()
        rounds.append(
            {"load": t1 - t0, "read": t2 - t1, "plan": t3 - t2, "in_sync": plan.in_sync}
        )
    timings["first"] = rounds[0]
    timings["warm"] = rounds[1:]
    print(json.dumps(timings))


if __name__ == "__main__":
    main()
