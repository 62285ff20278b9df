"""The trivial model (sum of each row) on NVIDIA PyTriton (Triton's server, Python model path),
for bench/v2_protocol.py.

    python pytriton_sum.py HTTP_PORT GRPC_PORT METRICS_PORT
"""

import sys

import numpy as np
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


@batch
def infer(data):
    return {"output_0": data.sum(axis=1, keepdims=True)}


if __name__ == "__main__":
    ports = [int(p) for p in sys.argv[1:4]]
    with Triton(config=TritonConfig(http_port=ports[0], grpc_port=ports[1], metrics_port=ports[2])) as triton:
        triton.bind(
            model_name="sum",
            infer_func=infer,
            inputs=[Tensor(name="data", dtype=np.float64, shape=(10,))],
            outputs=[Tensor(name="output_0", dtype=np.float64, shape=(1,))],
            config=ModelConfig(max_batch_size=64),
        )
        triton.serve()
