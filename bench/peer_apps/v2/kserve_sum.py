"""The trivial model (sum of each row) on KServe's Python model server, for bench/v2_protocol.py.

python kserve_sum.py HTTP_PORT
"""

import sys

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class SumModel(Model):
    def __init__(self) -> None:
        super().__init__("sum")
        self.ready = True

    def predict(self, payload: InferRequest, headers=None) -> InferResponse:
        out = payload.inputs[0].as_numpy().sum(axis=1)
        tensor = InferOutput(name="output_0", shape=list(out.shape), datatype="FP64")
        tensor.set_data_from_numpy(out, binary_data=False)
        return InferResponse(model_name=self.name, infer_outputs=[tensor], response_id=payload.id or "")


if __name__ == "__main__":
    ModelServer(http_port=int(sys.argv[1]), enable_grpc=False, workers=1, enable_latency_logging=False).start(
        [SumModel()]
    )
