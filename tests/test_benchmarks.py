"""Smoke runs of the benchmark scripts: they run end to end and print their tables."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from mnist_lab import ROOT_DIR


def run_benchmark(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python benchmarks/<script> args...` from the repository root, its output captured; `env` added to ours."""
    cmd = [sys.executable, f"benchmarks/{script}", *args]
    return subprocess.run(
        cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


@pytest.mark.slow
def test_compare_article_smoke(tmp_path):
    out = tmp_path / "summary.json"
    result = run_benchmark(
        "compare_article.py", "--reps", "1", "--epochs", "1", "--limit-batches", "5", "--json", str(out)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout
    recorded = json.loads(out.read_text())
    assert recorded["machine"]["cpu_cores"] >= 1 and "native_bf16" in recorded["machine"]
    summary = {s["name"]: s for s in recorded["summary"]}
    assert set(summary) == {"article", "mnist_lab"}
    assert summary["article"]["ratio_vs_article"] == 1.0
    for s in summary.values():
        assert s["median_epoch_s"] > 0 and s["peak_rss_mib"] > 100 and 0 < s["test_acc"][0] <= 1
        assert s["gflops"] > 0 and s["fraction_of_matmul"] > 0  # the roofline column
    assert recorded["matmul_gflops"]["fp32"] > 0


@pytest.mark.slow
def test_parity_smoke(tmp_path):
    # Sizes cheap where bf16 is emulated (no AVX512_BF16 or AMX, e.g. a Zen 3): there one
    # 2048x2048 bf16 matmul took 3 minutes and a bf16 training step of 64 images 1.5 s (one
    # thread, oneDNN and ATen capped to AVX2). So: a 256x256 matmul, 3 training batches, one
    # batch of 256 to validate and test. The run stands in for such a CPU on every machine
    # (the same caps, bf16_isa.py's "avx2"), so a size that is slow there fails here too.
    out = tmp_path / "parity.json"
    sizes = "--limit-batches 3 --limit-eval-batches 1 --matmul-size 256".split()
    emulated = benchmark_module("bf16_isa").ISAS["avx2"]
    result = run_benchmark("parity.py", "--reps", "1", "--epochs", "1", *sizes, "--json", str(out), env=emulated)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bf16-mixed: matmul 256x256" in result.stdout
    for precision in ("32-true", "bf16-mixed"):
        assert f"overhead {precision}: " in result.stdout and "% of the plain loop's epoch" in result.stdout
    recorded = json.loads(out.read_text())
    summary = recorded["summary"]
    assert set(summary) == {"32-true", "bf16-mixed"}
    assert all("step_marks" not in r for sides in recorded["runs"].values() for r in sides["plain"])  # kept small
    for s in summary.values():
        assert s["matmul_gflops"] > 0 and len(s["overhead_pct_per_rep"]) == 1
        for side in (s["plain"], s["mnist_lab"]):
            assert side["median_epoch_s"] > 0 and side["gflops"] > 0 and 0 < side["fraction_of_matmul"]
        # the same seed, data order, weights and arithmetic on both sides: the same test accuracy
        # up to float rounding (summation order differs between Lightning's and the loop's steps)
        assert abs(s["plain"]["test_acc"][0] - s["mnist_lab"]["test_acc"][0]) <= 0.01


def test_mnist_labs_side_stays_on_the_cpu_unless_a_gpu_is_asked_for():
    # The trainer's accelerator is "auto": on a GPU machine the CPU comparisons (the article's
    # loop, the plain loop) would otherwise race a GPU run of mnist_lab.
    device_overrides = benchmark_module("compare_article").device_overrides
    assert device_overrides([]) == ["trainer.accelerator=cpu"]
    assert device_overrides(["trainer.precision=bf16-mixed", "model=mlp"]) == ["trainer.accelerator=cpu"]
    assert device_overrides(["trainer=gpu", "data.on_device=true"]) == []  # parity.py --device cuda
    assert device_overrides(["trainer.accelerator=gpu"]) == []
    assert device_overrides(["+trainer.accelerator=cpu"]) == []
    assert "trainer=gpu" in benchmark_module("parity").MNIST_LAB_ON["cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
@pytest.mark.slow
def test_parity_on_cuda_without_a_gpu_says_so():
    result = run_benchmark("parity.py", "--device", "cuda", "--reps", "1", "--epochs", "1", "--limit-batches", "2")
    assert result.returncode == 2 and "--device cuda" in result.stderr and "no CUDA GPU" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
@pytest.mark.slow
def test_gpu_checks_stop_at_once_without_a_gpu(tmp_path):
    result = subprocess.run(
        ["bash", "benchmarks/gpu_checks.sh", str(tmp_path / "out")],
        cwd=ROOT_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"},  # its `python`: this one
    )
    assert result.returncode != 0 and "no CUDA GPU" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []  # nothing measured, nothing written


@pytest.mark.slow
def test_step_overhead_smoke(tmp_path):
    out = tmp_path / "steps.json"
    args = "--reps 1 --steps 12 --warmup 2 --models tiny --precision 32-true bf16-mixed".split()
    result = run_benchmark("step_overhead.py", *args, "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert all(
        f"{a} - {b}" in result.stdout
        for a, b in (("lightning", "plain"), ("manual", "plain"), ("mnist_lab", "lightning"))
    )
    recorded = json.loads(out.read_text())
    assert recorded["machine"]["cpu_cores"] >= 1
    assert set(recorded["summary"]) == {"tiny 32-true", "tiny bf16-mixed"}
    for case, row in recorded["summary"].items():
        runs = recorded["runs"][case]
        sides = ("plain", "lightning", "manual", "mnist_lab")
        assert set(runs) == {*sides, "peak_rss_mib"}  # one process ran all four
        assert all(len(runs[side]) == 1 and runs[side][0]["step_ms"] > 0 for side in sides)
        assert row["mnist_lab_between_ms"] > 0
        for side in ("plain", "lightning", "manual"):  # all record the same marks per step (parity.MARKS)
            segments = row["segments_ms"][side]
            assert set(segments) == {"forward", "backward", "optimizer", "rest"}
            assert all(ms > 0 for ms in segments.values())
        # the three overheads are differences of the same medians
        assert row["mnist_lab_overhead_ms"] == pytest.approx(
            row["lightning_overhead_ms"] + row["mnist_lab_added_overhead_ms"]
        )


@pytest.mark.slow
def test_step_overhead_times_whole_steps():
    step_overhead = benchmark_module("step_overhead")
    starts = [0.0, 0.010, 0.011, 0.013, 0.016]  # steps of 10, 1, 2 and 3 ms
    assert step_overhead.median_step_ms(starts, warmup=0) == pytest.approx(2.5)
    assert step_overhead.median_step_ms(starts, warmup=1) == pytest.approx(2.0)  # the first step left out
    ends = [0.009, 0.0105, 0.0125, 0.0155]  # each end 1, 0.5, 0.5, 0.5 ms before the next start
    assert step_overhead.between_ms(starts, ends, warmup=0) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="--steps"):
        step_overhead.median_step_ms(starts, warmup=4)
    ms = 0.001  # marks in parity.MARKS order: start, forward, its end, backward, its end, step, its end
    marks = [(0, 1, 3, 3.5, 6.5, 6.5, 7), (10, 11, 15, 15, 16, 17, 18), (20,)]
    segments = step_overhead.segments_ms([[t * ms for t in m] for m in marks], warmup=0)
    # medians of two steps: forward 2 and 4, backward 3 and 1, optimizer 0.5 and 1, rest 4.5 and 4 ms
    assert segments == pytest.approx({"forward": 3.0, "backward": 2.0, "optimizer": 0.75, "rest": 4.25})
    result = run_benchmark("step_overhead.py", "--steps", "20", "--warmup", "20")
    assert result.returncode != 0 and "--steps 20" in result.stderr


@pytest.mark.slow
def test_scaling_smoke():
    result = run_benchmark("scaling.py", "--sizes", "640", "--batches", "64", "128", "--epochs", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    machine, header, *lines = result.stdout.splitlines()
    assert machine.startswith("machine: ") and "torch_cpu_capability" in machine
    assert "matmul 2048x2048 fp32" in machine and "GFLOP/s" in header
    rows = [ln.split() for ln in lines]
    assert [(r[0], r[1]) for r in rows] == [("640", "64"), ("640", "128")]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)  # GFLOP/s and its fraction of the matmul rate


@pytest.mark.slow
def test_widths_smoke():
    result = run_benchmark("widths.py", "--widths", "16/32", "8/16", "--batches", "32", "--steps", "2", "--reps", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split() for ln in result.stdout.splitlines()[3:]]  # after the machine, torch and header lines
    assert [(r[0], r[1], r[2]) for r in rows] == [("16/32", "before", "32"), ("8/16", "before", "32")]
    assert all(float(r[4]) > 0 and float(r[5]) > 0 for r in rows)
    # the parameter count is the model's: a 16/32 CNN with batch norm has 207,226
    assert rows[0][3] == "207226"


@pytest.mark.slow
def test_widths_sets_the_two_batch_norm_placements_side_by_side():
    args = "--widths 8/16 --norm before after --bf16 --batches 16 --steps 2 --reps 2".split()
    result = run_benchmark("widths.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout.splitlines()
    assert "bf16 autocast" in out[1]
    rows = [ln.split() for ln in out[3:5]]
    assert [(r[1], r[3]) for r in rows] == [("before", rows[0][3]), ("after", rows[0][3])]  # the same parameters
    (ratio,) = [ln for ln in out if ln.startswith("8/16 batch 16: after/before")]
    assert len(ratio.split("per repetition")[1].split()) == 2  # one ratio per repetition


@pytest.mark.slow
def test_widths_profiles_each_network():
    args = "--widths 8/16 --norm before after --batches 16 --steps 2 --reps 1 --profile 3".split()
    result = run_benchmark("widths.py", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "profile: 8/16, norm before, batch 16, 2 steps" in out and "profile: 8/16, norm after, batch 16" in out
    assert out.count("Self CPU time total") == 2  # one torch.profiler table a network


@pytest.mark.slow
def test_widths_names_a_malformed_width():
    result = run_benchmark("widths.py", "--widths", "16x32")
    assert result.returncode != 0 and "16x32" in result.stderr


@pytest.mark.slow
def test_eval_batch_smoke():
    result = run_benchmark("eval_batch.py", "--batches", "64", "128", "--reps", "1", "--limit", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split() for ln in result.stdout.splitlines() if ln.strip() and ln.split()[0].isdigit()]
    assert [r[0] for r in rows] == ["64", "128"]
    assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)


@pytest.mark.slow
def test_augment_benchmark_smoke():
    result = run_benchmark("augment.py", "--reps", "1", "--steps", "1", "--batch", "16")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {ln.split()[0]: ln.split()[-2:] for ln in result.stdout.splitlines()[3:]}
    assert set(rows) == {"training", "affine", "elastic"}  # the step, then every conf/data/augment choice
    assert rows["training"][1] == "1.00" and all(float(ms) > 0 for ms, _ in rows.values())


@pytest.mark.slow
def test_speedrun_benchmark_smoke(tmp_path):
    out = tmp_path / "speedrun.json"
    # one test batch: the preset trains in bf16, which a CPU without native bf16 emulates slowly
    preset = "speedrun_bf16 trainer.limit_test_batches=1"
    args = ["--seeds", "1", "--article-reps", "1", "--limit-batches", "3", "--preset", preset]
    result = run_benchmark("speedrun.py", *args, "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "article loop: median epoch" in result.stdout and "not met" in result.stdout  # 3 batches reach no 99%
    recorded = json.loads(out.read_text())
    assert recorded["machine"]["cpu_cores"] >= 1 and recorded["article_epoch_s"] > 0
    (row,) = recorded["summary"]
    assert row["preset"] == preset and row["median_train_s"] > 0 and row["targets_met"] is False
    assert row["ratio_vs_article_epoch"] == row["median_train_s"] / recorded["article_epoch_s"]
    (run,) = recorded["runs"][preset]
    assert run["precision"] == "bf16-mixed"  # the preset's own config reached train(cfg)


def benchmark_module(name: str):
    """A module of benchmarks/, imported as the scripts import each other (by name)."""
    sys.path.insert(0, str(ROOT_DIR / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.pop(0)


def test_speedrun_benchmark_spreads_the_article_runs():
    plan = benchmark_module("speedrun").plan
    order = plan(["a", "b"], seeds=3, article_reps=2)
    assert order == [("article", 0), ("a", 0), ("b", 0), ("a", 1), ("article", 1), ("b", 1), ("a", 2), ("b", 2)]


@pytest.mark.slow
def test_bf16_isa_smoke(tmp_path):
    out = tmp_path / "isa.json"
    args = "--isa native --batch 16 --blocks 1 --steps 2".split()  # batch 16: cheap where bf16 is emulated
    result = run_benchmark("bf16_isa.py", *args, "--json", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    recorded = json.loads(out.read_text())
    results = recorded["results"]
    assert [r["isa"] for r in results] == ["native", "native"]
    for r in results:
        assert r["fp32_ms"] > 0 and r["bf16_ms"] > 0
        # ONEDNN_VERBOSE named the implementations; an AVX2-only CPU has no oneDNN bf16 convolution
        if recorded["machine"]["torch_cpu_capability"] == "AVX512":
            assert r["bf16_conv_kernels"] and all(":" in k for k in r["bf16_conv_kernels"])


def test_a_failing_worker_stops_the_benchmark_with_its_stderr(tmp_path):
    workers = benchmark_module("workers")
    script = tmp_path / "worker.py"
    script.write_text("import sys\nprint('no result')\nsys.exit('bad override: trainer.max_epochs=x')\n")
    with pytest.raises(SystemExit, match=r"(?s)article run failed \(exit 1\):.*trainer.max_epochs=x"):
        workers.run_worker(script, "--worker", "article", name="article run")
    script.write_text("print('RESULT {\"epoch_seconds\": [1.5]}')\n")
    assert workers.run_worker(script, name="article run") == {"epoch_seconds": [1.5]}


def test_a_worker_leaves_nothing_in_tmp(tmp_path, monkeypatch):
    # hundreds of benchmark runs once filled the disk with their MNIST copies and run directories
    workers = benchmark_module("workers")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))  # where run_worker makes the worker's TMPDIR
    script = tmp_path / "worker.py"
    script.write_text(
        "import json, pathlib, sys, tempfile\n"
        "d = pathlib.Path(tempfile.mkdtemp(prefix='article_mnist_'))\n"
        "(d / 'train-images').write_bytes(bytes(1000))\n"
        "print('RESULT ' + json.dumps({'scratch': str(d)}))\n"
        "sys.exit(int(sys.argv[1]))\n"
    )
    scratch = workers.run_worker(script, "0", name="worker")["scratch"]
    assert scratch.startswith(str(tmp))  # the worker wrote into its own TMPDIR...
    with pytest.raises(SystemExit, match="exit 3"):
        workers.run_worker(script, "3", name="worker")
    assert list(tmp.iterdir()) == []  # ...which is gone, also after a failing run
