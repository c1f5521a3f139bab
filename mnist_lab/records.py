"""A run's records beside its metrics: the environment it ran in, and TensorBoard's HParams tab."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

from omegaconf import DictConfig, ListConfig, OmegaConf
from torch.utils.tensorboard import FileWriter
from torch.utils.tensorboard.summary import hparams

import mnist_lab
from mnist_lab.sweepdir import swept_keys

# The final metrics a run reports; the HParams tab shows these beside its hyper-parameters.
HPARAM_METRICS = ("test/acc", "test/loss", "val/acc_best", "train_seconds")


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}; lists become strings (TensorBoard's HParams takes scalars)."""
    out: dict[str, Any] = {}
    items = (cfg if isinstance(cfg, dict) else cast(dict, OmegaConf.to_container(cfg, resolve=True))).items()
    for key, value in items:
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}/"))
        elif value is None or isinstance(value, (bool, int, float, str)):
            out[name] = "null" if value is None else value
        else:
            out[name] = str(value)
    return out


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def cpu_identity(cpuinfo: str) -> dict[str, Any]:
    """Model name, vendor, family and model number, and flags of the first CPU in /proc/cpuinfo's text.

    The family and model number tell CPU generations apart where a virtual machine's model
    name does not: guests all named "AMD EPYC" multiply bf16 at rates far apart
    (docs/performance.md), and family 26 is Zen 5 where 25 is Zen 3 and 4.
    """
    fields: dict[str, str | None] = {
        "model name": None,
        "vendor_id": None,
        "cpu family": None,
        "model": None,
        "flags": None,
    }
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if not key.strip() and fields["model name"] is not None:
            break  # the blank line after the first processor's block
        if key.strip() in fields and fields[key.strip()] is None:
            fields[key.strip()] = value.strip()
    family, number = fields["cpu family"], fields["model"]
    return {
        "cpu": fields["model name"],
        "cpu_vendor": fields["vendor_id"],
        "cpu_family": int(family) if family and family.isdigit() else None,
        "cpu_model_number": int(number) if number and number.isdigit() else None,
        "flags": set((fields["flags"] or "").split()),
    }


def machine_record() -> dict[str, Any]:
    """The machine a figure came from: CPU model, family and cores, the ISA torch uses, native bf16, the GPU."""
    import os

    import torch

    try:
        cpu = cpu_identity(Path("/proc/cpuinfo").read_text())
    except OSError:  # not Linux: the model from platform, flags unknown
        cpu = cpu_identity("")
    flags = cpu.pop("flags")
    return {
        **cpu,
        "cpu": cpu["cpu"] or platform.processor() or platform.machine(),
        "cpu_cores": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        # Native bf16 arithmetic: AVX512-BF16 or AMX (otherwise bf16 is emulated, usually slower).
        "native_bf16": sorted(flags & {"avx512_bf16", "amx_bf16"}),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def slow_bf16(trainer: Any) -> str | None:
    """A warning when a trainer runs bf16 on a CPU where it is measured slower than fp32 (else None).

    That is a CPU without native bf16, where oneDNN converts around fp32 arithmetic, and an
    Intel CPU with AVX512_BF16 but no AMX (measured with AMX capped off on an Intel Xeon; on
    those cores a bf16 dot product seems to do no more multiplies per cycle than the two fp32
    FMA ports, leaving the conversions as a cost). AMD's AVX512_BF16 and AMX are faster than
    fp32 (docs/performance.md, "fp32 by default").
    """
    from pytorch_lightning.accelerators import CPUAccelerator

    if not str(trainer.precision).startswith("bf16") or not isinstance(trainer.accelerator, CPUAccelerator):
        return None
    machine = machine_record()
    native = machine["native_bf16"]
    if "amx_bf16" in native or (native and machine["cpu_vendor"] != "GenuineIntel"):
        return None
    why = (
        "an Intel CPU with AVX512_BF16 but no AMX: its bf16 kernels are slower than its fp32 ones"
        if native
        else "a CPU without native bf16 (no AVX512_BF16 or AMX flag): the bf16 arithmetic is emulated"
    )
    return (
        f"trainer.precision={trainer.precision} on {why} (docs/performance.md; `python -m benchmarks.compare_article "
        "--variant trainer.precision=bf16-mixed` measures it here); "
        "trainer.precision=32-true is the faster choice here."
    )


def environment_record() -> dict[str, Any]:
    """What a run needs to be reproduced: package, git commit, library versions."""
    import pytorch_lightning
    import torch
    import torchvision

    record = {
        "mnist_lab": mnist_lab.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        # The other libraries whose behaviour a run depends on (config composition, metrics, RNG).
        **{name: _version(name) for name in ("hydra-core", "omegaconf", "torchmetrics", "numpy")},
        "platform": platform.platform(),
        **machine_record(),
    }
    try:
        git = ["git", "-C", str(mnist_lab.ROOT_DIR)]
        record["git_commit"] = subprocess.run(
            [*git, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        record["git_dirty"] = bool(
            subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout.strip()
        )
    except (OSError, subprocess.SubprocessError):
        record["git_commit"] = None
    return record


# What the HParams tab shows of a config: the option chosen in each group (model=cnn), these
# groups' values, the seed, and every key the run's command line overrode.
HPARAM_GROUPS = ("model", "optimizer", "scheduler", "data", "finetune")
# Choices not shown unless overridden: Hydra's own groups, where files go, how metrics are logged,
# and which callbacks run (TensorBoard shows the first 5 columns, "callbacks" would sort early).
_SKIP_CHOICES = ("hydra", "paths", "logger", "callbacks")
# Keys that are no hyper-parameters: what to instantiate, what the data files are (the `data`
# choice names them), and anything under these groups.
_SKIP_KEYS = ("_target_", "_partial_")
_SKIP_PREFIXES = ("data/source/", "callbacks/", "paths/", "hydra/")


def hydra_record(output_dir: Path) -> DictConfig | None:
    """Hydra's record of how the run in `output_dir` was composed (its first start's, when resumed), or None."""
    path = output_dir / ".hydra" / "hydra.yaml"  # resume= writes its own record to .hydra/resume-*/
    return cast(DictConfig, OmegaConf.load(path).hydra) if path.is_file() else None


def overridden_keys(record: DictConfig | None) -> list[str]:
    """The keys of the run's command-line overrides (hydra.overrides.task), as `group/key`."""
    overrides = record.overrides.task if record is not None else []
    return [str(o).partition("=")[0].lstrip("+~").replace(".", "/") for o in overrides]


def _value(value: Any) -> Any:
    """A config value as the HParams tab shows it: a number or a string ("true", "null", "[0.9, 1.1]")."""
    if isinstance(value, bool) or value is None:  # not 1.0/0.0 (torch's hparams() takes bools for numbers)
        return "null" if value is None else str(value).lower()
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    return value if isinstance(value, int | float | str) else str(value)


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("/", "~"))  # resolved paths differ per machine


def run_hparams(cfg: DictConfig, record: DictConfig | None = None, swept: Sequence[str] = ()) -> dict[str, Any]:
    """The HParams of a run, in order: swept keys, other overrides, group choices, group values, seed.

    Args:
        cfg: the run's composed config.
        record: Hydra's record of the run (hydra_record): its choices and command-line overrides.
        swept: the keys the run's sweep varies (swept_keys), listed first.
    """
    choices = {str(k): v for k, v in (record.runtime.choices if record is not None else {}).items()}
    params: dict[str, Any] = {}
    for key in dict.fromkeys([*swept, *overridden_keys(record)]):
        value = choices[key] if key in choices else OmegaConf.select(cfg, key.replace("/", "."), default=None)
        if not key.startswith(_SKIP_PREFIXES) and not _is_path(value):
            params[key] = _value(value)
    for group, choice in choices.items():
        if choice is not None and group.split("/")[0] not in _SKIP_CHOICES:  # None: experiment=null
            params.setdefault(group, str(choice))
    for group in HPARAM_GROUPS:
        for key, value in flatten(cfg[group], f"{group}/").items() if group in cfg else ():
            if key.rsplit("/", 1)[-1] in _SKIP_KEYS or key.startswith(_SKIP_PREFIXES) or _is_path(value):
                continue
            params.setdefault(key, _value(value))
    params.setdefault("seed", cfg.get("seed"))
    return params


def log_hparams(logger: Any, cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """Fill TensorBoard's HParams tab of a TensorBoardLogger: the run's hyper-parameters (run_hparams) against its final metrics.

    TensorBoard orders the columns by name, except that hyper-parameters marked `differs` come
    first; it shows the first 5 by default, and takes the columns from one run's list
    (whichever it reads first). The keys a sweep varies (or a single run overrode) are marked, so they come
    first. Lightning's own log_hyperparams would log the metrics again as scalars at step 0; the
    scalars test/acc etc. already exist, so only the summary that links them is written.
    """
    output_dir = Path(cfg.paths.output_dir)
    record = hydra_record(output_dir)
    swept = swept_keys(output_dir)
    params = run_hparams(cfg, record, swept)
    # val/acc_best and test/* are scalars already (logged by the loops); train time is not,
    # so it is logged here under a tag of its own and the HParams tab links that tag.
    tags = {k: "time/train_seconds" if k == "train_seconds" else k for k in HPARAM_METRICS}
    final = {tags[k]: float(metrics[k]) for k in HPARAM_METRICS if metrics.get(k) is not None}
    writer = logger.experiment  # a SummaryWriter
    writer.add_scalar(tags["train_seconds"], metrics["train_seconds"], metrics["global_steps"])
    writer.flush()
    experiment, start, end = hparams(params, final)
    _mark_differs(experiment, set(swept) or set(overridden_keys(record)))
    # SummaryWriter writes scalars, not summaries: the three go to an event file of their own in
    # the same directory, which TensorBoard reads as part of the same run.
    summaries = FileWriter(writer.get_logdir(), filename_suffix=".hparams")
    for summary in (experiment, start, end):
        summaries.add_summary(summary)
    summaries.close()


def _mark_differs(experiment: Any, names: set[str]) -> None:
    """Mark these hyper-parameters of torch's Experiment summary as `differs` (TensorBoard lists those first)."""
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    plugin_data = experiment.value[0].metadata.plugin_data
    data = HParamsPluginData.FromString(plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.differs = info.name in names
    plugin_data.content = data.SerializeToString()
