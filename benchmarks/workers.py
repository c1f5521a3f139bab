"""What the benchmarks that run each contender in a fresh process share: start one, read its result.

A worker is the benchmark script itself run with its hidden `--worker` arguments; it ends with
`emit(result)`, one `RESULT {json}` line on stdout, and the parent's `run_worker` returns that
dict. A fresh process per run keeps one contender's allocator, thread pool and oneDNN kernel
cache from warming the next one's. Each worker gets its own TMPDIR, removed when it ends, so the
decompressed MNIST copies and run directories it writes there (about 5 MiB to 50 MiB a run) do
not pile up in /tmp over hundreds of runs, also when a worker fails.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PREFIX = "RESULT "


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def emit(result: dict) -> None:
    """The worker's last word: its result and the process's peak resident memory, as one stdout line."""
    print(PREFIX + json.dumps({**result, "peak_rss_mib": peak_rss_mib()}), flush=True)


def write_record(path: Path | None, args, machine: dict, **parts: object) -> None:
    """The benchmark's --json file, when one was asked for: its arguments, the machine, then `parts`.

    Every figure a benchmark records names the machine it came from (benchmarks/README.md).
    """
    if path is not None:
        record = {"args": vars(args), "machine": machine, **parts}
        path.write_text(json.dumps(record, indent=2, default=str))


def run_worker(script: str | Path, *args: object, name: str) -> dict:
    """Run `python script *args` from the repository root and return what it emitted.

    A worker that fails, or ends without a result, stops the benchmark with `name`, its exit
    status and the tail of its stderr.
    """
    cmd = [sys.executable, str(script), *map(str, args)]
    with tempfile.TemporaryDirectory(prefix="mnist_lab_worker_") as scratch:
        env = {**os.environ, "TMPDIR": scratch}  # the worker's tempfile.mkdtemp() lands here
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    result = read_result(proc.stdout)
    if proc.returncode != 0 or result is None:
        raise SystemExit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return result


def read_result(stdout: str) -> dict | None:
    """What a worker emitted: the last result line of its stdout, or None when it emitted none."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(PREFIX)]
    return json.loads(lines[-1][len(PREFIX) :]) if lines else None
