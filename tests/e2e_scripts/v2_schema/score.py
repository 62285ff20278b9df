import numpy as np
from inference_schema.parameter_types.numpy_parameter_type import NumpyParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", NumpyParameterType(np.array([[1.0, 2.0, 3.0]], dtype=np.float32)))
@output_schema(NumpyParameterType(np.array([6.0], dtype=np.float64)))
def run(data):
    return data.sum(axis=1).astype(np.float64)
