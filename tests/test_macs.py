"""MAC/parameter counter on a hand-checked tiny TFLite net, and the per-op formulas."""

from __future__ import annotations

import numpy as np
import pytest

from edge_model.macs import count_tflite, op_macs


def test_op_formulas_by_hand():
    # conv 3x3, 3->8 channels, 8x8 output: 8*8*8 outputs * 27 MACs each
    assert op_macs("CONV_2D", [(1, 8, 8, 3), (8, 3, 3, 3), (8,)], [(1, 8, 8, 8)]) == 13824
    assert op_macs("DEPTHWISE_CONV_2D", [(1, 8, 8, 8), (1, 3, 3, 8), (8,)], [(1, 8, 8, 8)]) == 4608
    assert op_macs("FULLY_CONNECTED", [(1, 512), (10, 512), (10,)], [(1, 10)]) == 5120
    # every input pixel (8*8*8) scatters into a 2x2 window of 4 channels
    assert op_macs("TRANSPOSE_CONV", [(4,), (4, 2, 2, 8), (1, 8, 8, 8)], [(1, 16, 16, 4)]) == 8192
    # (2, 5, 6) x (2, 6, 7): 2*5*7 outputs, K=6
    assert op_macs("BATCH_MATMUL", [(2, 5, 6), (2, 6, 7)], [(2, 5, 7)]) == 420
    assert op_macs("BATCH_MATMUL", [(2, 6, 5), (2, 6, 7)], [(2, 5, 7)]) == 420  # adj_x
    assert op_macs("ADD", [(1, 4), (1, 4)], [(1, 4)]) == 0


def test_missing_file(tmp_path):
    from edge.errors import ModelError

    with pytest.raises(ModelError):
        count_tflite(tmp_path / "nope.tflite")


def test_tiny_keras_net(tmp_path):
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)  # 13824 MACs, 224 params
    x = keras.layers.DepthwiseConv2D(3, padding="same")(x)  # 4608 MACs, 80 params
    y = keras.layers.Conv2DTranspose(4, 2, strides=2, use_bias=False)(x)  # 8192 MACs, 128 params
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(10)(x)  # 5120 MACs, 5130 params
    model = keras.Model(inputs, [x, y])
    rng = np.random.default_rng(0)  # non-zero, distinct biases: the converter dedupes/drops zero constants
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    tflite = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    path = tmp_path / "tiny.tflite"
    path.write_bytes(tflite)
    result = count_tflite(path)
    assert result["macs_by_op"]["CONV_2D"] == 13824
    assert result["macs_by_op"]["DEPTHWISE_CONV_2D"] == 4608
    assert result["macs_by_op"]["TRANSPOSE_CONV"] == 8192
    assert result["macs_by_op"]["FULLY_CONNECTED"] == 5120
    assert result["macs"] == 13824 + 4608 + 8192 + 5120
    assert result["params"] == 224 + 80 + 128 + 5130
