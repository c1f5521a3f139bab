"""Using a trained model outside training: the predictor behind predict, evaluate and export, and image preparation.

Imports neither Lightning nor Hydra at module level, so ONNX-only prediction stays light.
"""
