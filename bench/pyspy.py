"""Optional: sample `tokenward serve` with py-spy under load and summarize where time goes."""

from __future__ import annotations

import re
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from services import ROOT, Processes

PY_SPY = str(ROOT / ".venv" / "bin" / "py-spy")
_LINE_NUMBER = re.compile(r":\d+\)$")
_OURS = re.compile(r"\((gateway|admin)/")
_ROOTS = re.compile(r"^(run|main|cmd_serve|_worker_main) \(")


def start_recording(processes: Processes, pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    argv = [PY_SPY, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    argv += ["--nonblocking", "--format", "raw", "--output", str(out)]
    return processes.spawn("py-spy", argv, None)


def _frame(name: str) -> str:
    """'handle (gateway/app.py:123)' -> 'handle (gateway/app.py)', shortened paths."""
    name = _LINE_NUMBER.sub(")", name)
    return re.sub(r"\(/[^)]*/(site-packages|work/main)/", "(", name)


def summarize(raw: Path, top: int = 12) -> dict[str, Any]:
    """Own time (leaf frames) and inclusive time per function, as % of samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame(f) for f in stack.split(";")]
        total += count
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count

    def share(counter: Counter[str]) -> list[list[Any]]:
        return [[name, round(100 * n / total, 1)] for name, n in counter.most_common(top)]

    ours = Counter({f: n for f, n in inclusive.items() if _OURS.search(f) and not _ROOTS.search(f)})
    if not total:
        return {}
    return {
        "samples": total,
        "own_pct": share(own),
        "inclusive_pct": share(inclusive),
        "tokenward_inclusive_pct": share(ours),
    }
