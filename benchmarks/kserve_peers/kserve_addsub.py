"""The benchmark's add/sub model on the ``kserve`` package's ModelServer (REST on
``--http_port``, gRPC on ``--grpc_port``, one process):

    python kserve_addsub.py --model_name add_sub --http_port 8080 --grpc_port 8081 --enable_latency_logging false
"""

import kserve
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer


class AddSub(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.load()

    def load(self) -> bool:
        self.ready = True
        return self.ready

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        a = payload.get_input_by_name("INPUT0").as_numpy()
        b = payload.get_input_by_name("INPUT1").as_numpy()
        out0 = InferOutput(name="OUTPUT0", shape=list(a.shape), datatype="FP32")
        out0.set_data_from_numpy(a + b, binary_data=False)
        out1 = InferOutput(name="OUTPUT1", shape=list(a.shape), datatype="FP32")
        out1.set_data_from_numpy(a - b, binary_data=False)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=[out0, out1])


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(parents=[kserve.model_server.parser])
    args, _ = parser.parse_known_args()
    ModelServer().start([AddSub(args.model_name)])
