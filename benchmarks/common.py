"""What the benchmarks share: worker processes, the roofline, and the JSON record each run writes.

A worker is the benchmark module itself run with its hidden `--worker` arguments
(`python -m benchmarks.<name> --worker ...`); it ends with `emit(result)`, one `RESULT {json}`
line on stdout, and the parent's `run_worker` returns that dict. A fresh process per run keeps
one contender's allocator, thread pool and oneDNN kernel cache from warming the next one's.
Each worker gets its own TMPDIR, removed when it ends, so the decompressed MNIST copies and run
directories it writes there (about 5 MiB to 50 MiB a run) do not pile up in /tmp over hundreds
of runs, also when a worker fails.

Every run writes one record into `benchmarks/results/` (`write_record`): its command line, git
commit, UTC date, `records.machine_record()` and its figures, as
`<benchmark>_<machine class>.json`, so a new run replaces the record of the same benchmark on
the same class of machine. `python -m benchmarks.results` turns the records into the tables of
docs/performance.md.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PREFIX = "RESULT "


# --- worker processes -------------------------------------------------------------------------


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def emit(result: dict) -> None:
    """The worker's last word: its result and the process's peak resident memory, as one stdout line."""
    print(PREFIX + json.dumps({**result, "peak_rss_mib": peak_rss_mib()}), flush=True)


def run_worker(module: str, *args: object, name: str) -> dict:
    """Run `python -m module *args` from the repository root and return what it emitted.

    `module` is a benchmark's module name (`benchmarks.parity`) or, for tests, a script's path.
    A worker that fails, or ends without a result, stops the benchmark with `name`, its exit
    status and the tail of its stderr.
    """
    target = [str(module)] if str(module).endswith(".py") else ["-m", str(module)]
    cmd = [sys.executable, *target, *map(str, args)]
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


# --- the roofline: a network's training FLOPs against this machine's matmul rate ---------------

# The dtype that a Lightning precision runs its matmuls and convolutions in (bf16-mixed: autocast to bf16).
MATMUL_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PRECISION_DTYPES = {"32-true": "fp32", "32": "fp32", "bf16-mixed": "bf16", "bf16-true": "bf16", "bf16": "bf16"}


def train_flops_per_image(net: nn.Module, in_channels: int = 1, batch: int = 4) -> float:
    """FLOPs of one training step of `net` per (in_channels, 28, 28) image: forward, cross-entropy, backward.

    Counted with FlopCounterMode, which counts what autograd really runs: the first conv
    computes no input gradient, so the article's CNN is 26.6 MFLOP per image, not 3x forward (27.9).
    """
    x = torch.randn(batch, in_channels, 28, 28)
    y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(net(x), y).backward()
    net.zero_grad(set_to_none=True)
    return counter.get_total_flops() / batch


def matmul_gflops(dtype_name: str = "fp32", n: int = 2048, reps: int = 5, device: str = "cpu") -> float:
    """GFLOP/s of an n x n matmul in dtype "fp32" or "bf16" on `device`, median of `reps` after a warm-up.

    The ceiling a step's convolutions and linears could at best reach; a table's `of mm`
    column is a run's GFLOP/s over this rate.
    """
    dtype = MATMUL_DTYPES[dtype_name]
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    torch.mm(a, b)  # oneDNN/MKL (cuBLAS) pick and cache their kernels on the first call
    times = []
    for _ in range(reps):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def synchronize(device: str | torch.device) -> None:
    """Wait for `device`'s queued kernels (a GPU runs them asynchronously), so a clock read after it is true."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def matmul_dtype(precision: str) -> str:
    """The matmul dtype ("fp32" or "bf16") of a Lightning precision such as "32-true" or "bf16-mixed"."""
    return PRECISION_DTYPES[str(precision)]


def dtype_of(overrides: list[str], default: str = "32-true") -> str:
    """The matmul dtype of the trainer.precision that a list of config overrides sets (else of `default`)."""
    values = [o.partition("=")[2] for o in overrides if o.partition("=")[0].lstrip("+") == "trainer.precision"]
    return matmul_dtype(values[-1] if values else default)


# --- records ----------------------------------------------------------------------------------


def machine_class(machine: dict[str, Any]) -> str:
    """A file-name slug for a class of machine: CPU model, family and model number, GPU.

    Virtual machines all named "AMD EPYC" differ by generation, which family and model tell
    apart (family 25 model 17 is a Zen 4, family 26 a Zen 5); a GPU makes its own class.
    """
    parts = [machine.get("cpu") or "unknown cpu"]
    if machine.get("cpu_family") is not None:
        parts.append(f"family {machine['cpu_family']} model {machine.get('cpu_model_number')}")
    if machine.get("gpu"):
        parts.append(machine["gpu"])
    slug = re.sub(r"\((r|tm)\)", "", " ".join(parts).lower())
    return re.sub(r"[^a-z0-9]+", "-", slug).strip("-")


def git_commit() -> str | None:
    """The checkout's commit, with "-dirty" when tracked files differ from it (None outside git)."""
    git = ["git", "-C", str(ROOT)]
    try:
        commit = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run([*git, "status", "--porcelain", "-uno"], capture_output=True, text=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.strip() + ("-dirty" if dirty.strip() else "")


def command_line(module: str, argv: list[str]) -> str:
    """The command that reruns a benchmark: `python -m <module>` and its arguments, less --results-dir."""
    args = list(argv)
    if "--results-dir" in args:
        del args[args.index("--results-dir") : args.index("--results-dir") + 2]
    args = [a for a in args if not a.startswith("--results-dir=")]
    return shlex.join(["python", "-m", module, *args])


def write_record(benchmark: str, module: str, results_dir: Path, machine: dict, figures: dict, **extra: object) -> Path:
    """Write this run's record (`benchmark` names it: "parity-step"), replacing the one of the same machine class.

    `figures` is what the tables read; `extra` (the runs, the arguments) is kept beside them.
    """
    record = {
        "benchmark": benchmark,
        "command": command_line(module, sys.argv[1:]),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine,
        "torch": torch.__version__,
        "figures": figures,
        **extra,
    }
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{benchmark}_{machine_class(machine)}.json"
    path.write_text(json.dumps(record, indent=1, default=str) + "\n")
    print(f"record: {path}")
    return path
