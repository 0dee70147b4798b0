"""Inference backends (ONNX Runtime, LiteRT), the optimizer and the model zoo.

Filled in by the models issue; the package exists so the layout and install are fixed now.
"""
