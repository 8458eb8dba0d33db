"""What a credential that is not ours costs the authentication step, before and after keys
are imported (issue 14 item 7). See bench/README.md.

    .venv/bin/python bench/legacy_lookup.py [--requests 2000]

`Authenticator.authenticate` in process against a real Valkey (the bundled one, on a free
port), one request at a time: no HTTP, so the figures are the step's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from tokenward.actor import Actor
from tokenward.demo import demo_config
from tokenward.gateway.embedded import EmbeddedServer, free_port, free_ports
from tokenward.gateway.records import TeamRecord
from tokenward.gateway.refusal import Refusal
from tokenward.gateway.runtime import Runtime
from tokenward.gateway.scopes import parse_scopes
from tokenward.gateway.settings import settings_from_dict
from tokenward.gateway.throttle import LookupBudget
from tokenward.gateway.tokens import generate
from tokenward.imports import ImportService
from tokenward.server import Server

IMPORTED = "sk_live_bench_7Hq2xK9mWp4Rt8Vz3Lc6Nb5J"


async def run(requests: int) -> None:
    data = Path(tempfile.mkdtemp(prefix="tw-legacy-"))
    store = EmbeddedServer(data / "valkey", port=free_port())
    store.start()
    try:
        config = demo_config(data, *free_ports(3))
        config["tokens"]["legacy_lookup_key"] = "bench-lookup-key-" + "0" * 32
        config["tokens"]["argon2"] = {"time_cost": 1, "memory_cost": 1024, "parallelism": 1}
        config["log"] = {"level": "error", "format": "json"}
        server = Server(settings_from_dict(config, "bench"), redis_url=store.url, shutdown_timeout=1.0)
        runtime = await server.start()
        auth = runtime.authenticator

        async def cost(label: str, credential: Callable[[int], str], count: int = requests) -> None:
            argon2, reads = auth.argon2_verifications, await _gets(runtime)
            start = time.perf_counter()
            for i in range(count):
                try:
                    await auth.authenticate(credential(i), None)
                except Refusal:
                    pass
            micros = (time.perf_counter() - start) / count * 1e6
            gets = (await _gets(runtime) - reads) / count
            print(
                f"{label:58s} {micros:8.1f} µs   store reads/req {gets:4.2f}   argon2 {auth.argon2_verifications - argon2}"
            )

        await cost("ours, bad checksum (step 2)", lambda i: f"tw_sat_{i:050d}")
        await cost("not ours, nothing imported yet", lambda i: f"sk_live_garbage_{i:08d}")
        await runtime.store.create_team(TeamRecord("acme", "platform", parse_scopes(["read:apis"]), 0.0, "bench"))
        await ImportService(runtime).import_key(
            Actor("bench"), org="acme", team="platform", name="old", key=IMPORTED, scopes=["read:apis"]
        )
        budget = auth.lookups
        auth.lookups = LookupBudget(per_client=(1e12, 0.0), overall=(1e12, 0.0))  # no budget: as before it
        await cost("not ours, keys imported, each new and unknown, no budget", lambda i: f"sk_live_other_{i:08d}")
        auth.lookups = budget
        await cost("not ours, keys imported, each new and unknown, budgeted", lambda i: f"sk_live_more_{i:08d}")
        await cost("not ours, the same unknown one again", lambda i: "sk_live_other_00000001")
        await cost("ours, each one a new unknown key id", lambda i: generate("tw_sat")[0])
        await cost("an imported key, proven once, then cached", lambda i: IMPORTED)
        await server.stop()
    finally:
        store.stop()


async def _gets(runtime: Runtime) -> int:
    stats = await runtime.store.client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("get", "hget", "exists"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    asyncio.run(run(parser.parse_args().requests))


if __name__ == "__main__":
    main()
