"""Notebook 06's exercises, solved."""

DATATYPES = {"uint8": "UINT8", "float32": "FP32", "int64": "INT64"}


def v2_request(array, name):
    tensor = {"name": name, "datatype": DATATYPES[str(array.dtype)], "shape": list(array.shape),
              "data": array.ravel().tolist()}  # fmt: skip
    return {"inputs": [tensor]}


def take_batch(queue, max_batch_size):
    batch = []
    while queue and len(batch) < max_batch_size:
        batch.append(queue.popleft())
    return batch
