"""The pure parts of bench/run.py's issue 17 lines: memory per unit, py-spy's areas, the
trusted proxy forward-auth needs. bench/ itself is not run by the suite (it takes minutes)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers.bench import bench_module
from tokenward.gateway.settings import settings_from_dict

EDITABLE = "/work/x/build/__editable__.tokenward-0.1.0-py3-none-any/tokenward"
SITE = "/work/x/.venv/lib/python3.11/site-packages"
STDLIB = "/root/.pyenv/versions/3.11.7/lib/python3.11"


def test_memory_per_unit_is_the_growth_divided_by_the_count() -> None:
    footprint = bench_module("footprint")
    assert footprint.per_unit(100, 300, 100) == 2.0
    assert footprint.per_unit(300, 100, 100) == -2.0  # shrinking shows, it is not hidden
    assert footprint.per_unit(100, 300, 0) == 0.0
    row = footprint.Footprint("idle_connection", "per idle connection", 2000, 100 * 2**20, 124 * 2**20, "ok")
    assert row.as_dict()["per_unit_bytes"] == 12583
    assert footprint.footprint_table([row]) == [["per idle connection", "2000", "100.0", "124.0", "12,583", "ok"]]


def test_py_spy_frames_are_named_by_repository_or_library_path() -> None:
    pyspy = bench_module("pyspy")
    assert pyspy.short_path(f"{EDITABLE}/gateway/app.py") == "gateway/app.py"
    assert pyspy.short_path(f"{EDITABLE}/server.py") == "admin/server.py"
    assert pyspy.short_path(f"{SITE}/tokenward/gateway/proxy.py") == "gateway/proxy.py"
    assert pyspy.short_path("/work/main/gateway/upstream.py") == "gateway/upstream.py"
    assert pyspy.short_path(f"{SITE}/aiohttp/web_protocol.py") == "aiohttp/web_protocol.py"
    assert pyspy.short_path(f"{STDLIB}/asyncio/events.py") == "asyncio/events.py"


def test_py_spy_samples_are_grouped_by_area(tmp_path: Path) -> None:
    pyspy = bench_module("pyspy")
    run = f"run ({STDLIB}/asyncio/runners.py:118)"
    stacks = {
        f"{run};write ({EDITABLE}/gateway/upstream.py:90)": 40,
        f"{run};start ({SITE}/aiohttp/web_protocol.py:500)": 20,
        f"{run};handle ({EDITABLE}/gateway/pipeline.py:120)": 15,
        f"{run};handle ({EDITABLE}/gateway/listener.py:10)": 5,  # the rebuilt inbound side
        # redis-py writes through asyncio's streams: the store client's time, not the loop's
        f"{run};send ({SITE}/redis/asyncio/connection.py:1168);writelines ({STDLIB}/asyncio/streams.py:340)": 5,
        f"{run};flush ({EDITABLE}/gateway/outbox.py:50);_write ({EDITABLE}/gateway/outbox.py:60)": 5,
        run: 5,  # uvloop's C code, under the innermost Python frame
        f"_run ({EDITABLE}/gateway/logs.py:80);flush ({STDLIB}/logging/__init__.py:1)": 5,
        f"_run ({EDITABLE}/gateway/logs.py:80);Condition.wait ({STDLIB}/threading.py:320)": 7,  # waiting: left out
    }
    raw = tmp_path / "raw.txt"
    raw.write_text("".join(f"{stack} {count}\n" for stack, count in stacks.items()))
    summary = pyspy.summarize(raw)
    assert summary["samples"] == 100 and summary["waiting_samples"] == 7
    areas = {key: pct for key, _, pct in summary["areas_pct"]}
    assert areas == {
        "upstream_client": 40.0,
        "inbound_server": 25.0,
        "socket_writes": 5.0,
        "tokenward": 15.0,
        "store_client": 5.0,
        "event_loop": 5.0,
        "other": 5.0,
    }
    assert ["write (gateway/upstream.py)", 40.0] in summary["own_pct"]
    assert summary["tokenward_inclusive_pct"][0] == ["write (gateway/upstream.py)", 40.0]


def test_the_bench_gateway_trusts_loopback_for_forward_auth() -> None:
    stack = bench_module("stack")
    config = stack.tokenward_config(8080, 8081, "redis://127.0.0.1:6379/0", 9000, Path("/tmp/bench"))
    settings = settings_from_dict(config, "bench")
    assert [str(n) for n in settings.trusted_proxies] == ["127.0.0.1/32"]
