#!/usr/bin/env python3
"""Builds the per-operator fixtures: one tiny ONNX model per case (onnx.helper) in Tests/Fixtures/ops/, and
ops/cases.json with each case's inputs and onnxruntime's outputs inline (small tensors, exact float32 values).

PalisadeRuntimeTests runs every case through Palisade's runtime and compares with onnxruntime's outputs, and
fails when an operator in the runtime's registry (OperatorRegistry) appears in no fixture model: a new operator
gets a case here. Needs numpy, onnx and onnxruntime:
  python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install numpy onnx onnxruntime
  .venv-fixtures/bin/python Tests/Fixtures/make_op_fixtures.py
Deterministic (fixed seed, single-threaded onnxruntime).
"""
import json
import os
import shutil

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ops")
rng = np.random.default_rng(20261204)
F, I, B = TensorProto.FLOAT, TensorProto.INT64, TensorProto.BOOL
NP = {F: np.float32, I: np.int64, B: np.bool_}
WIRE = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}
cases = []


def normal(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def positive(*shape):
    return (np.abs(rng.standard_normal(shape)) + 0.25).astype(np.float32)


def ints(lo, hi, *shape):
    return rng.integers(lo, hi, shape, dtype=np.int64)


def case(name, nodes, inputs, outputs, inits=None, opset=17, ml=False):
    """inputs: [(name, array)]; outputs: [(name, elem_type)]; inits: {name: array}."""
    opsets = [helper.make_opsetid("", opset)] + ([helper.make_opsetid("ai.onnx.ml", 3)] if ml else [])

    def build(output_shapes):
        g = helper.make_graph(
            nodes, name,
            [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), list(a.shape))
             for n, a in inputs],
            [helper.make_tensor_value_info(n, t, s) for (n, t), s in zip(outputs, output_shapes)],
            [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
        model = helper.make_model(g, opset_imports=opsets, producer_name="palisade-op-fixtures")
        model.ir_version = 8
        return model

    # onnxruntime first on a model without output shapes, then the model saved with the shapes it produced.
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    names = [o for o, _ in outputs]
    sess = ort.InferenceSession(build([None] * len(outputs)).SerializeToString(), so,
                                providers=["CPUExecutionProvider"])
    results = sess.run(names, dict(inputs))
    model = build([list(r.shape) for r in results])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, os.path.join(HERE, f"{name}.onnx"))

    def tensor(n, a):
        a = np.ascontiguousarray(a)
        values = a.reshape(-1).tolist()
        if a.dtype == np.bool_:
            values = [int(v) for v in values]
        return {"name": n, "datatype": WIRE[a.dtype], "shape": list(a.shape), "values": values}

    cases.append({"name": name, "model": f"ops/{name}.onnx", "inputs": [tensor(n, a) for n, a in inputs],
                  "outputs": [tensor(n, a) for n, a in zip(names, results)]})


n = helper.make_node


def unary(op, data, opset=17, **attrs):
    case(op, [n(op, ["x"], ["y"], **attrs)], [("x", data)], [("y", F)], opset=opset)


def main():
    if os.path.isdir(HERE):
        shutil.rmtree(HERE)
    os.makedirs(HERE)

    # Constants and shapes: each result is combined with a runtime input so the output is computed per call.
    case("Constant", [n("Constant", [], ["c"], value=numpy_helper.from_array(normal(3), "c")),
                      n("Add", ["x", "c"], ["y"])], [("x", normal(2, 3))], [("y", F)])
    case("Shape", [n("Shape", ["x"], ["s"], start=1), n("Cast", ["s"], ["sf"], to=F), n("Add", ["x", "sf"], ["y"])],
         [("x", normal(2, 3))], [("y", F)])
    case("ConstantOfShape", [n("ConstantOfShape", ["shape"], ["c"], value=numpy_helper.from_array(
        np.array([0.5], np.float32))), n("Mul", ["x", "c"], ["y"])], [("x", normal(2, 3))], [("y", F)],
         {"shape": np.array([2, 3], np.int64)})
    case("Range", [n("Range", ["start", "limit", "delta"], ["r"]), n("Add", ["x", "r"], ["y"])],
         [("x", normal(2, 7))], [("y", F)],
         {"start": np.array(-1.0, np.float32), "limit": np.array(2.4, np.float32), "delta": np.array(0.5, np.float32)})
    case("Range_int64", [n("Range", ["start", "limit", "delta"], ["r"]), n("Add", ["x", "r"], ["y"])],
         [("x", ints(-5, 5, 2, 4))], [("y", I)],
         {"start": np.array(10, np.int64), "limit": np.array(2, np.int64), "delta": np.array(-2, np.int64)})

    # Views.
    unary("Identity", normal(2, 3))
    case("Dropout", [n("Dropout", ["x"], ["y"])], [("x", normal(2, 3))], [("y", F)])
    case("Reshape", [n("Reshape", ["x", "shape"], ["y"])], [("x", normal(2, 3, 4))], [("y", F)],
         {"shape": np.array([0, -1], np.int64)})
    unary("Flatten", normal(2, 3, 4), axis=2)
    case("Squeeze", [n("Squeeze", ["x", "axes"], ["y"])], [("x", normal(2, 1, 3, 1))], [("y", F)],
         {"axes": np.array([1, -1], np.int64)})
    case("Squeeze_opset11", [n("Squeeze", ["x"], ["y"], axes=[1])], [("x", normal(2, 1, 3))], [("y", F)], opset=11)
    case("Unsqueeze", [n("Unsqueeze", ["x", "axes"], ["y"])], [("x", normal(2, 3))], [("y", F)],
         {"axes": np.array([0, 3], np.int64)})

    # Data movement.
    unary("Transpose", normal(2, 3, 4), perm=[1, 2, 0])
    case("Slice", [n("Slice", ["x", "starts", "ends", "axes", "steps"], ["y"])], [("x", normal(3, 10))], [("y", F)],
         {"starts": np.array([1, -2], np.int64), "ends": np.array([3, 0], np.int64),
          "axes": np.array([0, 1], np.int64), "steps": np.array([1, -3], np.int64)})
    case("Gather", [n("Gather", ["x", "i"], ["y"], axis=1)], [("x", normal(2, 5, 3)), ("i", ints(-5, 5, 2, 2))],
         [("y", F)])
    case("Gather_constant", [n("Gather", ["x", "i"], ["y"], axis=0)], [("x", normal(4, 3))], [("y", F)],
         {"i": np.array([3, -4, 1], np.int64)})
    case("ArrayFeatureExtractor", [n("ArrayFeatureExtractor", ["x", "i"], ["y"], domain="ai.onnx.ml")],
         [("x", normal(2, 5))], [("y", F)], {"i": np.array([4, 0, 2], np.int64)}, ml=True)
    case("Concat", [n("Concat", ["a", "b"], ["y"], axis=1)], [("a", normal(2, 3, 2)), ("b", normal(2, 1, 2))],
         [("y", F)])
    case("Expand", [n("Expand", ["x", "shape"], ["y"])], [("x", normal(3, 1))], [("y", F)],
         {"shape": np.array([2, 3, 4], np.int64)})
    case("Cast", [n("Cast", ["x"], ["y"], to=I)], [("x", normal(2, 4) * 10)], [("y", I)])
    case("Cast_to_bool", [n("Cast", ["x"], ["y"], to=B)], [("x", ints(-1, 2, 2, 4))], [("y", B)])
    case("Where", [n("Greater", ["x", "zero"], ["c"]), n("Where", ["c", "x", "z"], ["y"])],
         [("x", normal(2, 4)), ("z", normal(4))], [("y", F)], {"zero": np.array(0, np.float32)})

    # Logic.
    case("Equal", [n("Equal", ["a", "b"], ["y"])], [("a", ints(0, 3, 2, 4)), ("b", ints(0, 3, 4))], [("y", B)])
    case("Less", [n("Less", ["a", "b"], ["y"])], [("a", normal(2, 4)), ("b", normal(1, 4))], [("y", B)])
    case("Greater", [n("Greater", ["a", "b"], ["y"])], [("a", normal(2, 4)), ("b", normal(2, 1))], [("y", B)])
    case("Not", [n("Less", ["x", "zero"], ["c"]), n("Not", ["c"], ["y"])], [("x", normal(2, 4))], [("y", B)],
         {"zero": np.array(0, np.float32)})

    # Element-wise.
    for op in ["Add", "Sub", "Mul", "Div"]:
        case(op, [n(op, ["a", "b"], ["y"])], [("a", normal(2, 3, 4)), ("b", positive(3, 1))], [("y", F)])
    case("Add_int64", [n("Add", ["a", "b"], ["y"])], [("a", ints(-9, 9, 2, 3)), ("b", ints(-9, 9, 3))], [("y", I)])
    case("Pow", [n("Pow", ["a", "b"], ["y"])], [("a", positive(2, 4)), ("b", normal(2, 4))], [("y", F)])
    case("Mod", [n("Mod", ["a", "b"], ["y"])], [("a", ints(-20, 20, 2, 4)), ("b", np.array([3, -3, 5, 7], np.int64))],
         [("y", I)])
    case("Mod_fmod", [n("Mod", ["a", "b"], ["y"], fmod=1)], [("a", normal(2, 4) * 5), ("b", positive(4))], [("y", F)])
    for op in ["Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Neg", "Abs"]:
        unary(op, normal(3, 11) * 3)
    unary("Sqrt", positive(3, 11))
    unary("Log", positive(3, 11))
    unary("Reciprocal", positive(3, 11))
    unary("Gelu", normal(3, 11) * 3, opset=20)
    case("Gelu_tanh", [n("Gelu", ["x"], ["y"], approximate="tanh")], [("x", normal(3, 11) * 3)], [("y", F)], opset=20)
    case("Clip", [n("Clip", ["x", "lo", "hi"], ["y"])], [("x", normal(3, 5))], [("y", F)],
         {"lo": np.array(-0.5, np.float32), "hi": np.array(0.75, np.float32)})

    # Reductions.
    unary("Softmax", normal(2, 3, 19) * 4, axis=-1)
    case("Softmax_inner", [n("Softmax", ["x"], ["y"], axis=1)], [("x", normal(2, 9, 3) * 4)], [("y", F)])
    unary("LogSoftmax", normal(2, 3, 10), axis=-1)
    unary("ReduceMean", normal(2, 3, 4), axes=[1], keepdims=1)
    case("ReduceSum", [n("ReduceSum", ["x", "axes"], ["y"], keepdims=0)], [("x", normal(2, 3, 4))], [("y", F)],
         {"axes": np.array([0, 2], np.int64)})
    unary("ReduceMax", normal(2, 3, 4), axes=[-1], keepdims=0)
    case("ArgMax", [n("ArgMax", ["x"], ["y"], axis=1, keepdims=0)], [("x", normal(2, 6, 3))], [("y", I)])
    case("ArgMin", [n("ArgMin", ["x"], ["y"], axis=-1)], [("x", normal(2, 6))], [("y", I)])

    # Matrix products (both operands are inputs: a constant weight would be fused into _Dense).
    case("MatMul", [n("MatMul", ["a", "b"], ["y"])], [("a", normal(2, 3, 4)), ("b", normal(4, 5))], [("y", F)])
    case("Gemm", [n("Gemm", ["a", "b", "c"], ["y"], transB=1, alpha=0.5, beta=2.0)],
         [("a", normal(3, 4)), ("b", normal(5, 4))], [("y", F)], {"c": normal(5)})

    # Normalisation.
    case("LayerNormalization", [n("LayerNormalization", ["x", "scale", "bias"], ["y"], axis=-1, epsilon=1e-5)],
         [("x", normal(2, 3, 8))], [("y", F)], {"scale": normal(8), "bias": normal(8)})
    case("BatchNormalization", [n("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])],
         [("x", normal(2, 3, 4, 4))], [("y", F)],
         {"s": normal(3), "b": normal(3), "m": normal(3), "v": positive(3)})

    # Convolution and pooling.
    case("Conv", [n("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1])], [("x", normal(2, 3, 6, 6))], [("y", F)],
         {"w": normal(4, 3, 3, 3), "b": normal(4)})
    case("Conv_grouped_strided", [n("Conv", ["x", "w"], ["y"], group=2, strides=[2, 2], auto_pad="SAME_UPPER")],
         [("x", normal(1, 4, 7, 7))], [("y", F)], {"w": normal(6, 2, 3, 3)})
    unary("MaxPool", normal(2, 3, 8, 8), kernel_shape=[2, 2], strides=[2, 2])
    unary("AveragePool", normal(2, 3, 6, 6), kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    unary("GlobalAveragePool", normal(2, 3, 5, 5))
    unary("GlobalMaxPool", normal(2, 3, 5, 5))

    with open(os.path.join(HERE, "cases.json"), "w") as f:
        json.dump({"cases": cases}, f, indent=None, separators=(",", ":"))
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(HERE, x)) for x in os.listdir(HERE))
    print(f"op fixtures: {len(cases)} cases, {total / 1e3:.1f} kB")


if __name__ == "__main__":
    main()
