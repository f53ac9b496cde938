"""The benchmark's add/sub model behind Triton (the server bundled by ``nvidia-pytriton``):
Triton's Python backend runs pytriton's stub, which hands each request to ``infer``
in this process.

    python pytriton_addsub.py --http-port 8000 --grpc-port 8001 --metrics-port 8002
"""

import argparse
import logging

import numpy as np
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig


def infer(requests):
    return [{"OUTPUT0": r["INPUT0"] + r["INPUT1"], "OUTPUT1": r["INPUT0"] - r["INPUT1"]} for r in requests]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--model", default="add_sub")
    parser.add_argument("--instances", type=int, default=1, help="model instances (each its own stub and thread)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = TritonConfig(http_address="127.0.0.1", http_port=args.http_port, grpc_address="127.0.0.1",
                          grpc_port=args.grpc_port, metrics_port=args.metrics_port, log_verbose=0)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=args.model,
            infer_func=[infer] * args.instances,
            inputs=[Tensor(name="INPUT0", dtype=np.float32, shape=(16,)),
                    Tensor(name="INPUT1", dtype=np.float32, shape=(16,))],
            outputs=[Tensor(name="OUTPUT0", dtype=np.float32, shape=(16,)),
                     Tensor(name="OUTPUT1", dtype=np.float32, shape=(16,))],
            config=ModelConfig(batching=False),
            strict=False,
        )
        triton.serve()


if __name__ == "__main__":
    main()
