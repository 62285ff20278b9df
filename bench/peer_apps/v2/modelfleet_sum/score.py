"""The trivial model (sum of each row) as a v1 entry script with inference-schema decorators:
v1 JSON on /score, V2 (REST and gRPC) from the same declarations (replica/v2.py)."""

import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", NumpyParameterType(np.array([[1.0] * 10])))
@output_schema(NumpyParameterType(np.array([10.0])))
def run(data):
    return data.sum(axis=1).tolist()  # JSON for v1; the V2 answer takes the output schema's FP64
