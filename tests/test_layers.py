"""mnist_lab's layers: each module imports only its own layer and those below it, and nothing imports itself.

Read from the source (imports inside functions included), so a lazy import cannot hide a
dependency. Importing `a.b.c` runs the package `a.b` first, so a module outside that package
depends on it too. A new module fails here until it is placed in LAYER.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mnist_lab

PACKAGE = Path(mnist_lab.__file__).parent

# Bottom up: a module may import its own layer and those below (docs/architecture.md).
LAYERS = ("base", "learning", "run", "recipe", "commands")
LAYER = {
    # base: errors, atomic files, the global RNGs, weight files, the one normalisation
    "mnist_lab": "base",
    "mnist_lab.errors": "base",
    "mnist_lab.files": "base",
    "mnist_lab.rng": "base",
    "mnist_lab.weights": "base",
    "mnist_lab.data.pixels": "base",
    # learning: networks, the LightningModule, fine-tuning, data, callbacks, DDP, Optuna, inference
    "mnist_lab.models": "learning",
    "mnist_lab.classifier": "learning",
    "mnist_lab.finetune": "learning",
    "mnist_lab.semisupervised": "learning",
    "mnist_lab.data": "learning",
    "mnist_lab.data.augment": "learning",
    "mnist_lab.data.batches": "learning",
    "mnist_lab.data.datamodule": "learning",
    "mnist_lab.data.idx": "learning",
    "mnist_lab.data.mnist_form": "learning",
    "mnist_lab.data.sampling": "learning",
    "mnist_lab.data.sources": "learning",
    "mnist_lab.data.text_digits": "learning",
    "mnist_lab.callbacks": "learning",
    "mnist_lab.callbacks.export_weights": "learning",
    "mnist_lab.callbacks.finetune": "learning",
    "mnist_lab.callbacks.layer_summary": "learning",
    "mnist_lab.callbacks.resumable": "learning",
    "mnist_lab.callbacks.test_report": "learning",
    "mnist_lab.callbacks.timer": "learning",
    "mnist_lab.distributed": "learning",
    "mnist_lab.search": "learning",
    "mnist_lab.inference": "learning",
    "mnist_lab.inference.imageprep": "learning",
    "mnist_lab.inference.predictor": "learning",
    # run: configs, run and sweep directories, a run's checkpoints, bundled weights, records, the terminal
    "mnist_lab.config": "run",
    "mnist_lab.config.crosschecks": "run",
    "mnist_lab.config.migrate": "run",
    "mnist_lab.config.objects": "run",
    "mnist_lab.config.origins": "run",
    "mnist_lab.config.rules": "run",
    "mnist_lab.config.types": "run",
    "mnist_lab.config.validate": "run",
    "mnist_lab.rundir": "run",
    "mnist_lab.sweepdir": "run",
    "mnist_lab.checkpoints": "run",
    "mnist_lab.pretrained": "run",
    "mnist_lab.records": "run",
    "mnist_lab.console": "run",
    # recipe
    "mnist_lab.train": "recipe",
    # commands
    "mnist_lab.__main__": "commands",
    "mnist_lab.tools": "commands",
    "mnist_lab.tools.evaluate": "commands",
    "mnist_lab.tools.export": "commands",
    "mnist_lab.tools.finetune_table": "commands",
    "mnist_lab.tools.predict": "commands",
    "mnist_lab.tools.pretrain": "commands",
    "mnist_lab.tools.report": "commands",
    "mnist_lab.tools.serve": "commands",
    "mnist_lab.tools.strings_benchmark": "commands",
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The mnist_lab modules that importing `name` runs: every import in its source, with their packages."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importing module's package
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known}
    deps = set()
    for dep in (d for d in found if d == "mnist_lab" or d.startswith("mnist_lab.")):
        parts = dep.split(".")
        # Importing a.b.c runs a.b's __init__ first, unless the importer lies inside a.b (it ran already).
        deps |= {p for i in range(1, len(parts) + 1) if not (name + ".").startswith((p := ".".join(parts[:i])) + ".")}
    return {d for d in deps if d in known and d != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def test_every_module_has_a_layer():
    mods = set(modules())
    assert not mods - set(LAYER), f"place these modules in LAYER (tests/test_layers.py): {sorted(mods - set(LAYER))}"
    assert not set(LAYER) - mods, f"LAYER names modules that do not exist: {sorted(set(LAYER) - mods)}"


def test_no_module_imports_a_higher_layer():
    up = [
        f"{m} ({LAYER[m]}) imports {d} ({LAYER[d]})"
        for m, deps in sorted(graph().items())
        for d in sorted(deps)
        if m in LAYER and d in LAYER and LAYERS.index(LAYER[d]) > LAYERS.index(LAYER[m])
    ]
    assert not up, "imports that go up a layer:\n" + "\n".join(up)


def test_no_import_cycle():
    deps = graph()
    cycles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the current path, "done" after

    def visit(m: str, path: list[str]) -> None:
        state[m] = "open"
        for d in sorted(deps[m]):
            if state.get(d) == "open":
                cycles.append([*path[path.index(d) :], d])
            elif d not in state:
                visit(d, [*path, d])
        state[m] = "done"

    for m in sorted(deps):
        if m not in state:
            visit(m, [m])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_checks_see_imports_inside_functions(tmp_path):
    """A lazy import counts: what the layer and cycle checks read, on a source of its own."""
    source = tmp_path / "models.py"
    source.write_text("def f():\n    from mnist_lab.train import train\n    import mnist_lab.config.validate\n")
    deps = imports("mnist_lab.models", source, set(LAYER))
    # mnist_lab.config: importing config.validate runs the package's __init__ first.
    assert deps == {"mnist_lab.train", "mnist_lab.config", "mnist_lab.config.validate"}
