"""The documentation against the code: README.md and docs/*.md quote nothing that has gone stale.

Every `mnist-lab` / `python -m mnist_lab` command in a fenced bash block is composed as the
command line would compose it (a sweep with the first value of each swept key, a tool with its
own config or argument parser), every `mnist_lab` name mentioned is imported, every repository
path in a code span and every relative link exists, and the worked examples of
docs/configuration.md (blocks with a `title="path"`) are written into a copy of conf/ and
trained for a few steps. The README's quickstart and the first block of docs/using-a-model.md
run for real, in order, on a few steps (slow).

Placeholders: `<...>` in a command stands for a value the reader supplies; composing uses the
stand-in `placeholder`, running uses a folder of images or what an earlier command wrote there.
"""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

from mnist_lab.__main__ import TOOLS
from tests.conftest import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# Tools with a primary config in conf/ (composed); the others parse their own arguments.
HYDRA_TOOLS = {"evaluate", "predict", "export", "serve", "strings_benchmark"}
PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")
# A few steps of anything: enough to pass through every stage of a run.
RUN_FAST = [
    "trainer.max_epochs=1",
    "++trainer.limit_train_batches=4",
    "++trainer.limit_val_batches=1",
    "++trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=2",
    "trainer.accelerator=cpu",
]


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    lang: str
    title: str | None
    text: str

    def __str__(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def blocks() -> list[Block]:
    """Every fenced code block of the documentation."""
    fence = re.compile(r'^```(\w*)(?:\s+title="([^"]+)")?\n(.*?)^```$', re.S | re.M)
    found = []
    for path in DOCS:
        text = path.read_text()
        for m in fence.finditer(text):
            found.append(Block(path, text.count("\n", 0, m.start()) + 1, m[1], m[2], m[3]))
    return found


def commands() -> list[tuple[str, str]]:
    """(where, command) for every mnist_lab command line of a bash block."""
    found = []
    for block in blocks():
        if block.lang != "bash":
            continue
        for line in block.text.replace("\\\n", " ").splitlines():
            for part in line.split("&&"):
                part = part.strip()
                if re.match(r"(mnist-lab|python -m mnist_lab)(\s|$)", part):
                    found.append((str(block), part))
    return found


def arguments(command: str) -> tuple[str | None, list[str]]:
    """A command's tool (None: training) and its arguments, comments and placeholders resolved."""
    words = shlex.split(PLACEHOLDER.sub("placeholder", command), comments=True)
    words = words[1:] if words[0] == "mnist-lab" else words[3:]
    if words and words[0] in TOOLS:
        return words[0], words[1:]
    return None, words


def worked_example_conf(tmp_path: Path) -> Path:
    """A copy of conf/ with the documentation's titled YAML files in it; titled modules beside it."""
    conf = tmp_path / "conf"
    shutil.copytree(CONF_DIR, conf)
    for block in blocks():
        if block.title:
            target = tmp_path / block.title
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(block.text)
    return conf


def one_job(args: list[str]) -> list[str]:
    """A sweep's overrides as its first job's (an Optuna interval: its lower bound)."""
    out = []
    for override in OverridesParser.create().parse_overrides(args):
        if not override.is_sweep_override():
            out.append(override.input_line)
        elif override.is_interval_sweep():
            out.append(f"{override.get_key_element()}={override.value().start}")
        else:
            out.append(f"{override.get_key_element()}={next(override.sweep_string_iterator())}")
    return out


def compose_command(conf: Path, command: str):
    """The config a documented command line composes (with Hydra's own part, so its keys are checked)."""
    tool, args = arguments(command)
    args = [a for a in args if a not in ("-m", "--multirun")]
    if "--cfg" in args:
        del args[args.index("--cfg") : args.index("--cfg") + 2]
    args = [a for a in args if not a.startswith("resume=")]  # rewritten before Hydra (rundir.resume_argv)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(tool or "config", overrides=one_job(args), return_hydra_config=True)


class Parsed(Exception):
    """Raised once a tool's arguments parsed: the test stops it before it does any work."""


def parse_tool_arguments(monkeypatch, tool: str, args: list[str]) -> None:
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        parse_args(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    with pytest.raises(Parsed):
        importlib.import_module(f"mnist_lab.tools.{tool}").main(args)


def test_the_docs_quote_commands():
    # The extraction itself can rot: a change of fence style would make every test below vacuous.
    assert len(commands()) >= 40
    assert any(b.title == "my_models.py" for b in blocks())


# Hydra 1.3 warns about the launcher plugins' own schema matching, not about this project.
@pytest.mark.filterwarnings("ignore:(?s).*is validated against ConfigStore schema")
def test_every_command_composes(tmp_path, monkeypatch):
    conf = worked_example_conf(tmp_path)
    failures = []
    for where, command in commands():
        tool, args = arguments(command)
        if args[:1] == ["-sc"]:  # Hydra's shell completion: no config to compose
            continue
        try:
            if tool is None or tool in HYDRA_TOOLS:
                compose_command(conf, command)
            else:
                parse_tool_arguments(monkeypatch, tool, args)
                monkeypatch.undo()
        except (Exception, SystemExit) as e:
            failures.append(f"{where}: {command}\n    {type(e).__name__}: {e}")
    assert not failures, "\n".join(failures)


def mentioned_names() -> set[str]:
    """Every `mnist_lab.x.y` name and `from mnist_lab.x import y` of the documentation."""
    names = set()
    for path in DOCS:
        text = path.read_text()
        for m in re.finditer(r"from (mnist_lab[\w.]*) import ([\w, ]+?)(?: as \w+)?(?=[;\n`)]|$)", text):
            names.update(f"{m[1]}.{name.strip()}" for name in m[2].split(","))
        for m in re.finditer(r"\bmnist_lab(?:\.\w+)+", text):
            name = m[0]
            if not re.search(r"\.(json|yaml|py|pt|onnx|ckpt|log|html)$", name):
                names.add(name)
    return names


@pytest.mark.parametrize("name", sorted(mentioned_names()))
def test_mentioned_name_imports(name):
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)  # AttributeError: the docs name something that is gone
        return
    raise AssertionError(f"{name} cannot be imported")


# Code spans that name a file of the repository: each must exist (or be a worked example).
REPO_PATH = re.compile(r"`((?:mnist_lab|conf|experiments|benchmarks|tests|hydra_plugins|pretrained|docs)/[\w./-]*)`")


def test_paths_and_links_exist():
    titled = {b.title for b in blocks() if b.title}
    missing = []
    for path in DOCS:
        text = path.read_text()
        for m in REPO_PATH.finditer(text):
            if m[1] not in titled and not (ROOT / m[1]).exists():
                missing.append(f"{path.name}: `{m[1]}`")
        for m in re.finditer(r"\]\(([^)\s]+)\)", text):
            target = m[1].split("#")[0]
            if target and not re.match(r"\w+://", target) and not (path.parent / target).exists():
                missing.append(f"{path.name}: link {m[1]}")
    assert not missing, "\n".join(missing)


def test_python_blocks_run(tmp_path):
    # A titled block is a module of a worked example: importing it is running it.
    for block in blocks():
        if block.lang == "python":
            script = tmp_path / (block.title or "snippet.py")
            script.write_text(block.text)
            subprocess.run([sys.executable, str(script)], check=True, cwd=tmp_path, timeout=120)


@pytest.fixture
def example_conf(tmp_path, monkeypatch):
    """conf/ with the worked examples, and their modules importable as from the current directory."""
    conf = worked_example_conf(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield conf
    sys.modules.pop("my_models", None)


def worked_example_commands() -> list[str]:
    """The commands of docs/configuration.md that choose a file the page adds."""
    page = ROOT / "docs" / "configuration.md"
    added = {Path(b.title).with_suffix("").as_posix() for b in blocks() if b.title and b.title.startswith("conf/")}
    chosen = []
    for where, command in commands():
        if where.startswith("docs/configuration.md"):
            _, args = arguments(command)
            if any(f"conf/{a.split('=')[0]}/{a.split('=', 1)[1]}" in added for a in args if "=" in a):
                chosen.append(command)
    assert len(chosen) == 3, (page, chosen)
    return chosen


@pytest.mark.parametrize("command", worked_example_commands())
def test_worked_example_trains(example_conf, tmp_path, command):
    from mnist_lab.train import train

    _, args = arguments(command)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(example_conf), version_base="1.3"):
        cfg = compose("config", overrides=[*args, *RUN_FAST, f"paths.output_dir={tmp_path / 'run'}"])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0


def block_commands(page: str, heading: str) -> list[str]:
    """The commands of the first bash block under `heading` (a `#` line) of a page."""
    path = ROOT / page
    first = next(b for b in blocks() if b.path == path and b.lang == "bash" and heading_of(b) == heading)
    return [command for where, command in commands() if where == str(first)]


def heading_of(block: Block) -> str:
    lines = block.path.read_text().splitlines()[: block.line]
    return next(line for line in reversed(lines) if line.startswith("#"))


def run_as_typed(commands: list[str], cwd: Path) -> list[str | None]:
    """Run documented commands in order in cwd on a few steps; the tools each ran (None: training).

    `<image files or a folder>` and `my_digits/` are a folder of two PNGs; any other `<...>` is
    what the commands before wrote there (the placeholder read as a glob, one match). Everything
    is written under cwd (`paths.log_dir`); serve, a server that runs until stopped, is skipped
    (tests/test_serve.py runs it).
    """
    from PIL import Image

    images = cwd / "my_digits"
    images.mkdir(exist_ok=True)
    Image.new("L", (28, 28)).save(images / "blank.png")  # blank: predict reports it and exits 2
    Image.frombytes("L", (8, 8), bytes([0, 0, 255, 255, 255, 255, 0, 0] * 8)).save(images / "one.png")
    ran = []
    for command in commands:
        command = command.replace("<image files or a folder>", "my_digits")
        tool, args = arguments(command)
        if tool == "serve":
            continue
        typed = shlex.split(command, comments=True)  # placeholders as written: `<date>/<time>`
        for n, word in enumerate(typed[len(typed) - len(args) :]):
            if PLACEHOLDER.search(word):
                key, _, value = word.rpartition("=")
                (match,) = cwd.glob(PLACEHOLDER.sub("*", value))
                args[n] = f"{key}={match}" if key else str(match)
        extra = [] if tool in ("report", "finetune_table") else [f"paths.log_dir={cwd}"]
        extra += RUN_FAST if tool is None else []
        argv = [sys.executable, "-m", "mnist_lab", *([tool] if tool else []), *args, *extra]
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=300)
        assert done.returncode in ((0, 2) if tool == "predict" else (0,)), f"{command}\n{done.stderr[-3000:]}"
        ran.append(tool)
    return ran


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path):
    ran = run_as_typed(block_commands("README.md", "## Quickstart"), tmp_path)
    assert ran == [None, None, None, "report", "predict"]
    assert (tmp_path / "multirun" / "quickstart" / "report.md").is_file()


@pytest.mark.slow
def test_using_a_model_runs(tmp_path):
    ran = run_as_typed(block_commands("docs/using-a-model.md", "# Using a model"), tmp_path)
    assert ran == [None, "evaluate", "predict", "export", "predict"]
    assert len(list(tmp_path.glob("runs/predict/*/*/predictions.json"))) == 1


def test_site_builds_strict(tmp_path):
    pytest.importorskip("mkdocs", reason="the docs extra (pip install -e '.[dev]') installs mkdocs-material")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pages = {p.parent.name for p in (tmp_path / "site").glob("*/index.html")}
    assert pages == {p.stem for p in (ROOT / "docs").glob("*.md")} - {"index"}
