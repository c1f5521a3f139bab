"""The tables of docs/performance.md and README.md, generated from the records in benchmarks/results/.

    python -m benchmarks.results            # rewrite the tables between their marker comments
    python -m benchmarks.results --check    # exit 1 when a committed table differs from its records

docs/performance.md gets one table per machine class (`common.machine_class`), each row naming
its machine and the command that measured it; README.md a few headline rows (HEADLINE);
experiments/README.md each preset's rows (PRESETS).
tests/test_results.py fails when the committed tables differ from what the records give.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS_DIR, ROOT, machine_class

PAGES = {
    ROOT / "docs" / "performance.md": "results",
    ROOT / "README.md": "headline",
    ROOT / "experiments" / "README.md": "presets",
}
PRESETS = ("seed_baseline", "speedrun", "speedrun_bf16", "best_accuracy")  # experiments/README.md's rows
# README's rows: (record file stem, the row's `what` starts with this).
HEADLINE = [
    ("compare_article_amd-epyc-family-25-model-17", "`experiment=seed_baseline`"),
    ("speedrun_amd-epyc-family-25-model-17", "`experiment=speedrun_bf16`"),
    ("best_accuracy_amd-epyc-family-26-model-2", "`experiment=best_accuracy`"),
    ("parity-step_amd-epyc-family-25-model-17", "`train(cfg)` against a plain PyTorch loop, per step, cnn 32-true"),
]


def load(results_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Every record, by file stem."""
    return {p.stem: json.loads(p.read_text()) for p in sorted(results_dir.glob("*.json"))}


def machine_name(machine: dict[str, Any]) -> str:
    """ "AMD EPYC, family 25 model 17 (Zen 4, AVX512, avx512_bf16), 2 cores": a machine as its record names it."""
    if not machine.get("cpu"):
        return f"{machine.get('cpu_cores', '?')}-core CPU, model not recorded"
    name = machine["cpu"].replace("(R)", "")
    if machine.get("cpu_family") is not None:
        name += f", family {machine['cpu_family']} model {machine.get('cpu_model_number')}"
    else:
        name += ", family not recorded"
    isa = [amd_core(machine), machine.get("torch_cpu_capability"), *(machine.get("native_bf16") or ["no native bf16"])]
    name += f" ({', '.join(i for i in isa if i)}), {machine.get('cpu_cores')} cores"
    return name + (f", {machine['gpu']}" if machine.get("gpu") else "")


def amd_core(machine: dict[str, Any]) -> str | None:
    """The Zen generation of an AMD family/model (family 25: Zen 3, or Zen 4 from model 0x10; 26: Zen 5)."""
    if machine.get("cpu_vendor") != "AuthenticAMD":
        return None
    family, model = machine.get("cpu_family"), machine.get("cpu_model_number") or 0
    if family == 26:
        return "Zen 5"
    if family == 25:
        return "Zen 4" if 0x10 <= model <= 0x1F or 0x60 <= model <= 0xAF else "Zen 3"
    return None


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def compare_article_rows(r: dict) -> list[tuple[str, str]]:
    summary = r["figures"]["summary"]
    article, epochs = summary[0], r["args"]["epochs"]
    rows = []
    for s in summary[1:]:
        variant = s["name"].removeprefix("mnist_lab").strip()
        per_rep = [a / b for a, b in zip(s["rep_median_epoch_s"], article["rep_median_epoch_s"])]
        what = "`experiment=seed_baseline`" + (f" + `{variant}`" if variant else "") + ": epoch / the article's loop"
        rows.append(
            (
                what,
                f"{s['ratio_vs_article']:.3f}x ({s['median_epoch_s']:.2f} s / {article['median_epoch_s']:.2f} s; "
                f"per repetition {min(per_rep):.2f}-{max(per_rep):.2f}); test acc {pct(s['mean_test_acc'])} "
                f"against {pct(article['mean_test_acc'])} after {epochs} epochs, {len(s['test_acc'])} seeds",
            )
        )
    return rows


def speedrun_rows(r: dict) -> list[tuple[str, str]]:
    f = r["figures"]
    return [
        (
            f"`experiment={s['preset']}`: time to 99% / one epoch of the article's loop",
            f"{s['ratio_vs_article_epoch']:.3f} ({s['median_train_s']:.2f} s / {f['article_epoch_s']:.2f} s); "
            f"test acc {100 * s['mean_test_acc']:.2f} ± {100 * s['std_test_acc']:.2f}%, lowest "
            f"{pct(s['lowest_test_acc'])} over {len(s['test_acc'])} seeds",
        )
        for s in f["summary"]
    ]


def parity_epoch_rows(r: dict) -> list[tuple[str, str]]:
    summary = r["figures"]["summary"]
    rows = []
    for precision, s in summary.items():
        per_rep = s["overhead_pct_per_rep"]
        rows.append(
            (
                f"`train(cfg)` against a plain PyTorch loop, per epoch, {precision}",
                f"{s['overhead_pct']:+.1f}% (per repetition {min(per_rep):+.1f} to {max(per_rep):+.1f}%); "
                f"plain loop {s['plain']['median_epoch_s']:.2f} s, mnist_lab {s['mnist_lab']['median_epoch_s']:.2f} s",
            )
        )
    if {"32-true", "bf16-mixed"} <= set(summary):
        fp32, bf16 = summary["32-true"], summary["bf16-mixed"]
        ratio = {k: bf16[k]["median_epoch_s"] / fp32[k]["median_epoch_s"] for k in ("plain", "mnist_lab")}
        rows.append(
            (
                "bf16-mixed epoch / 32-true epoch",
                f"plain loop {ratio['plain']:.3f}, mnist_lab {ratio['mnist_lab']:.3f}",
            )
        )
    return rows


def parity_step_rows(r: dict) -> list[tuple[str, str]]:
    return [
        (
            f"`train(cfg)` against a plain PyTorch loop, per step, {case}",
            f"{s['mnist_lab_overhead_ms']:+.2f} ms ({s['mnist_lab_overhead_pct']:+.1f}%) of a "
            f"{s['plain_step_ms']:.2f} ms step: bare Lightning against the plain loop "
            f"{s['lightning_overhead_ms']:+.2f} ms, mnist_lab against bare Lightning "
            f"{s['mnist_lab_added_overhead_ms']:+.2f} ms",
        )
        for case, s in r["figures"]["summary"].items()
    ]


def best_accuracy_rows(r: dict) -> list[tuple[str, str]]:
    f = r["figures"]
    accs, ensembles = list(f["test_acc"].values()), list(f["ensemble3_test_acc"].values())
    best = max(ensembles)
    return [
        (
            f"`experiment=best_accuracy` ({f['epochs']} epochs): test acc",
            f"{100 * statistics.mean(accs):.2f} ± {100 * statistics.stdev(accs):.2f}% over {len(accs)} seeds, "
            f"lowest {pct(min(accs))}; as 3-seed ensembles median {pct(statistics.median(ensembles))}, "
            f"{sum(a == best for a in ensembles)} of {len(ensembles)} at {pct(best)}",
        )
    ]


ROWS = {
    "best_accuracy": best_accuracy_rows,
    "compare_article": compare_article_rows,
    "speedrun": speedrun_rows,
    "parity-epoch": parity_epoch_rows,
    "parity-step": parity_step_rows,
}


def rows(record: dict) -> list[tuple[str, str]]:
    """(what, figure) rows of a record; a record named "<benchmark>-<name>" is read as its benchmark's."""
    kind = next(k for k in sorted(ROWS, key=len, reverse=True) if record["benchmark"].startswith(k))
    return ROWS[kind](record)


def table(lines: list[tuple[str, str, str, str]]) -> str:
    out = ["| what | figure | machine | command |", "|---|---|---|---|"]
    out += [f"| {what} | {figure} | {machine} | `{command}` |" for what, figure, machine, command in lines]
    return "\n".join(out)


def results_tables(records: dict[str, dict]) -> str:
    """One table per machine class, in the order of their names."""
    classes: dict[str, list[dict]] = {}
    for record in records.values():
        classes.setdefault(machine_class(record["machine"]), []).append(record)
    parts = []
    for cls in sorted(classes):
        group = sorted(classes[cls], key=lambda r: r["benchmark"])
        name = machine_name(group[0]["machine"])
        lines = [(what, fig, name, r["command"]) for r in group for what, fig in rows(r)]
        parts.append(f"### {name}\n\n{table(lines)}")
    return "\n\n".join(parts)


def headline_table(records: dict[str, dict]) -> str:
    out = ["| what | figure | machine |", "|---|---|---|"]
    for stem, start in HEADLINE:
        record = records[stem]
        what, figure = next(row for row in rows(record) if row[0].startswith(start))
        out.append(f"| {what} | {figure} | {machine_name(record['machine'])} |")
    return "\n".join(out)


def presets_table(records: dict[str, dict]) -> str:
    """Each preset's rows (those whose `what` names `experiment=<preset>` alone), machine by machine.

    Only from records that name their CPU: a preset's figure says which machine gave it.
    """
    out = ["| preset | what | figure | machine |", "|---|---|---|---|"]
    named = [r for r in records.values() if r["machine"].get("cpu")]
    for preset in PRESETS:
        for record in named:
            for what, figure in rows(record):
                if what.startswith((f"`experiment={preset}`:", f"`experiment={preset}` (")):
                    out.append(f"| `{preset}` | {what} | {figure} | {machine_name(record['machine'])} |")
    return "\n".join(out)


def render(text: str, marker: str, body: str) -> str:
    """`text` with what lies between `<!-- marker:begin -->` and `<!-- marker:end -->` replaced by `body`."""
    begin, end = f"<!-- {marker}:begin -->", f"<!-- {marker}:end -->"
    if text.count(begin) != 1 or text.count(end) != 1:
        raise SystemExit(f"expected one {begin} and one {end} line; add them where the generated table goes")
    head, rest = text.split(begin)
    return f"{head}{begin}\n{body}\n{end}{rest.split(end)[1]}"


def generated(results_dir: Path = RESULTS_DIR) -> dict[Path, str]:
    """Each page's text as the records make it."""
    records = load(results_dir)
    bodies = {
        "results": results_tables(records),
        "headline": headline_table(records),
        "presets": presets_table(records),
    }
    return {page: render(page.read_text(), marker, bodies[marker]) for page, marker in PAGES.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs from its records")
    args = p.parse_args()
    stale = []
    for page, text in generated().items():
        if page.read_text() != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(text)
    verb = "differs from its records" if args.check else "rewritten from the records"
    for page in stale:
        print(f"{page}: {verb}")
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
