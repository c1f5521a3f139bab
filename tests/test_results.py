"""The results tables of docs/performance.md and README.md are what benchmarks/results/ gives."""

from __future__ import annotations

import json

import pytest

from benchmarks import common, results


def test_committed_tables_are_the_records():
    # regenerated in memory from the committed records: run `python -m benchmarks.results` when this fails
    for page, text in results.generated().items():
        assert page.read_text() == text, f"{page.name}: its tables differ from benchmarks/results/"


def test_one_record_per_benchmark_and_machine_class():
    for stem, record in results.load().items():
        assert stem == f"{record['benchmark']}_{common.machine_class(record['machine'])}"
        assert {"command", "commit", "date", "machine", "figures"} <= set(record)
        # a benchmark's command, or the runs a record was transcribed from
        assert record["command"].startswith("python -m benchmarks.") or "transcribed_from" in record
        assert results.rows(record)  # every record gives rows


def test_a_table_names_the_machine_and_the_command(tmp_path):
    machine = {
        "cpu": "AMD EPYC",
        "cpu_vendor": "AuthenticAMD",
        "cpu_family": 25,
        "cpu_model_number": 17,
        "cpu_cores": 2,
        "torch_cpu_capability": "AVX512",
        "native_bf16": ["avx512_bf16"],
        "gpu": None,
    }
    assert results.machine_name(machine) == "AMD EPYC, family 25 model 17 (Zen 4, AVX512, avx512_bf16), 2 cores"
    assert results.machine_name({"cpu": None, "cpu_cores": 2}) == "2-core CPU, model not recorded"
    row = {"preset": "speedrun", "median_train_s": 5.0, "mean_test_acc": 0.9903, "std_test_acc": 0.0004}
    row |= {"lowest_test_acc": 0.9896, "test_acc": [0.99] * 10, "ratio_vs_article_epoch": 0.2}
    record = {"benchmark": "speedrun", "command": "python -m benchmarks.speedrun", "machine": machine}
    record["figures"] = {"article_epoch_s": 25.0, "summary": [row]}
    (tmp_path / "speedrun_x.json").write_text(json.dumps(record))
    text = results.results_tables(results.load(tmp_path))
    assert text.startswith("### AMD EPYC, family 25 model 17")
    assert "| `experiment=speedrun`: time to 99% / one epoch of the article's loop | 0.200 (5.00 s / 25.00 s)" in text
    assert text.endswith(
        "| AMD EPYC, family 25 model 17 (Zen 4, AVX512, avx512_bf16), 2 cores | `python -m benchmarks.speedrun` |"
    )


def test_render_replaces_only_between_the_markers():
    page = "a\n<!-- results:begin -->\nold\n<!-- results:end -->\nb\n"
    assert results.render(page, "results", "new") == "a\n<!-- results:begin -->\nnew\n<!-- results:end -->\nb\n"
    with pytest.raises(SystemExit, match="results:begin"):
        results.render("no markers", "results", "new")
