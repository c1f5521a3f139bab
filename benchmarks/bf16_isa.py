"""Does bf16 pay on this CPU, and on the CPUs it can pretend to be? fp32 against bf16 autocast per oneDNN ISA.

    python benchmarks/bf16_isa.py                     # every ISA below; both models
    python benchmarks/bf16_isa.py --blocks 1 --steps 5   # smoke run

bf16 is fast only where the CPU multiplies bf16 natively (AVX512_BF16, AMX): elsewhere oneDNN
converts to fp32 and back around fp32 arithmetic, or has no bf16 kernel at all. This machine
can stand in for older CPUs: `ONEDNN_MAX_CPU_ISA` caps the instructions oneDNN dispatches to
(convolutions and the bf16 linears) and `ATEN_CPU_CAPABILITY` those of ATen's own kernels
(pooling, ReLU, batch norm, casts). Each ISA runs in a fresh subprocess:
- `native`: whatever this CPU has (read the machine line);
- `avx512_core_bf16`: AVX512_BF16 without AMX (Cooper Lake, Zen 4; on an AMX CPU, the tiles off);
- `avx512_core`: AVX-512 without its bf16 instructions (a Skylake/Cascade Lake server);
- `avx2`: AVX2 only, in oneDNN and ATen (most desktops before 2021, Zen 1-3).

In each, a model trains on real MNIST batches (the bundled data/mnist, normalised, channels_last,
Adam) in `--blocks` alternating blocks of `--steps` steps per precision; the median ms per
step of each precision and their ratio are printed, with the oneDNN implementations that ran
the bf16 convolutions (from ONEDNN_VERBOSE on one step). An ISA the CPU lacks is capped to
what it has, which the implementation names show.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

# benchmarks/ is the script's directory, so its modules import by name.
from workers import ROOT, emit, read_result, write_record

ISAS = {  # name -> environment of the subprocess
    "native": {},
    # AVX-512 with its bf16 dot products but no AMX tiles (Cooper Lake, Zen 4): on an AMX CPU
    # this shows what the tiles add; elsewhere it is capped to what the CPU has.
    "avx512_core_bf16": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"},
    "avx512_core": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
MODELS = {  # name -> mnist_lab.models.CNN keyword arguments
    "cnn (the article's)": {},
    # experiment=speedrun's network; the records before 3 Dec 2026 ran it with batch norm before the pool.
    "cnn 16/32 bn after pool (speedrun)": {
        "conv1_channels": 16,
        "conv2_channels": 32,
        "batch_norm": True,
        "norm_after_pool": True,
    },
}


def worker(model: str, batch: int, blocks: int, steps: int, verbose_only: bool) -> None:
    import torch
    import torch.nn.functional as F

    from mnist_lab.data.idx import read_idx
    from mnist_lab.data.pixels import normalize
    from mnist_lab.models import CNN

    torch.manual_seed(0)
    images = read_idx(ROOT / "data" / "mnist" / "train-images-idx3-ubyte.gz")[: batch * steps].unsqueeze(1)
    labels = read_idx(ROOT / "data" / "mnist" / "train-labels-idx1-ubyte.gz")[: batch * steps].long()
    net = CNN(**MODELS[model]).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)

    def step(i: int, bf16: bool) -> None:
        x = normalize(images[i * batch : (i + 1) * batch], 0.1307, 0.3081).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
            loss = F.cross_entropy(net(x), labels[i * batch : (i + 1) * batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    if verbose_only:  # ONEDNN_VERBOSE is set by the parent: one warm-up, then the step it reads
        step(0, True)
        print("STEP", flush=True)
        step(1, True)
        return
    for bf16 in (False, True):  # warm-up: oneDNN picks and caches its kernels
        for i in range(3):
            step(i, bf16)
    per_step: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for b in range(blocks):
        for name in ("fp32", "bf16") if b % 2 == 0 else ("bf16", "fp32"):
            start = time.perf_counter()
            for i in range(steps):
                step(i, name == "bf16")
            per_step[name].append((time.perf_counter() - start) / steps * 1e3)
    emit(per_step)


def spawn(isa: str, model: str, args: argparse.Namespace, verbose: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, **ISAS[isa], **({"ONEDNN_VERBOSE": "1"} if verbose else {})}
    cmd = [sys.executable, __file__, "--worker", model, "--batch", str(args.batch)]
    cmd += ["--blocks", str(args.blocks), "--steps", str(args.steps)] + (["--verbose-only"] if verbose else [])
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{isa} / {model} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def bf16_conv_kernels(stdout: str) -> list[str]:
    """The oneDNN implementations of the convolutions in the step after the STEP marker."""
    lines = stdout.split("STEP", 1)[-1].splitlines()
    # onednn_verbose,v1,primitive,exec,cpu,convolution,<implementation>,<propagation>,...
    fields = [ln.split(",") for ln in lines if ",exec," in ln and ",convolution," in ln]
    return sorted({f"{f[f.index('convolution') + 2]}:{f[f.index('convolution') + 1]}" for f in fields})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--isa", action="append", choices=list(ISAS), default=None, help="default: all")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--blocks", type=int, default=4, help="alternating timed blocks per precision")
    p.add_argument("--steps", type=int, default=50, help="training steps per block")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--worker", choices=list(MODELS), help=argparse.SUPPRESS)
    p.add_argument("--verbose-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.worker, args.batch, args.blocks, args.steps, args.verbose_only)

    from mnist_lab.records import machine_record

    machine = machine_record()
    print(f"machine: {machine}\nbatch {args.batch}, {args.blocks} alternating blocks of {args.steps} steps\n")
    print(f"{'ISA':<16} {'model':<26} {'fp32 ms':>8} {'bf16 ms':>8} {'bf16/fp32':>9}  bf16 conv kernels (oneDNN)")
    results = []
    for isa in args.isa or list(ISAS):
        for model in MODELS:
            per_step = read_result(spawn(isa, model, args).stdout)
            if per_step is None:
                raise SystemExit(f"{isa} / {model}: the worker ended without a result")
            peak_rss_mib = per_step.pop("peak_rss_mib")
            kernels = bf16_conv_kernels(spawn(isa, model, args, verbose=True).stdout)
            fp32, bf16 = statistics.median(per_step["fp32"]), statistics.median(per_step["bf16"])
            results.append({"isa": isa, "model": model, "fp32_ms": fp32, "bf16_ms": bf16, "per_block": per_step,
                            "bf16_conv_kernels": kernels, "peak_rss_mib": peak_rss_mib})  # fmt: skip
            print(f"{isa:<16} {model:<26} {fp32:8.2f} {bf16:8.2f} {bf16 / fp32:9.2f}  {' '.join(kernels)}", flush=True)
    write_record(args.json, args, machine, results=results)


if __name__ == "__main__":
    main()
