#!/usr/bin/env python3
"""Builds Palisade's ONNX runtime fixtures: four models and onnxruntime reference input/output pairs.

Models (all FP32, batch dimension symbolic):
  mlp_digits.onnx        scikit-learn MLPClassifier on load_digits, exported by skl2onnx (zipmap off):
                         outputs `label` (INT64) and `probabilities` (FP32).
  mlp_torch.onnx         a PyTorch MLP (Linear/ReLU/Linear/GELU/Linear/Softmax) via torch.onnx.export.
  mlp_torch_ext.onnx     the same model with its weights in the external-data file mlp_torch_ext.onnx.data.
  cnn_torch.onnx         a small CNN on 1x28x28 (Conv, ReLU, BatchNormalization, MaxPool, AveragePool,
                         GlobalAveragePool, Flatten, Gemm) via torch.onnx.export.
  encoder_torch.onnx     nn.TransformerEncoderLayer(d_model=64, nhead=4, batch_first=True, activation="gelu"),
                         sequence length 16, via torch.onnx.export.

For each model and batch size 1 and 32: the inputs and onnxruntime's outputs as raw little-endian files
(<model>.b<batch>.<tensor>.bin), described by fixtures.json. Run from anywhere:
  python3 -m venv .venv-fixtures && .venv-fixtures/bin/pip install numpy onnx onnxruntime scikit-learn skl2onnx torch
  .venv-fixtures/bin/python Tests/Fixtures/make_fixtures.py
Uses torch's TorchScript exporter (dynamo=False, opset 17), which emits the classic Shape/Gather/Unsqueeze/
Concat glue. Deterministic: fixed seeds, single-threaded onnxruntime.
The one-operator models in ops/ come from make_op_fixtures.py (numpy, onnx and onnxruntime only).
"""
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort

HERE = os.path.dirname(os.path.abspath(__file__))
BATCHES = (1, 32)
rng = np.random.default_rng(20261127)
manifest = {"models": []}


def run_ort(path, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds)


DTYPES = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}


def record(model_file, make_inputs, input_names, extra_files=()):
    path = os.path.join(HERE, model_file)
    entry = {"model": model_file, "files": [model_file, *extra_files], "cases": []}
    for batch in BATCHES:
        arrays = make_inputs(batch)
        feeds = dict(zip(input_names, arrays))
        out_names, outs = run_ort(path, feeds)
        case = {"batch": batch, "inputs": [], "outputs": []}
        for kind, names, values in (("inputs", input_names, arrays), ("outputs", out_names, outs)):
            for name, value in zip(names, values):
                value = np.ascontiguousarray(value)
                fname = f"{os.path.splitext(model_file)[0]}.b{batch}.{name}.bin"
                value.astype(value.dtype.newbyteorder("<")).tofile(os.path.join(HERE, fname))
                case[kind].append({"name": name, "datatype": DTYPES[value.dtype], "shape": list(value.shape),
                                   "file": fname})
        entry["cases"].append(case)
    manifest["models"].append(entry)


def digits_mlp():
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target
    clf = MLPClassifier(hidden_layer_sizes=(64, 32), max_iter=400, random_state=0).fit(x[:1500], y[:1500])
    model = convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))],
                            options={id(clf): {"zipmap": False}})
    onnx.save(model, os.path.join(HERE, "mlp_digits.onnx"))
    test = x[1500:]
    record("mlp_digits.onnx", lambda b: [test[:b].copy()], ["input"])


def torch_models():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    def export(module, example, path, input_name="input", output_name="output", **kw):
        module.eval()
        torch.onnx.export(module, (example,), path, input_names=[input_name], output_names=[output_name],
                          dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
                          opset_version=17, dynamo=False, do_constant_folding=True, **kw)

    mlp = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 10),
                        nn.Softmax(dim=-1))
    export(mlp, torch.randn(1, 64), os.path.join(HERE, "mlp_torch.onnx"))
    record("mlp_torch.onnx", lambda b: [rng.standard_normal((b, 64), dtype=np.float32)], ["input"])

    # The same weights as an external-data model: one data file beside the model.
    m = onnx.load(os.path.join(HERE, "mlp_torch.onnx"))
    ext = os.path.join(HERE, "mlp_torch_ext.onnx")
    if os.path.exists(ext + ".data"):
        os.remove(ext + ".data")
    onnx.save_model(m, ext, save_as_external_data=True, all_tensors_to_one_file=True,
                    location="mlp_torch_ext.onnx.data", size_threshold=0)
    record("mlp_torch_ext.onnx", lambda b: [rng.standard_normal((b, 64), dtype=np.float32)], ["input"],
           extra_files=["mlp_torch_ext.onnx.data"])

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 8, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(8)
            self.c2 = nn.Conv2d(8, 16, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(16)
            self.c3 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            # BatchNorm after ReLU so the exporter cannot fold it into the convolution.
            x = nn.functional.max_pool2d(self.bn1(torch.relu(self.c1(x))), 2)
            x = nn.functional.avg_pool2d(self.bn2(torch.relu(self.c2(x))), 2)
            x = torch.relu(self.c3(x))
            x = nn.functional.adaptive_avg_pool2d(x, 1)
            return self.fc(torch.flatten(x, 1))

    cnn = SmallCNN()
    with torch.no_grad():
        for bn in (cnn.bn1, cnn.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    export(cnn, torch.randn(1, 1, 28, 28), os.path.join(HERE, "cnn_torch.onnx"))
    record("cnn_torch.onnx", lambda b: [rng.standard_normal((b, 1, 28, 28), dtype=np.float32)], ["input"])

    enc = nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128, dropout=0.0, activation="gelu",
                                     batch_first=True)
    class Encoder(nn.Module):
        # A wrapper so the tracer sees only the tensor argument (not the layer's optional mask flags).
        def __init__(self, layer):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)

    enc = Encoder(enc).eval()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused fast path has no ONNX export
    with torch.no_grad():
        export(enc, torch.randn(1, 16, 64), os.path.join(HERE, "encoder_torch.onnx"))
    record("encoder_torch.onnx", lambda b: [rng.standard_normal((b, 16, 64), dtype=np.float32)], ["input"])


def glue_ops():
    """A hand-built graph (onnx.helper, opset 17) covering the glue and math operators the exported models do
    not: ReduceMean/ReduceSum, Pow, Sqrt, Where, Equal/Greater, Expand, ConstantOfShape, Gather with runtime
    indices, Concat, strided Slice, Clip, ArgMax, a BOOL output, and two inputs (FP32 and INT64)."""
    from onnx import TensorProto, helper, numpy_helper

    table = rng.standard_normal((10, 16)).astype(np.float32)
    bias = rng.standard_normal((1, 1, 16)).astype(np.float32)
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1e-5, np.float32), "eps"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(0.5, np.float32), "half"),
        numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
        numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        numpy_helper.from_array(np.array([0], np.int64), "s0"),
        numpy_helper.from_array(np.array([12], np.int64), "e12"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([2], np.int64), "st2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    n = helper.make_node
    nodes = [
        n("ReduceMean", ["x"], ["mean"], axes=[-1], keepdims=1),
        n("Sub", ["x", "mean"], ["d"]),
        n("Pow", ["d", "two"], ["p"]),
        n("ReduceMean", ["p"], ["var"], axes=[-1]),
        n("Add", ["var", "eps"], ["ve"]),
        n("Sqrt", ["ve"], ["sd"]),
        n("Div", ["d", "sd"], ["ln"]),
        n("Shape", ["x"], ["sh"]),
        n("ConstantOfShape", ["sh"], ["zeros"], value=numpy_helper.from_array(np.array([0.25], np.float32))),
        n("Greater", ["x", "zero"], ["pos"]),
        n("Where", ["pos", "ln", "zeros"], ["w"]),
        n("Expand", ["bias", "sh"], ["eb"]),
        n("Add", ["w", "eb"], ["y1"]),
        n("Gather", ["table", "ids"], ["emb"], axis=0),
        n("Concat", ["y1", "emb"], ["cat"], axis=1),
        n("Transpose", ["cat"], ["t"], perm=[0, 2, 1]),
        n("Slice", ["t", "s0", "e12", "ax2", "st2"], ["sl"]),
        n("ReduceSum", ["sl", "ax1"], ["r"], keepdims=0),
        n("Clip", ["r", "lo", "hi"], ["c"]),
        n("Sigmoid", ["c"], ["sg"]),
        n("Tanh", ["r"], ["th"]),
        n("Mul", ["sg", "th"], ["m"]),
        n("Mul", ["m", "half"], ["out"]),
        n("ArgMax", ["cat"], ["amax"], axis=2, keepdims=0),
        n("Greater", ["r", "zero"], ["positive"]),
        n("Equal", ["amax", "amax"], ["same"]),
    ]
    graph = helper.make_graph(
        nodes, "glue",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", 6]),
         helper.make_tensor_value_info("amax", TensorProto.INT64, ["batch", 12]),
         helper.make_tensor_value_info("positive", TensorProto.BOOL, ["batch", 6])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="palisade-fixtures")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, os.path.join(HERE, "glue_ops.onnx"))
    record("glue_ops.onnx", lambda b: [rng.standard_normal((b, 8, 16), dtype=np.float32),
                                       rng.integers(0, 10, (b, 4), dtype=np.int64)], ["x", "ids"])


def main():
    for name in os.listdir(HERE):
        if name.endswith(".bin"):
            os.remove(os.path.join(HERE, name))
    digits_mlp()
    torch_models()
    glue_ops()
    with open(os.path.join(HERE, "fixtures.json"), "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    total = sum(os.path.getsize(os.path.join(HERE, n)) for n in os.listdir(HERE))
    print(f"fixtures: {len(os.listdir(HERE))} files, {total / 1e6:.2f} MB")


if __name__ == "__main__":
    sys.exit(main())
