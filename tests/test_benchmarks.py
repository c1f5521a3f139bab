"""The benchmarks: a smoke run of each (tiny sizes), their records, and the commands the docs quote."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from benchmarks import common, compare_article, parity, speedrun
from mnist_lab import ROOT_DIR

# What a CPU without native bf16 (AVX2 only, e.g. a Zen 3) dispatches: oneDNN and ATen capped.
# There one 2048x2048 bf16 matmul took 3 minutes and a bf16 training step of 64 images 1.5 s,
# so a smoke run's sizes must stay cheap when emulated; running it so everywhere keeps them honest.
AVX2_ONLY = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}


def run_benchmark(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m benchmarks.<module> args...` from the repository root, its output captured; `env` added to ours."""
    cmd = [sys.executable, "-m", f"benchmarks.{module}", *args]
    return subprocess.run(
        cmd, cwd=ROOT_DIR, capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})}
    )


def only_record(results: Path) -> dict:
    (path,) = results.iterdir()
    record = json.loads(path.read_text())
    assert path.name == f"{record['benchmark']}_{common.machine_class(record['machine'])}.json"
    assert record["command"].startswith("python -m benchmarks.") and "--results-dir" not in record["command"]
    assert record["machine"]["cpu_cores"] >= 1 and "native_bf16" in record["machine"] and record["date"]
    return record


@pytest.mark.slow
def test_compare_article_smoke(tmp_path):
    result = run_benchmark(
        "compare_article",
        *"--reps 1 --epochs 1 --limit-batches 3 --limit-eval-batches 1".split(),
        *("--results-dir", str(tmp_path)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ratio" in result.stdout
    recorded = only_record(tmp_path)
    assert recorded["benchmark"] == "compare_article"
    summary = {s["name"]: s for s in recorded["figures"]["summary"]}
    assert set(summary) == {"article", "mnist_lab"}
    assert summary["article"]["ratio_vs_article"] == 1.0
    for s in summary.values():
        assert s["median_epoch_s"] > 0 and s["peak_rss_mib"] > 100 and 0 < s["test_acc"][0] <= 1
        assert s["gflops"] > 0 and s["fraction_of_matmul"] > 0  # the roofline column
    assert recorded["figures"]["matmul_gflops"]["fp32"] > 0


@pytest.mark.slow
def test_parity_per_epoch_smoke(tmp_path):
    # bf16 (fp32's path is the same without autocast), a 256x256 matmul, 3 training batches, one
    # batch of 256 to validate and test: cheap where bf16 is emulated (AVX2_ONLY)
    sizes = "--precision bf16-mixed --limit-batches 3 --limit-eval-batches 1 --matmul-size 256".split()
    args = ["--reps", "1", "--epochs", "1", *sizes, "--results-dir", str(tmp_path)]
    result = run_benchmark("parity", *args, env=AVX2_ONLY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "bf16-mixed: matmul 256x256" in result.stdout
    assert "overhead bf16-mixed: " in result.stdout and "% of the plain loop's epoch" in result.stdout
    recorded = only_record(tmp_path)
    assert recorded["benchmark"] == "parity-epoch"
    summary = recorded["figures"]["summary"]
    assert set(summary) == {"bf16-mixed"}
    assert all("step_marks" not in r for sides in recorded["runs"].values() for r in sides["plain"])  # kept small
    for s in summary.values():
        assert s["matmul_gflops"] > 0 and len(s["overhead_pct_per_rep"]) == 1
        for side in (s["plain"], s["mnist_lab"]):
            assert side["median_epoch_s"] > 0 and side["gflops"] > 0 and 0 < side["fraction_of_matmul"]
        # the same seed, data order, weights and arithmetic on both sides: the same test accuracy
        # up to float rounding (summation order differs between Lightning's and the loop's steps)
        assert abs(s["plain"]["test_acc"][0] - s["mnist_lab"]["test_acc"][0]) <= 0.01


@pytest.mark.slow
def test_parity_per_step_smoke(tmp_path):
    # one case, one worker process (each costs seconds of imports): the tiny MLP in bf16, autocast's path
    args = "--per step --reps 1 --steps 12 --warmup 2 --models tiny --precision bf16-mixed".split()
    result = run_benchmark("parity", *args, "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "machine: {" in result.stdout
    assert all(
        f"{a} - {b}" in result.stdout
        for a, b in (("lightning", "plain"), ("manual", "plain"), ("mnist_lab", "lightning"))
    )
    recorded = only_record(tmp_path)
    assert recorded["benchmark"] == "parity-step"
    summary = recorded["figures"]["summary"]
    assert set(summary) == {"tiny bf16-mixed"}
    for case, row in summary.items():
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


def test_parity_per_step_times_whole_steps():
    starts = [0.0, 0.010, 0.011, 0.013, 0.016]  # steps of 10, 1, 2 and 3 ms
    assert parity.median_step_ms(starts, warmup=0) == pytest.approx(2.5)
    assert parity.median_step_ms(starts, warmup=1) == pytest.approx(2.0)  # the first step left out
    ends = [0.009, 0.0105, 0.0125, 0.0155]  # each end 1, 0.5, 0.5, 0.5 ms before the next start
    assert parity.between_ms(starts, ends, warmup=0) == pytest.approx(0.5)
    with pytest.raises(SystemExit, match="--steps"):
        parity.median_step_ms(starts, warmup=4)
    ms = 0.001  # marks in parity.MARKS order: start, forward, its end, backward, its end, step, its end
    marks = [(0, 1, 3, 3.5, 6.5, 6.5, 7), (10, 11, 15, 15, 16, 17, 18), (20,)]
    segments = parity.segments_ms([[t * ms for t in m] for m in marks], warmup=0)
    # medians of two steps: forward 2 and 4, backward 3 and 1, optimizer 0.5 and 1, rest 4.5 and 4 ms
    assert segments == pytest.approx({"forward": 3.0, "backward": 2.0, "optimizer": 0.75, "rest": 4.25})


@pytest.mark.parametrize(
    "args, message",
    [
        ("--per step --steps 20 --warmup 20", "--steps 20"),
        ("--per step --device cuda", "--per epoch --device cuda"),
        pytest.param(
            "--device cuda --reps 1",
            "no CUDA GPU",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU"),
        ),
    ],
)
def test_parity_names_a_bad_option(args, message, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["parity", *args.split()])
    with pytest.raises(SystemExit) as stopped:
        parity.main()
    assert stopped.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_speedrun_smoke(tmp_path):
    # one test batch: the preset trains in bf16, which a CPU without native bf16 emulates slowly
    preset = "speedrun_bf16"
    args = "--seeds 1 --article-reps 1 --limit-batches 3 --limit-eval-batches 1 --preset speedrun_bf16".split()
    result = run_benchmark("speedrun", *args, "--results-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "article loop: median epoch" in result.stdout and "not met" in result.stdout  # 3 batches reach no 99%
    recorded = only_record(tmp_path)
    figures = recorded["figures"]
    assert recorded["benchmark"] == "speedrun" and figures["article_epoch_s"] > 0
    (row,) = figures["summary"]
    assert row["preset"] == preset and row["median_train_s"] > 0 and row["targets_met"] is False
    assert row["ratio_vs_article_epoch"] == row["median_train_s"] / figures["article_epoch_s"]
    (run,) = recorded["runs"][preset]
    assert run["precision"] == "bf16-mixed"  # the preset's own config reached train(cfg)


def test_speedrun_spreads_the_article_runs():
    order = speedrun.plan(["a", "b"], seeds=3, article_reps=2)
    assert order == [("article", 0), ("a", 0), ("b", 0), ("a", 1), ("article", 1), ("b", 1), ("a", 2), ("b", 2)]


def test_mnist_labs_side_stays_on_the_cpu_unless_a_gpu_is_asked_for():
    # The trainer's accelerator is "auto": on a GPU machine the CPU comparisons (the article's
    # loop, the plain loop) would otherwise race a GPU run of mnist_lab.
    device_overrides = compare_article.device_overrides
    assert device_overrides([]) == ["trainer.accelerator=cpu"]
    assert device_overrides(["trainer.precision=bf16-mixed", "model=mlp"]) == ["trainer.accelerator=cpu"]
    assert device_overrides(["trainer=gpu", "data.on_device=true"]) == []  # parity --device cuda
    assert device_overrides(["trainer.accelerator=gpu"]) == []
    assert device_overrides(["+trainer.accelerator=cpu"]) == []
    assert "trainer=gpu" in parity.MNIST_LAB_ON["cuda"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
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


def test_a_record_replaces_its_machine_classs(tmp_path, monkeypatch):
    zen4 = {"cpu": "AMD EPYC", "cpu_family": 25, "cpu_model_number": 17, "gpu": None}
    xeon = {"cpu": "Intel(R) Xeon(R) Processor", "cpu_family": None, "gpu": None}
    assert common.machine_class(zen4) == "amd-epyc-family-25-model-17"
    assert common.machine_class(xeon) == "intel-xeon-processor"
    assert common.machine_class({**zen4, "gpu": "NVIDIA H100 80GB HBM3"}).endswith("-nvidia-h100-80gb-hbm3")
    monkeypatch.setattr(sys, "argv", ["speedrun", "--seeds", "2", "--results-dir", str(tmp_path)])
    first = common.write_record("speedrun", "benchmarks.speedrun", tmp_path, zen4, {"summary": [1]})
    common.write_record("speedrun", "benchmarks.speedrun", tmp_path, xeon, {"summary": [2]})
    again = common.write_record("speedrun", "benchmarks.speedrun", tmp_path, zen4, {"summary": [3]})
    assert first == again and len(list(tmp_path.iterdir())) == 2
    record = json.loads(again.read_text())
    assert record["figures"] == {"summary": [3]} and record["command"] == "python -m benchmarks.speedrun --seeds 2"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", record["date"]) and record["machine"] == zen4


def test_a_failing_worker_stops_the_benchmark_with_its_stderr(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text("import sys\nprint('no result')\nsys.exit('bad override: trainer.max_epochs=x')\n")
    with pytest.raises(SystemExit, match=r"(?s)article run failed \(exit 1\):.*trainer.max_epochs=x"):
        common.run_worker(script, "--worker", "article", name="article run")
    script.write_text("print('RESULT {\"epoch_seconds\": [1.5]}')\n")
    assert common.run_worker(script, name="article run") == {"epoch_seconds": [1.5]}


def test_a_worker_leaves_nothing_in_tmp(tmp_path, monkeypatch):
    # hundreds of benchmark runs once filled the disk with their MNIST copies and run directories
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
    scratch = common.run_worker(script, "0", name="worker")["scratch"]
    assert scratch.startswith(str(tmp))  # the worker wrote into its own TMPDIR...
    with pytest.raises(SystemExit, match="exit 3"):
        common.run_worker(script, "3", name="worker")
    assert list(tmp.iterdir()) == []  # ...which is gone, also after a failing run


DOCUMENTED = [ROOT_DIR / "README.md", *sorted((ROOT_DIR / "docs").glob("*.md")), ROOT_DIR / "benchmarks/README.md"]


def benchmark_commands() -> list[tuple[str, list[str]]]:
    """(module, arguments) of every `python -m benchmarks.X` in the docs and the records."""
    lines = [ln for path in DOCUMENTED for ln in path.read_text().replace("\\\n", " ").splitlines()]
    lines += [json.loads(p.read_text())["command"] for p in common.RESULTS_DIR.glob("*.json")]
    found = []
    for line in lines:
        for m in re.finditer(r"python -m (benchmarks\.\w+)([^`|\n]*)", line):
            found.append((m[1], shlex.split(m[2], comments=True)))
    return found


def test_every_documented_benchmark_command_parses(monkeypatch):
    commands = benchmark_commands()
    assert {module for module, _ in commands} >= {f"benchmarks.{n}" for n in ("compare_article", "speedrun", "parity")}

    class Parsed(Exception):
        pass

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)
        raise Parsed

    import argparse

    parse_args = argparse.ArgumentParser.parse_args
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    modules = {
        "benchmarks.compare_article": compare_article,
        "benchmarks.speedrun": speedrun,
        "benchmarks.parity": parity,
    }
    for module, args in commands:
        if module not in modules:
            continue  # benchmarks.results: no options but --check, tested in tests/test_results.py
        monkeypatch.setattr(sys, "argv", [module, *args])
        with pytest.raises(Parsed):
            modules[module].main()
