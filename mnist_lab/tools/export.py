"""`python -m mnist_lab export ckpt_path=PATH format=onnx|torchscript`: a self-contained model file.

The exported model maps (N, 1, 28, 28) float32 images, normalised as in training
((pixel / 255 - mean) / std, stored in the file's metadata), to (N, num_classes) logits; N is
free. Before reporting success the export runs real test images through the file (onnxruntime
for ONNX, torch.jit.load for TorchScript) and checks that its logits match PyTorch's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch import nn

from mnist_lab import CONF_DIR
from mnist_lab.errors import ConfigError, UserError, user_errors
from mnist_lab.inference.predictor import META_MEAN, META_STD

SUFFIXES = {"onnx": ".onnx", "torchscript": ".pt"}


class ExportError(UserError):
    """An exported model whose outputs do not match PyTorch's."""


def export_onnx(net: nn.Module, path: Path, example: torch.Tensor, meta: dict[str, str], opset: int) -> None:
    """Write `net` as ONNX with a free batch dimension and `meta` in its metadata_props."""
    import onnx

    # The TorchScript-based exporter (dynamo=False): needs no onnxscript and exports these
    # plain conv/linear networks in well under a second; torch <= 2.14.1 still ships it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        torch.onnx.export(
            net,
            (example,),
            str(path),
            dynamo=False,
            input_names=["images"],
            output_names=["logits"],
            dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=opset,
        )
    model = onnx.load(str(path))
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def export_torchscript(net: nn.Module, path: Path, example: torch.Tensor, meta: dict[str, str]) -> None:
    """Write `net` traced as TorchScript, `meta` stored as the extra file mnist_lab.json."""
    with warnings.catch_warnings():  # jit.trace is deprecated in favour of torch.export, still supported
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning))
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, str(path), _extra_files={"mnist_lab.json": json.dumps(meta)})


def run_exported(path: Path, x: torch.Tensor) -> np.ndarray:
    """Logits of the exported file at `path` for the normalised batch `x`, run outside PyTorch's eager mode."""
    if path.suffix == ".onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": x.numpy()})[0]
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # jit.load: deprecated, still supported
        return torch.jit.load(str(path), map_location="cpu")(x).numpy()


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export the checkpoint of cfg.ckpt_path to cfg.format, verify it, and return the check's numbers."""
    from mnist_lab.checkpoints import load_net
    from mnist_lab.data.pixels import normalize
    from mnist_lab.files import write_json
    from mnist_lab.weights import find_checkpoint

    if cfg.format not in SUFFIXES:
        raise ConfigError(f"format={cfg.format}: choose onnx or torchscript.")
    ckpt = find_checkpoint(cfg.ckpt_path)
    net, run_cfg = load_net(ckpt)
    output_dir = Path(cfg.paths.output_dir)
    path = Path(cfg.output) if cfg.output else output_dir / f"model{SUFFIXES[cfg.format]}"
    path.parent.mkdir(parents=True, exist_ok=True)

    # Real test images of the run's dataset, normalised as in training: the check's inputs.
    datamodule = instantiate(run_cfg.data)
    datamodule.setup("test")
    x = normalize(datamodule.splits.test_x[: cfg.check_images], datamodule.mean, datamodule.std)
    with torch.inference_mode():
        expected = net(x).numpy()
    meta = {
        META_MEAN: str(datamodule.mean),
        META_STD: str(datamodule.std),
        "mnist_lab.input": "(N, 1, 28, 28) float32, (pixel / 255 - mean) / std, white digit on black, MNIST-centred",
        "mnist_lab.output": f"(N, {expected.shape[1]}) logits",
        "mnist_lab.checkpoint": str(ckpt),
    }
    if cfg.format == "onnx":
        export_onnx(net, path, x[:2], meta, cfg.opset)
    else:
        export_torchscript(net, path, x[:2], meta)

    # The check: the file's logits on the whole batch (a batch size other than the traced one).
    got = run_exported(path, x)
    diff = np.abs(got - expected)
    bound = cfg.atol + cfg.rtol * np.abs(expected)
    same_class = float((got.argmax(1) == expected.argmax(1)).mean())
    report = {
        "file": str(path),
        "format": cfg.format,
        "checkpoint": str(ckpt),
        "check_images": len(x),
        "max_abs_diff": float(diff.max()),
        "tolerance": f"|exported - pytorch| <= {cfg.atol} + {cfg.rtol} * |pytorch| for every logit",
        "same_class": same_class,
        "passed": bool((diff <= bound).all() and same_class == 1.0),
        "input": meta["mnist_lab.input"],
        "mean": datamodule.mean,
        "std": datamodule.std,
    }
    write_json(output_dir / "export.json", report)
    if not report["passed"]:
        failed = path.with_name(path.name + ".mismatch")
        path.replace(failed)
        raise ExportError(
            f"The {cfg.format} export of {ckpt} does not reproduce PyTorch: on {len(x)} test images the largest "
            f"logit difference is {diff.max():.3g} (allowed {cfg.atol} + {cfg.rtol} x |logit|) and "
            f"{same_class:.2%} of the predicted classes agree. The file is kept as {failed} for inspection; "
            "try the other format or another opset."
        )
    print(
        f"Exported {ckpt} to {path} ({path.stat().st_size / 1e6:.2f} MB). Checked on {len(x)} test images: "
        f"max |logit difference| {diff.max():.2e} (tolerance {cfg.atol} + {cfg.rtol} x |logit|), same class on all. "
        f"Input: {meta['mnist_lab.input']} with mean {datamodule.mean}, std {datamodule.std}."
    )
    return report


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    with user_errors():
        export(cfg)


if __name__ == "__main__":
    main()
