"""Exercises of notebooks 06, 08 and 09: the protocol and the batcher, explanations, data parallelism."""

from __future__ import annotations

from collections import deque

import numpy as np
import torch
from torch import nn

from .checking import Hint, exercise, same


@exercise(
    "06.v2_request",
    "v2_request(array, name) is the body of a V2 inference request for one input "
    "tensor: {'inputs': [{'name', 'datatype', 'shape', 'data'}]}, data flat in row-major order; "
    "a uint8 image gives datatype 'UINT8', a float32 one 'FP32'. maaskit's server decodes it to "
    "the same array.",
)
def _v2_request(v2_request):
    from ..serving.protocol import ProtocolError, decode_tensor

    for array in (
        np.arange(12, dtype=np.uint8).reshape(1, 1, 3, 4),
        np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3),
    ):
        body = v2_request(array, "input")
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), list) or len(body["inputs"]) != 1:
            raise Hint("return a dict with one tensor in a list under 'inputs'")
        spec = body["inputs"][0]
        try:
            decoded, _ = decode_tensor(spec)
        except ProtocolError as err:
            raise Hint(f"the server refuses it: {err}") from None
        if spec.get("name") != "input":
            raise Hint(f"the tensor's name should be 'input', got {spec.get('name')!r}")
        if decoded.dtype != array.dtype:
            raise Hint(f"a {array.dtype} array decodes as {decoded.dtype}: check 'datatype'")
        if decoded.shape != array.shape or not np.array_equal(decoded, array):
            raise Hint("the decoded tensor differs: 'shape' is list(array.shape), 'data' is array.ravel().tolist()")


@exercise(
    "06.take_batch",
    "take_batch(queue, max_batch_size) takes what waits at the front of a deque, "
    "oldest first, up to max_batch_size, and leaves the rest: 5 waiting with a limit of 3 gives "
    "[0, 1, 2] and leaves [3, 4]; an empty queue gives [].",
)
def _take_batch(take_batch):
    for waiting, limit in ((5, 3), (2, 8), (0, 4), (4, 4)):
        queue = deque(range(waiting))
        got = take_batch(queue, limit)
        same(
            list(got),
            list(range(min(waiting, limit))),
            f"{waiting} waiting, limit {limit}: the batch",
            hint="popleft() while the queue is not empty and the batch is not full",
        )
        same(list(queue), list(range(min(waiting, limit), waiting)), f"{waiting} waiting, limit {limit}: what stays")


@exercise(
    "08.occlude",
    "occlude(image, row, col, size, value) returns a copy of a C x H x W image with the "
    "size x size patch at (row, col) set to value, in every channel; the image itself is not changed.",
)
def _occlude(occlude):
    image = torch.arange(2 * 5 * 6, dtype=torch.float32).reshape(2, 5, 6)
    kept = image.clone()
    want = image.clone()
    want[:, 1:3, 2:4] = -1.0
    same(
        occlude(image, 1, 2, 2, -1.0),
        want,
        "occlude(image, 1, 2, 2, -1.)",
        hint="rows row:row+size, columns col:col+size",
    )
    same(image, kept, "the original image after the call", hint="clone() before you write into it")


def _tiny_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


@exercise(
    "08.saliency",
    "saliency(model, images, targets) is the absolute gradient of each image's target "
    "score with respect to its pixels, the images' shape: what maaskit.explain(..., 'saliency') gives.",
)
def _saliency(saliency):
    from ..explain import explain

    model = _tiny_model()
    images = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([0, 2, 1])
    same(
        saliency(model, images.clone(), targets),
        explain(model, images, targets, "saliency"),
        "saliency",
        hint="gather each row's target score, sum, autograd.grad with respect to the images, then abs()",
    )


@exercise(
    "09.rank_share",
    "rank_share(batch, rank, world_size) is a rank's share of one global batch: "
    "equal, consecutive slices, rank 0 first, so the shares of all ranks put together are the batch.",
)
def _rank_share(rank_share):
    batch = torch.arange(12)
    for world_size in (1, 2, 3, 4):
        shares = [rank_share(batch, r, world_size) for r in range(world_size)]
        for r, share in enumerate(shares):
            same(
                share,
                batch[r * 12 // world_size : (r + 1) * 12 // world_size],
                f"rank {r} of {world_size}",
                hint="each rank takes len(batch) // world_size rows, starting at rank * that",
            )


@exercise(
    "09.average_gradients",
    "average_gradients(per_rank) takes one list of gradients per rank (each "
    "rank's mean loss over its equal share) and returns the gradients of the whole batch's mean loss: "
    "what DDP's all-reduce leaves on every rank.",
)
def _average_gradients(average_gradients):
    model = _tiny_model()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(8, 1, 4, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
    loss = nn.functional.cross_entropy

    def grads(xs, ys):
        return [t.detach() for t in torch.autograd.grad(loss(model(xs), ys), list(model.parameters()))]

    per_rank = [grads(x[i : i + 4], y[i : i + 4]) for i in (0, 4)]
    got = average_gradients(per_rank)
    if not isinstance(got, (list, tuple)) or len(got) != len(per_rank[0]):
        raise Hint("return one gradient per parameter, as each rank's list has")
    for i, (mine, whole) in enumerate(zip(got, grads(x, y))):
        same(
            mine,
            whole,
            f"gradient {i}",
            hint="each rank's loss is already a mean: sum over the ranks, then divide by their number",
        )
