"""A small custom MLServer model for tests/test_peers.py: doubles its input (FP32) and names the
largest entry of each row (BYTES), so maaskit's client meets a third-party V2 server's numbers
and strings."""

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse


class Doubler(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        x = NumpyCodec.decode_input(payload.inputs[0])
        names = [f"column {int(i)}" for i in np.argmax(x.reshape(len(x), -1), axis=1)]
        return InferenceResponse(
            model_name=self.name,
            id=payload.id,
            outputs=[NumpyCodec.encode_output("doubled", x * 2), StringCodec.encode_output("largest", names)],
        )
