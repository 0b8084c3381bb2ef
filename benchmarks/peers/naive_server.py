"""The naive FastAPI endpoint that benchmarks/serving.py compares against: what a tutorial
writes — JSON in, the model run on the event loop, JSON out, no batching.

    python naive_server.py ARTIFACT PORT
"""

import sys

import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, Request

from maaskit.artifact import load_artifact

model = load_artifact(sys.argv[1])[0].eval()
app = FastAPI()


@app.post("/v2/models/digits/infer")
async def infer(request: Request):
    body = await request.json()
    tensor = body["inputs"][0]
    x = torch.tensor(np.asarray(tensor["data"], np.float32).reshape(tensor["shape"]))
    with torch.no_grad():
        logits = model(x).numpy()
    return {
        "model_name": "digits",
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": list(logits.shape), "data": logits.ravel().tolist()}
        ],
    }


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
