"""Callbacks that Lightning does not ship: the training clock, resumability, fine-tuning, test figures, weight export, the layer summary."""

from mnist_lab.callbacks.export_weights import ExportWeights
from mnist_lab.callbacks.finetune import FineTuneSchedule
from mnist_lab.callbacks.layer_summary import LayerSummary
from mnist_lab.callbacks.resumable import Resumable
from mnist_lab.callbacks.test_report import TestReport
from mnist_lab.callbacks.timer import EpochTimer

__all__ = ["EpochTimer", "ExportWeights", "FineTuneSchedule", "LayerSummary", "Resumable", "TestReport"]
