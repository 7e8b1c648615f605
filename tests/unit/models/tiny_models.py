"""Tiny ONNX models with the signatures of real packs, built by the tests themselves."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_arcface(seed: int = 0, embedding_size: int = 512) -> bytes:
    """ArcFace's signature: (N, 3, 112, 112) float in, (N, 512) float out.

    Average pooling to 3x7x7 then one dense layer: enough for the output to depend on every
    input pixel's colour and place, so preprocessing or alignment mistakes change it.
    """
    rng = np.random.default_rng(seed)
    weights = rng.normal(0.0, 1.0, (3 * 7 * 7, embedding_size)).astype(np.float32)
    nodes = [
        helper.make_node(
            "AveragePool", ["input.1"], ["pooled"], kernel_shape=[16, 16], strides=[16, 16]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["683"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_arcface",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])],
        [helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", embedding_size])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="facepay-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
