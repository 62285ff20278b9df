"""A v1 entry script's inference-schema declarations as the protocol's named, typed tensors.

``Signature.from_swagger`` reads the swagger schemas inference-schema records for ``run()``
(the same ones the replica's swagger.json is built from). Each numpy or standard-Python
parameter is one input tensor of its name; a pandas DataFrame parameter is one 1-D input per
column, named by the column (the convention of MLServer's pandas codec). ``bind`` checks the
tensors against them (names, datatypes, dimensions after the first) and gives ``run()``'s
keyword arguments; ``outputs`` turns what ``run()`` returned into named arrays: a dict's keys
name its outputs, anything else is the one output ``output_0``, with the datatype the output
schema declares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelfleet.oip.datatypes import datatype_of, dtype_of, from_swagger
from modelfleet.oip.rest import InferError, Tensor

__all__ = ["DEFAULT_OUTPUT", "Signature", "TensorSpec", "outputs_of"]

DEFAULT_OUTPUT = "output_0"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    datatype: str
    shape: tuple[int, ...]  # -1: any size (the first dimension, the batch, always is)
    parameter: str  # run()'s parameter it feeds (a column's DataFrame parameter)
    kind: str  # "numpy" | "pandas" | "python"

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Signature:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def from_swagger(cls, input_schema: dict[str, Any], output_schema: dict[str, Any]) -> Signature:
        example = input_schema.get("example") or {}
        inputs: list[TensorSpec] = []
        for param, schema in (input_schema.get("properties") or {}).items():
            inputs.extend(_specs(param, schema, example.get(param)))
        outputs: list[TensorSpec] = []
        if output_schema.get("type") == "object" and output_schema.get("properties"):
            out_example = output_schema.get("example") or {}
            for name, schema in output_schema["properties"].items():
                outputs.extend(_specs(name, schema, out_example.get(name)))
        elif output_schema:
            outputs.extend(_specs(DEFAULT_OUTPUT, output_schema, output_schema.get("example")))
        return cls(tuple(inputs), tuple(outputs))

    def metadata(self, name: str, versions: Sequence[str]) -> dict[str, Any]:
        return {
            "name": name,
            "versions": list(versions),
            "platform": "modelfleet_python",
            "inputs": [s.metadata() for s in self.inputs],
            "outputs": [s.metadata() for s in self.outputs],
        }

    def bind(self, tensors: Sequence[Tensor]) -> dict[str, Any]:
        """run()'s keyword arguments for the request's tensors, each checked against its spec."""
        given = {t.name: t for t in tensors}
        known = {s.name for s in self.inputs}
        unknown = [name for name in given if name not in known]
        if unknown:
            raise InferError(f"no input named {', '.join(map(repr, unknown))}; this model's inputs: {', '.join(known)}")
        kwargs: dict[str, Any] = {}
        columns: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
        for spec in self.inputs:
            tensor = given.get(spec.name)
            if tensor is None:
                raise InferError(f"input '{spec.name}' is missing ({spec.datatype}, shape {list(spec.shape)})")
            array = _checked(tensor, spec)
            if spec.kind == "pandas":
                columns.setdefault(spec.parameter, {})[spec.name] = array
            elif spec.kind == "python":
                kwargs[spec.parameter] = _python_value(array)
            else:
                kwargs[spec.parameter] = array
        if columns:
            import pandas as pd  # type: ignore[import-untyped,unused-ignore]  # only scripts with a DataFrame have it

            for parameter, frame in columns.items():
                lengths = {len(v) for v in frame.values()}
                if len(lengths) > 1:
                    raise InferError(f"the columns of '{parameter}' have different lengths: {sorted(lengths)}")
                kwargs[parameter] = pd.DataFrame(frame)
        return kwargs


def _specs(param: str, schema: dict[str, Any], example: Any) -> list[TensorSpec]:
    form = str(schema.get("format", ""))
    if form.startswith("pandas.DataFrame"):
        item = schema.get("items") or {}
        return [
            TensorSpec(column, from_swagger(column_schema), (-1,), param, "pandas")
            for column, column_schema in (item.get("properties") or {}).items()
        ]
    if schema.get("type") == "array":
        item = schema
        while item.get("type") == "array" and isinstance(item.get("items"), dict):
            item = item["items"]
        shape = _shape(example) if example is not None else ()
        dims = max(len(shape), _depth(schema))
        full = tuple([-1] + list(shape[1:dims])) if dims else (-1,)
        return [TensorSpec(param, from_swagger(item), full, param, "numpy" if form == "numpy.ndarray" else "python")]
    return [TensorSpec(param, from_swagger(schema), (1,), param, "python")]


def _depth(schema: dict[str, Any]) -> int:
    depth = 0
    while schema.get("type") == "array" and isinstance(schema.get("items"), dict):
        depth += 1
        schema = schema["items"]
    return depth


def _shape(example: Any) -> tuple[int, ...]:
    shape: list[int] = []
    while isinstance(example, list):
        shape.append(len(example))
        example = example[0] if example else None
    return tuple(shape)


def _checked(tensor: Tensor, spec: TensorSpec) -> np.ndarray[Any, Any]:
    if tensor.datatype != spec.datatype:
        raise InferError(f"input '{spec.name}' must be {spec.datatype} (got {tensor.datatype})")
    if spec.kind != "python" or spec.shape != (1,):
        if len(tensor.shape) != len(spec.shape):
            raise InferError(
                f"input '{spec.name}' must have {len(spec.shape)} dimensions, shape {list(spec.shape)} "
                f"(got {list(tensor.shape)})"
            )
        for dim, (want, got) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
            if want != -1 and want != got:
                raise InferError(
                    f"input '{spec.name}' has size {got} on dimension {dim}; the model takes {want} "
                    f"(shape {list(spec.shape)})"
                )
    if spec.datatype == "BYTES":
        return np.array([v.decode("utf-8", "replace") for v in tensor.array.reshape(-1)], dtype=object).reshape(
            tensor.shape
        )
    return tensor.array


def _python_value(array: np.ndarray[Any, Any]) -> Any:
    if array.size == 1 and array.ndim <= 1:
        return array.reshape(-1)[0].item() if array.dtype != object else array.reshape(-1)[0]
    return array.tolist()


def outputs_of(result: Any, signature: Signature | None) -> list[tuple[str, np.ndarray[Any, Any]]]:
    """What run() (or infer()) returned, as named arrays in the signature's datatypes."""
    declared = {s.name: s for s in signature.outputs} if signature else {}
    if isinstance(result, dict):
        items = list(result.items())
    elif _is_frame(result):
        items = [(str(c), result[c].to_numpy()) for c in result.columns]
    else:
        items = [(DEFAULT_OUTPUT, result)]
    out: list[tuple[str, np.ndarray[Any, Any]]] = []
    for name, value in items:
        array = value if isinstance(value, np.ndarray) else np.asarray(value)
        if array.ndim == 0:
            array = array.reshape(1)
        spec = declared.get(str(name))
        if spec is not None and spec.datatype != "BYTES":
            want = dtype_of(spec.datatype)
            if want is not None and array.dtype != want:
                array = array.astype(want)
        elif array.dtype.kind == "U":
            array = array.astype(object)
        try:
            datatype_of(array)
        except TypeError as ex:
            raise ValueError(f"output '{name}': {ex}") from None
        out.append((str(name), array))
    return out


def _is_frame(value: Any) -> bool:
    return type(value).__name__ == "DataFrame" and hasattr(value, "columns")
