"""A trained model behind one call, for predict, evaluate and export: uint8 digits in, probabilities out.

The model is a checkpoint (rebuilt with mnist_lab.checkpoints) or a file written by
`mnist-lab export` (ONNX, run by onnxruntime; TorchScript). Inputs are normalised by
mnist_lab.data.pixels, the training code's own normalisation; nothing here imports Lightning.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mnist_lab.data.pixels import normalize
from mnist_lab.errors import UserError
from mnist_lab.pretrained import card_path

# Metadata keys that `mnist_lab.export` stores in exported files (how inputs are normalised).
META_MEAN, META_STD = "mnist_lab.mean", "mnist_lab.std"


class ModelFileError(UserError):
    """A model file that predict cannot use."""


class Predictor:
    """A trained model behind one call: MNIST-style uint8 digits (N, 28, 28) -> probabilities (N, K).

    Args:
        path: a checkpoint (.ckpt, or a run directory: its best one), or a file written by
            `python -m mnist_lab export`: ONNX (.onnx, run by onnxruntime) or TorchScript (.pt).
        batch_size: digits per forward pass.
    """

    def __init__(self, path: str | Path, batch_size: int = 1000) -> None:
        self.path, self.batch_size = Path(path), batch_size
        self.session: Any = None  # an onnxruntime.InferenceSession
        self.net: Any = None  # a torch module (eager or TorchScript)
        if self.path.suffix == ".onnx":
            self._load_onnx()
        elif self.path.suffix in (".pt", ".ts") and not card_path(self.path).is_file():  # no card: TorchScript
            self._load_torchscript()
        else:
            from mnist_lab.checkpoints import load_net  # imported here: the ONNX path needs no Hydra

            self.net, cfg = load_net(self.path)
            self.mean, self.std = float(cfg.data.mean), float(cfg.data.std)

    def _load_onnx(self) -> None:
        import onnxruntime as ort

        if not self.path.is_file():
            raise ModelFileError(
                f"ckpt_path={self.path} does not exist. Pass a file from `python -m mnist_lab export`."
            )
        try:
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ModelFileError(
                f"{self.path} is not a usable ONNX model ({str(e).splitlines()[0]}). Export it again."
            ) from e
        self._read_meta(self.session.get_modelmeta().custom_metadata_map)

    def _load_torchscript(self) -> None:
        files = {"mnist_lab.json": ""}
        try:
            with warnings.catch_warnings():  # jit.load is deprecated in favour of torch.export, still supported
                warnings.simplefilter("ignore", FutureWarning)
                self.net = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files).eval()
        except (RuntimeError, ValueError, OSError) as e:
            reason = str(e).splitlines()[0]
            raise ModelFileError(f"{self.path} is not a usable TorchScript model ({reason}). Export it again.") from e
        self._read_meta(json.loads(files["mnist_lab.json"] or "{}"))

    def _read_meta(self, meta: dict[str, Any]) -> None:
        if META_MEAN not in meta or META_STD not in meta:
            raise ModelFileError(
                f"{self.path} carries no normalisation ({META_MEAN}, {META_STD}): it was not written by "
                "`python -m mnist_lab export`, so the inputs it expects are unknown. Export the checkpoint "
                "with mnist_lab, or pass the checkpoint itself."
            )
        self.mean, self.std = float(meta[META_MEAN]), float(meta[META_STD])

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of a normalised float batch (B, 1, 28, 28)."""
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {self.session.get_inputs()[0].name: x.numpy()})[0])
        with torch.inference_mode():
            return self.net(x)

    def __call__(self, digits: np.ndarray) -> np.ndarray:
        images = torch.from_numpy(np.ascontiguousarray(digits))[:, None]  # (N, 1, 28, 28) uint8
        return probabilities(self.logits, images, self.mean, self.std, self.batch_size).numpy()


def probabilities(
    logits: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    mean: float,
    std: float,
    batch_size: int,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Softmax probabilities (N, K) on the CPU of uint8 images (N, 1, 28, 28), in batches.

    Args:
        logits: the model: a normalised float batch on `device` -> (B, K) logits.
        images: the digits, MNIST-style uint8.
        mean, std: the normalisation the model was trained with.
        batch_size: images per forward pass (no gradients: memory is the only limit).
    """
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = normalize(images[start : start + batch_size].to(device), mean, std)
            out.append(logits(x).float().softmax(1).cpu())
    return torch.cat(out) if out else torch.zeros(0, 10)
