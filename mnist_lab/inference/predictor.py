"""A trained model behind one call, for predict, evaluate and export: uint8 digits in, probabilities out.

The model is a network already loaded (a checkpoint rebuilt by mnist_lab.checkpoints.load_net,
in the command that asks for it), or a file written by `mnist-lab export`: ONNX (run by
onnxruntime) or TorchScript, read here. Inputs are normalised by mnist_lab.data.pixels, the
training code's own normalisation; nothing here imports Lightning or Hydra.
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_lab.data.pixels import normalize
from mnist_lab.errors import ConfigError, UserError

# Metadata keys that `mnist-lab export` (mnist_lab/tools/export.py) stores in exported files (how inputs are normalised).
META_MEAN, META_STD = "mnist_lab.mean", "mnist_lab.std"


class ModelFileError(UserError):
    """A model file that predict cannot use."""


class Predictor:
    """A trained model behind one call: MNIST-style uint8 digits (N, 28, 28) -> probabilities (N, K).

    Args:
        model: a normalised float batch (B, 1, 28, 28) -> logits (B, K): an eval-mode network,
            or what read_onnx / read_torchscript return.
        mean, std: the normalisation the model was trained with.
        batch_size: digits per forward pass.
        tta_degrees: test-time augmentation: each digit is also read rotated by these angles
            and the softmax outputs are averaged (see `probabilities`).
        path: the file the model was read from, for display.
    """

    def __init__(
        self,
        model: Callable[[torch.Tensor], torch.Tensor],
        mean: float,
        std: float,
        batch_size: int = 1000,
        tta_degrees: Sequence[float] = (),
        path: str | Path | None = None,
    ) -> None:
        self.model, self.mean, self.std = model, float(mean), float(std)
        self.batch_size, self.tta_degrees, self.path = batch_size, tta_angles(tta_degrees), path

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised float batch (B, 1, 28, 28)."""
        with torch.inference_mode():
            return self.model(x)

    def __call__(self, digits: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(digits))[:, None]  # (N, 1, 28, 28) uint8
        return probabilities(self.logits, images, self.mean, self.std, self.batch_size, tta=self.tta_degrees).numpy()


Model = tuple[Callable[[torch.Tensor], torch.Tensor], float, float]  # logits, mean, std


def read_onnx(path: Path) -> Model:
    """An ONNX file of `mnist-lab export`, run by onnxruntime on the CPU, and its normalisation."""
    import onnxruntime as ort

    if not path.is_file():
        raise ModelFileError(f"ckpt_path={path} does not exist. Pass a file from `python -m mnist_lab export`.")
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
        raise ModelFileError(f"{path} is not a usable ONNX model ({str(e).splitlines()[0]}). Export it again.") from e
    name = session.get_inputs()[0].name

    def logits(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return (logits, *_normalisation(path, session.get_modelmeta().custom_metadata_map))


def read_torchscript(path: Path) -> Model:
    """A TorchScript file of `mnist-lab export`, in eval mode on the CPU, and its normalisation."""
    files = {"mnist_lab.json": ""}
    try:
        with warnings.catch_warnings():  # jit.load is deprecated in favour of torch.export, still supported
            warnings.simplefilter("ignore", FutureWarning)
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=files).eval()
    except (RuntimeError, ValueError, OSError) as e:
        reason = str(e).splitlines()[0]
        raise ModelFileError(f"{path} is not a usable TorchScript model ({reason}). Export it again.") from e
    return (net, *_normalisation(path, json.loads(files["mnist_lab.json"] or "{}")))


def _normalisation(path: Path, meta: dict[str, Any]) -> tuple[float, float]:
    if META_MEAN not in meta or META_STD not in meta:
        raise ModelFileError(
            f"{path} carries no normalisation ({META_MEAN}, {META_STD}): it was not written by "
            "`python -m mnist_lab export`, so the inputs it expects are unknown. Export the checkpoint "
            "with mnist_lab, or pass the checkpoint itself."
        )
    return float(meta[META_MEAN]), float(meta[META_STD])


def tta_angles(degrees: Any) -> tuple[float, ...]:
    """The rotations of `tta_degrees=[...]` as floats; a clear error for anything else."""
    values = [degrees] if isinstance(degrees, (int, float, str)) else list(degrees or ())
    try:
        angles = tuple(float(a) for a in values if not isinstance(a, bool))
    except (TypeError, ValueError):
        angles = ()
    if len(angles) != len(values) or not all(math.isfinite(a) and 0 < abs(a) <= 180 for a in angles):
        raise ConfigError(
            f"tta_degrees={values}: give the extra views as rotation angles in degrees, non-zero and within "
            "[-180, 180] (the upright digit is always read), e.g. tta_degrees=[-8,8], or tta_degrees=[] for none."
        )
    return angles


def probabilities(
    logits: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: float,
    std: float,
    batch_size: int,
    device: torch.device | str = "cpu",
    tta: Sequence[float] = (),
) -> torch.Tensor:
    """Softmax probabilities (N, K) on the CPU of uint8 images (N, 1, 28, 28), in batches.

    Args:
        logits: the model: a normalised float batch on `device` -> (B, K) logits.
        images: the digits, MNIST-style uint8.
        mean, std: the normalisation the model was trained with.
        batch_size: images per forward pass (no gradients: memory is the only limit).
        tta: test-time augmentation: angles in degrees; each image is also read rotated by
            each angle (bilinear, as the training augmentation resamples, background fill)
            and the softmax outputs of all views are averaged with equal weight.
    """
    views: list[Callable[[torch.Tensor], torch.Tensor] | None] = [None]
    if tta:  # torchvision imported only here: plain prediction stays light
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional import rotate

        views += [partial(rotate, angle=a, interpolation=InterpolationMode.BILINEAR) for a in tta]
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device)
            probs = [logits(normalize(batch, mean, std, view)).float().softmax(1) for view in views]
            out.append(torch.stack(probs).mean(0).cpu())
    return torch.cat(out) if out else torch.zeros(0, 10)
