"""`python -m mnist_lab predict ckpt_path=PATH inputs=FILE_OR_DIR`: read digits and numbers in image files.

Each image is prepared as MNIST was (mnist_lab.inference.imageprep), cut into digits when it holds a
number, and classified; per file it prints the text and the top-3 probabilities of every
digit, and writes predictions.csv / predictions.json to its output directory. A file that
cannot be read or holds no ink gets its own error line; the others are still read, and the
exit status is 2 when any file failed (1 when nothing could run: a bad checkpoint or config).
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, ListConfig

from mnist_lab import CONF_DIR
from mnist_lab.errors import UserError, user_errors
from mnist_lab.inference.imageprep import IMAGE_SUFFIXES, ImageError, prepare, read_grey
from mnist_lab.inference.predictor import Predictor, read_onnx, read_torchscript
from mnist_lab.weights import card_path


def load_predictor(path: str | Path, batch_size: int = 1000, tta_degrees: Any = ()) -> Predictor:
    """The Predictor of a model file: an ONNX or TorchScript export, or a checkpoint, run directory or weights file with a card."""
    path = Path(path)
    if path.suffix == ".onnx":
        model = read_onnx(path)
    elif path.suffix in (".pt", ".ts") and not card_path(path).is_file():  # no card: TorchScript
        model = read_torchscript(path)
    else:
        from mnist_lab.checkpoints import load_net  # imported here: an exported file needs no Hydra or Lightning

        net, cfg = load_net(path)
        model = (net, cfg.data.mean, cfg.data.std)
    return Predictor(*model, batch_size=batch_size, tta_degrees=tta_degrees, path=path)


def collect_inputs(inputs: str | list[str]) -> list[Path]:
    """Files to read: named files as given, directories searched recursively for image files.

    Args:
        inputs: a path or a list of paths.
    """
    files: list[Path] = []
    for item in [inputs] if isinstance(inputs, str) else list(inputs):
        path = Path(str(item)).expanduser()
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)  # a missing or non-image file gets its own error below
    return files


def image_record(name: str, read: Callable[[], np.ndarray], split: bool = True) -> dict[str, Any]:
    """One image's record with its digits prepared (not yet classified), or with `error` set.

    Args:
        name: the file (or upload) the record and its errors name.
        read: returns the image's (H, W) grey levels (read_grey); may raise ImageError.
        split: cut the image into digits; False reads all its ink as one digit.
    """
    record: dict[str, Any] = {"file": name, "text": None, "digits": [], "error": None}
    try:
        digits = prepare(read(), split=split, name=name)
        record["digits"] = [{"box": list(d.box), "image": d.image} for d in digits]
    except ImageError as e:
        record["error"] = str(e)
    return record


def classify(records: list[dict[str, Any]], predictor: Predictor) -> list[dict[str, Any]]:
    """Fill in each prepared digit's digit, confidence and top3 and each record's text; one batch for all."""
    prepared = [d["image"] for r in records for d in r["digits"]]
    probs = predictor(np.stack(prepared)) if prepared else np.zeros((0, 10))
    i = 0
    for record in records:
        for digit in record["digits"]:
            p = probs[i]
            i += 1
            top = np.argsort(-p)[:3]
            digit.update(digit=int(top[0]), confidence=float(p[top[0]]), top3=[[int(k), float(p[k])] for k in top])
        if record["error"] is None:
            record["text"] = "".join(str(d["digit"]) for d in record["digits"])
    return records


def read_files(files: list[Path], predictor: Predictor, split: bool = True) -> list[dict[str, Any]]:
    """Prepare and classify every file; one record per file, with `error` set for those that failed.

    Args:
        files: the images.
        predictor: the model.
        split: cut each image into digits; False reads all its ink as one digit.
    """
    return classify([image_record(str(path), partial(read_file, path), split) for path in files], predictor)


def read_file(path: Path) -> np.ndarray:
    """An image file's grey levels (read_grey), with its own message for a missing file."""
    if not path.is_file():
        raise ImageError(f"{path} does not exist (or is not a file).")
    return read_grey(path)


def format_line(record: dict[str, Any]) -> str:
    if record["error"]:
        return f"{record['file']}: ERROR {record['error']}"
    digits = record["digits"]
    if len(digits) == 1:
        details = ", ".join(f"{k} {p:.1%}" for k, p in digits[0]["top3"])
    else:
        details = "per digit " + ", ".join(f"{d['digit']} {d['confidence']:.1%}" for d in digits)
    return f"{record['file']}: {record['text']}  ({details})"


def write_outputs(records: list[dict[str, Any]], output_dir: Path, formats: list[str], save_prepared: bool) -> None:
    """predictions.csv / predictions.json, and the prepared 28x28 digits as PNG if asked."""
    from PIL import Image

    output_dir.mkdir(parents=True, exist_ok=True)
    for n, record in enumerate(records):
        for i, digit in enumerate(record["digits"]):
            image = digit.pop("image")
            if save_prepared:
                name = Path("prepared") / f"{n:04d}-{Path(record['file']).stem}-{i}.png"
                (output_dir / "prepared").mkdir(exist_ok=True)
                Image.fromarray(image).save(output_dir / name)
                digit["prepared"] = str(output_dir / name)
    if "json" in formats:
        (output_dir / "predictions.json").write_text(json.dumps(records, indent=2) + "\n")
    if "csv" in formats:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["file", "text", "confidence", "top3", "prepared", "error"])
        for r in records:
            d = r["digits"]
            writer.writerow(
                [
                    r["file"],
                    r["text"] or "",
                    " ".join(f"{x['confidence']:.4f}" for x in d),
                    " | ".join(" ".join(f"{k}:{p:.4f}" for k, p in x["top3"]) for x in d),
                    " ".join(x.get("prepared", "") for x in d),
                    r["error"] or "",
                ]
            )
        (output_dir / "predictions.csv").write_text(buffer.getvalue())


def predict(cfg: DictConfig) -> list[dict[str, Any]]:
    """Read every input file with the model of cfg.ckpt_path; print, write and return one record per file."""
    formats = list(cfg.formats) if isinstance(cfg.formats, ListConfig) else [cfg.formats]
    unknown = set(formats) - {"csv", "json"}
    if unknown:
        raise UserError(
            f"formats={formats} holds {sorted(unknown)}: choose from csv and json, e.g. formats=[csv,json] or formats=[]."
        )
    predictor = load_predictor(cfg.ckpt_path, batch_size=cfg.batch_size, tta_degrees=cfg.get("tta_degrees") or ())
    inputs = cfg.inputs if isinstance(cfg.inputs, str) else list(cfg.inputs)
    files = collect_inputs(inputs)
    if not files:
        raise UserError(f"inputs={inputs} holds no image files ({', '.join(IMAGE_SUFFIXES)}). Point inputs at images.")
    records = read_files(files, predictor, split=cfg.split)
    for record in records:
        print(format_line(record))
    output_dir = Path(cfg.paths.output_dir)
    write_outputs(records, output_dir, formats, cfg.save_prepared)
    failed = sum(r["error"] is not None for r in records)
    print(f"{len(records) - failed} of {len(records)} files read; results in {output_dir}")
    return records


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    with user_errors():
        records = predict(cfg)
    if any(r["error"] for r in records):
        sys.exit(2)


if __name__ == "__main__":
    main()
