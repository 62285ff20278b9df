"""A v1 entry script's inference-schema declarations as protocol tensors: the metadata derived
from them, the tensors bound to run()'s arguments (numpy, pandas and plain Python parameters),
what run() returns named and typed by the output schema, and mismatches refused naming the input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from inference_schema import schema_util
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.parameter_types.pandas_parameter_type import PandasParameterType
from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema

from modelfleet.oip.rest import InferError, Tensor
from modelfleet.oip.signature import Signature, outputs_of


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]], dtype=np.float32)))
@input_schema("frame", PandasParameterType(pd.DataFrame({"age": [30], "city": ["Oslo"]})))
@input_schema("top_k", StandardPythonParameterType(3))
@output_schema(NumpyParameterType(np.array([0.5], dtype=np.float64)))
def run(data, frame, top_k):
    return data.sum(axis=1).astype(np.float64) + frame["age"].to_numpy() + top_k


@input_schema("data", NumpyParameterType(np.array([[1, 2]], dtype=np.int64)))
@output_schema(
    StandardPythonParameterType(
        {"label": StandardPythonParameterType(["a"]), "score": NumpyParameterType(np.array([0.1], dtype=np.float32))}
    )
)
def run_named(data):
    return {"label": ["yes"] * len(data), "score": [0.9] * len(data)}


def signature_of(func):
    return Signature.from_swagger(schema_util.get_input_schema(func), schema_util.get_output_schema(func))


def tensor(name, array, datatype):
    return Tensor(name, datatype, array.shape, array)


def test_metadata_lists_each_parameter_and_column_with_its_datatype_and_shape():
    meta = signature_of(run).metadata("fraud", ["2"])
    assert meta["name"] == "fraud" and meta["versions"] == ["2"]
    assert meta["inputs"] == [
        {"name": "data", "datatype": "FP32", "shape": [-1, 3]},
        {"name": "age", "datatype": "INT64", "shape": [-1]},
        {"name": "city", "datatype": "BYTES", "shape": [-1]},
        {"name": "top_k", "datatype": "INT64", "shape": [1]},
    ]
    assert meta["outputs"] == [{"name": "output_0", "datatype": "FP64", "shape": [-1]}]


def test_tensors_bind_to_numpy_pandas_and_python_arguments_and_run_answers():
    sig = signature_of(run)
    kwargs = sig.bind(
        [
            tensor("data", np.ones((2, 3), dtype=np.float32), "FP32"),
            tensor("age", np.array([10, 20], dtype=np.int64), "INT64"),
            tensor("city", np.array([b"Oslo", b"Rome"], dtype=object), "BYTES"),
            tensor("top_k", np.array([5], dtype=np.int64), "INT64"),
        ]
    )
    assert isinstance(kwargs["frame"], pd.DataFrame) and list(kwargs["frame"]["city"]) == ["Oslo", "Rome"]
    assert kwargs["top_k"] == 5
    [(name, array)] = outputs_of(run(**kwargs), sig)
    assert name == "output_0" and array.dtype == np.float64
    np.testing.assert_array_equal(array, [18.0, 28.0])


def test_a_dict_output_names_each_output_with_the_schema_datatype():
    sig = signature_of(run_named)
    assert [o.name for o in sig.outputs] == ["label", "score"]
    outputs = dict(outputs_of(run_named(**sig.bind([tensor("data", np.array([[1, 2]]), "INT64")])), sig))
    assert outputs["score"].dtype == np.float32 and list(outputs["label"]) == ["yes"]


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ([tensor("data", np.ones((1, 3)), "FP64")], "input 'data' must be FP32 \\(got FP64\\)"),
        ([tensor("data", np.ones((1, 4), dtype=np.float32), "FP32")], "input 'data' has size 4 on dimension 1"),
        ([tensor("data", np.ones(3, dtype=np.float32), "FP32")], "input 'data' must have 2 dimensions"),
        ([tensor("extra", np.ones(1), "FP64")], "no input named 'extra'"),
        ([tensor("data", np.ones((1, 3), dtype=np.float32), "FP32")], "input 'age' is missing"),
    ],
)
def test_mismatches_are_refused_naming_the_input(given, message):
    with pytest.raises(InferError, match=message):
        signature_of(run).bind(given)


def test_columns_of_different_lengths_are_refused():
    sig = signature_of(run)
    with pytest.raises(InferError, match="columns of 'frame' have different lengths"):
        sig.bind(
            [
                tensor("data", np.ones((1, 3), dtype=np.float32), "FP32"),
                tensor("age", np.array([1, 2], dtype=np.int64), "INT64"),
                tensor("city", np.array([b"x"], dtype=object), "BYTES"),
                tensor("top_k", np.array([1], dtype=np.int64), "INT64"),
            ]
        )
