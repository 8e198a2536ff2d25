"""The cross-compile model tool (``edge-model``): convert, evaluate, tune, check on ARM, train.

Heavy dependencies (tensorflow, onnx2tf, torch) live in the ``build`` extra and
are imported inside the commands that need them, never by the device runtime.
"""
