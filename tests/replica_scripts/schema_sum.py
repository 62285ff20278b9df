"""@input_schema/@output_schema from inference_schema (standard Python types only)."""

from inference_schema.parameter_types.standard_py_parameter_type import StandardPythonParameterType
from inference_schema.schema_decorators import input_schema, output_schema


def init():
    pass


@input_schema("data", StandardPythonParameterType([[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]]))
@input_schema("scale", StandardPythonParameterType(1.0))
@output_schema(StandardPythonParameterType([55.0]))
def run(data, scale=1.0):
    return [sum(row) * scale for row in data]
