"""KServe's ModelServer serving a maaskit artifact, for benchmarks/serving.py. Runs in the KServe
peer environment (tools/peers.py); PyTorch and maaskit come from maaskit's own environment,
appended to the path after KServe's packages so KServe keeps its own versions.

    python kserve_server.py ARTIFACT PORT MAASKIT_SITE_PACKAGES REPO_ROOT
"""

import sys

artifact, port, site_packages, repo = sys.argv[1:5]
sys.path += [site_packages, repo]
# KServe reads its command line when it is imported: one worker, REST only, no per-request log line
sys.argv = [sys.argv[0], "--http_port", port, "--enable_grpc", "false", "--workers", "1"]
sys.argv += ["--enable_latency_logging", "false"]

import kserve  # noqa: E402
import torch  # noqa: E402
import uvicorn  # noqa: E402
from kserve import InferOutput, InferRequest, InferResponse  # noqa: E402
from kserve.utils.utils import generate_uuid, get_predict_input  # noqa: E402

from maaskit.artifact import load_artifact  # noqa: E402

_config = uvicorn.Config.__init__


def _loopback(self, *args, **kw):  # KServe binds 0.0.0.0; a benchmark stays on this machine
    kw["host"] = "127.0.0.1"
    _config(self, *args, **kw)


uvicorn.Config.__init__ = _loopback


class Classifier(kserve.Model):
    def __init__(self, name: str):
        super().__init__(name)
        self.model = None
        self.load()

    def load(self) -> bool:
        self.model = load_artifact(artifact)[0].eval()
        self.ready = True
        return True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        x = get_predict_input(payload)
        with torch.inference_mode():
            logits = self.model(torch.as_tensor(x, dtype=torch.float32)).numpy()
        output = InferOutput("logits", list(logits.shape), "FP32")  # named as maaskit's, so one request fits both
        output.set_data_from_numpy(logits, binary_data=payload.use_binary_outputs)
        return InferResponse(
            payload.id or generate_uuid(),
            self.name,
            [output],
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )


if __name__ == "__main__":
    kserve.ModelServer().start([Classifier("digits")])
