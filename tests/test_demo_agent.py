"""The agent recipe `tokenward demo` prints (issue 16), run as printed: a child token delegated
for one run with a budget of 5 uses, an MCP tool listed, called and refused through tokenward,
the budget spent (429), the parent revoked."""

from __future__ import annotations

import asyncio
import re
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.helpers.demo import running_demo
from tests.helpers.process import env_for_subprocess


@pytest.fixture
async def printed(tmp_path: Path) -> AsyncIterator[str]:
    """What a running `tokenward demo` printed."""
    async with running_demo(tmp_path / "demo") as text:
        yield text


def recipe(printed: str) -> list[str]:
    """The recipe's command lines, without their comments, after the demo's export lines."""
    exports = re.findall(r"^  (export (?:PATH|TOKENWARD_ADMIN_URL|TOKENWARD_TOKEN)=.*)$", printed, re.M)
    block = printed[printed.index("agent recipe:") : printed.index("Ctrl-C to stop")]
    lines = [line.strip() for line in block.splitlines()[1:] if line.strip()]
    return exports + [re.sub(r"\s+#[^'\"]*$", "", line) for line in lines]


async def test_the_agent_recipe_works_as_printed(printed: str) -> None:
    commands = recipe(printed)
    script = "\n".join(f'{command}\necho "--- $?"' for command in commands)
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_for_subprocess(),
    )
    assert done.returncode == 0, done.stderr
    outputs = [part.strip() for part in done.stdout.split("--- 0")]
    assert "--- " not in done.stdout.replace("--- 0", ""), done.stdout  # every command exited 0
    joined = "\n".join(outputs)
    listing = next(out for out in outputs if '"tools"' in out)
    assert "search_apis" in listing and "register_api" not in listing and "drop_registry" not in listing
    assert "search_apis ran with" in joined  # the allowed call reached the MCP server
    assert '"code":-32003' in joined and "lacks required permission: write:apis" in joined
    assert (
        "200 200 429" in joined
    )  # the child's 5 uses: the apis call, 2 MCP calls, 2 more (the refused call costs none)
    assert done.stderr == "", done.stderr


async def test_the_recipe_child_ends_with_its_parent(printed: str) -> None:
    """After the recipe's revoke line, the child gets 401 (the recipe says so)."""
    commands = recipe(printed)
    script = "\n".join(commands) + '\ncurl -s -o /dev/null -w "%{http_code}" ' + re.search(
        r"curl -s (\S+/apis) -H \"Authorization: Bearer \$CHILD\"", printed
    ).group(1) + ' -H "Authorization: Bearer $CHILD"'  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run,
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env=env_for_subprocess(),
    )
    assert done.stdout.endswith("401"), (done.stdout, done.stderr)
