"""KServe's own InferenceRESTClient (V1 and V2) against a server: run in the KServe peer
environment by tests/test_peers.py. Prints one JSON object of what it got."""

import asyncio
import json
import sys

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


async def main(url: str, model: str, images: str) -> dict:
    x = np.load(images)
    got: dict = {}
    v2 = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    got["v2_live"] = await v2.is_server_live(url)
    got["v2_ready"] = await v2.is_server_ready(url)
    got["v2_model_ready"] = await v2.is_model_ready(url, model)
    for binary in (False, True):
        tensor = InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x, binary_data=binary)
        answer = await v2.infer(url, InferRequest(model, [tensor], request_id=f"kserve-{binary}"), model_name=model)
        got[f"v2_binary_{binary}"] = {"id": answer.id, "logits": answer.outputs[0].as_numpy().tolist()}
    try:
        await v2.infer(url, InferRequest("cats", [tensor]), model_name="cats")
    except Exception as err:  # KServe raises httpx.HTTPStatusError carrying our message
        got["v2_unknown"] = f"{type(err).__name__}: {err}"
    await v2.close()
    v1 = InferenceRESTClient(RESTConfig(protocol="v1", timeout=30))
    got["v1_live"] = await v1.is_server_live(url)
    got["v1_model_ready"] = await v1.is_model_ready(url, model)
    got["v1_predictions"] = (await v1.infer(url, {"instances": x.tolist()}, model_name=model))["predictions"]
    await v1.close()
    return got


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(*sys.argv[1:4]))))
