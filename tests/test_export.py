"""export: ONNX and TorchScript files reproduce PyTorch, and predict runs from them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnist_lab.checkpoints import load_net
from mnist_lab.data import IDXSource
from mnist_lab.tools.export import ExportError, export, run_exported
from mnist_lab.tools.predict import load_predictor
from tests.conftest import MNIST_DIR, compose_config

# Every test here asserts on the model trained by the suite (conftest.trained_run or its own run).
pytestmark = [pytest.mark.trained_model, pytest.mark.slow]


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_matches_pytorch_and_predict_runs_from_it(fmt, suffix, trained_run, tmp_path):
    cfg = compose_config(
        [f"ckpt_path={trained_run}", f"format={fmt}", "check_images=500"], tmp_path, config_name="export"
    )
    report = export(cfg)
    path = tmp_path / f"model{suffix}"
    assert report["passed"] and report["file"] == str(path) and report["max_abs_diff"] < 1e-4
    assert json.loads((tmp_path / "export.json").read_text())["passed"]
    # Independently of export's own check: other test images, another batch size.
    x_u8 = IDXSource(str(MNIST_DIR)).load().test_x[-300:]
    x = (x_u8.float() / 255 - 0.1307) / 0.3081
    net, _ = load_net(trained_run)
    with torch.inference_mode():
        expected = net(x).numpy()
    got = run_exported(path, x)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    # predict from the exported file: the same probabilities as from the checkpoint.
    from_file = load_predictor(path)(x_u8[:, 0].numpy())
    from_ckpt = load_predictor(trained_run)(x_u8[:, 0].numpy())
    np.testing.assert_allclose(from_file, from_ckpt, atol=1e-5)


def test_export_refuses_a_mismatch(trained_run, tmp_path):
    # A tolerance no float computation meets in another runtime: the check must fail loudly.
    cfg = compose_config(
        [f"ckpt_path={trained_run}", "format=onnx", "atol=0", "rtol=0", "check_images=200"],
        tmp_path,
        config_name="export",
    )
    try:
        export(cfg)
    except ExportError as e:
        assert "does not reproduce PyTorch" in str(e) and (tmp_path / "model.onnx.mismatch").exists()
        assert not (tmp_path / "model.onnx").exists()
    else:  # onnxruntime happened to match PyTorch bit for bit: then the check passed legitimately
        assert json.loads((tmp_path / "export.json").read_text())["max_abs_diff"] == 0.0


def test_foreign_onnx_file_is_refused(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "foreign",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 10])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 10])],
    )
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    from mnist_lab.inference.predictor import ModelFileError

    with pytest.raises(ModelFileError, match="normalisation"):
        load_predictor(tmp_path / "foreign.onnx")
    (tmp_path / "garbage.onnx").write_text("not onnx")
    with pytest.raises(ModelFileError, match="not a usable ONNX model"):
        load_predictor(tmp_path / "garbage.onnx")
