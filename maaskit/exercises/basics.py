"""Exercises of notebooks 01-05: the forward pass, backpropagation, optimizers, CNNs, gradients."""

from __future__ import annotations

import torch
from torch import nn

from .checking import Hint, exercise, same


@exercise(
    "01.softmax_rows",
    "softmax_rows(z) turns each row of logits into probabilities: every row sums "
    "to 1, and [[1000., 0., -1000.]] gives [[1., 0., 0.]], not nan.",
)
def _softmax_rows(softmax_rows):
    z = torch.randn(5, 7, generator=torch.Generator().manual_seed(0))
    same(softmax_rows(z), torch.softmax(z, 1), "softmax_rows(z)", hint="exp, then divide by the row's sum")
    big = torch.tensor([[1000.0, 0.0, -1000.0]])
    same(
        softmax_rows(big),
        torch.softmax(big, 1),
        "softmax_rows of large logits",
        hint="subtract each row's max first: softmax(z) = softmax(z - max z), and exp(0) = 1 cannot overflow",
    )


@exercise(
    "01.count_parameters",
    "count_parameters(sizes) is the number of weights and biases of an MLP "
    "with those layer widths: [64, 32, 16, 10] gives 2,778, as maaskit.summary says.",
)
def _count_parameters(count_parameters):
    for sizes in ([64, 32, 16, 10], [784, 10], [3, 5, 5, 2]):
        want = sum(n_in * n_out + n_out for n_in, n_out in zip(sizes[:-1], sizes[1:]))
        same(
            count_parameters(sizes),
            want,
            f"count_parameters({sizes})",
            hint="a layer from n_in to n_out has an n_out x n_in weight matrix and n_out biases",
        )


@exercise(
    "02.linear_backward",
    "linear_backward(X, W, grad_Z) returns (grad_X, grad_W, grad_b) for "
    "Z = X @ W.T + b, given the loss's gradient grad_Z: the same tensors autograd computes.",
)
def _linear_backward(linear_backward):
    g = torch.Generator().manual_seed(0)
    X, W, b = torch.randn(6, 4, generator=g), torch.randn(3, 4, generator=g), torch.randn(3, generator=g)
    grad_Z = torch.randn(6, 3, generator=g)
    leaves = [t.clone().requires_grad_() for t in (X, W, b)]
    (leaves[0] @ leaves[1].T + leaves[2]).backward(grad_Z)
    answer = linear_backward(X, W, grad_Z)
    if not isinstance(answer, tuple) or len(answer) != 3:
        raise Hint("return three tensors: (grad_X, grad_W, grad_b)")
    for got, leaf, name, hint in zip(
        answer, leaves, ("grad_X", "grad_W", "grad_b"), ("grad_Z @ W", "grad_Z.T @ X", "grad_Z summed over the batch")
    ):
        same(got, leaf.grad, name, hint=f"it is {hint}")


@exercise(
    "02.numerical_gradient",
    "numerical_gradient(f, x, eps) estimates the gradient of a scalar "
    "function f at x by central differences, (f(x + eps e_i) - f(x - eps e_i)) / (2 eps) per entry: "
    "within 1e-6 of autograd in float64.",
)
def _numerical_gradient(numerical_gradient):
    def f(v):
        return (v**3).sum() + v.prod()

    x = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    leaf = x.clone().requires_grad_()
    f(leaf).backward()
    got = numerical_gradient(f, x.clone(), 1e-5)
    same(
        got,
        leaf.grad,
        "numerical_gradient(f, x)",
        atol=1e-6,
        hint="nudge one entry at a time, both ways, and divide by 2 * eps",
    )
    same(x, torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64), "x after the call", hint="put each entry back")


def _replay(step, make_optimizer, state, steps=5):
    """Run ``step`` and a PyTorch optimizer side by side on the same gradients."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, generator=g, dtype=torch.float64)
    reference = w.clone().requires_grad_()
    optimizer = make_optimizer([reference])
    for t in range(1, steps + 1):
        grad = torch.randn(4, generator=g, dtype=torch.float64)
        reference.grad = grad.clone()
        optimizer.step()
        w, *state = step(w.clone(), grad, *state, t)
        same(w, reference.detach(), f"the weights after step {t}", atol=1e-9)


@exercise(
    "03.momentum_step",
    "momentum_step(w, grad, velocity) does one step of SGD with momentum, "
    "lr 0.1 and momentum 0.9, as PyTorch writes it (velocity = 0.9 * velocity + grad; w - 0.1 * velocity); "
    "returns (w, velocity); 5 steps equal torch.optim.SGD's.",
)
def _momentum_step(momentum_step):
    def step(w, grad, velocity, t):
        return momentum_step(w, grad, velocity)

    try:
        _replay(step, lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), [torch.zeros(4, dtype=torch.float64)])
    except Hint as hint:
        raise Hint(f"{hint} PyTorch starts velocity at the first gradient: 0.9 * 0 + grad.") from None


@exercise(
    "03.adam_step",
    "adam_step(w, grad, m, v, t) does Adam's step t (from 1) with lr 0.01, "
    "betas (0.9, 0.999), eps 1e-8; returns (w, m, v); 5 steps equal torch.optim.Adam's.",
)
def _adam_step(adam_step):
    zeros = torch.zeros(4, dtype=torch.float64)
    try:
        _replay(adam_step, lambda p: torch.optim.Adam(p, lr=0.01), [zeros, zeros.clone()])
    except Hint as hint:
        raise Hint(f"{hint} Divide m and v by (1 - beta ** t) before the step: the bias correction.") from None


@exercise(
    "04.conv_output_size",
    "conv_output_size(size, kernel, stride, padding) is the width of a "
    "convolution's output: 8 wide with a 3x3 kernel, stride 1, padding 1 stays 8; nn.Conv2d agrees "
    "for every case.",
)
def _conv_output_size(conv_output_size):
    for size, kernel, stride, padding in ((8, 3, 1, 1), (8, 5, 1, 0), (28, 5, 2, 2), (32, 3, 2, 0), (7, 7, 1, 0)):
        conv = nn.Conv2d(1, 1, kernel, stride=stride, padding=padding)
        want = conv(torch.zeros(1, 1, size, size)).shape[-1]
        same(
            conv_output_size(size, kernel, stride, padding),
            want,
            f"conv_output_size({size}, {kernel}, {stride}, {padding})",
            hint="(size + 2 * padding - kernel) // stride + 1",
        )


@exercise(
    "04.accuracy",
    "accuracy(logits, labels) is the fraction of rows whose largest logit is at the label, a float between 0 and 1.",
)
def _accuracy(accuracy):
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 2])
    got = accuracy(logits, labels)
    same(float(got), 0.5, "accuracy on 4 rows with 2 right", hint="(logits.argmax(1) == labels) as floats, averaged")


def _gradients():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(3, 4, generator=g) * 2, torch.randn(4, generator=g)]


@exercise(
    "05.global_norm",
    "global_norm(grads) is the length of all gradients as one vector, "
    "sqrt(sum of every squared entry): what torch.nn.utils.clip_grad_norm_ returns.",
)
def _global_norm(global_norm):
    grads = _gradients()
    params = [nn.Parameter(torch.zeros_like(t)) for t in grads]
    for p, t in zip(params, grads):
        p.grad = t.clone()
    want = nn.utils.clip_grad_norm_(params, float("inf"))
    same(
        torch.as_tensor(global_norm(grads), dtype=torch.float32),
        want,
        "global_norm(grads)",
        hint="one norm over every tensor together, not one per tensor",
    )


@exercise(
    "05.clip_by_norm",
    "clip_by_norm(grads, max_norm) returns the gradients scaled so that their "
    "global norm is at most max_norm (direction kept; small gradients unchanged), as "
    "clip_grad_norm_ does.",
)
def _clip_by_norm(clip_by_norm):
    for max_norm in (1.0, 100.0):
        grads = _gradients()
        params = [nn.Parameter(torch.zeros_like(t)) for t in grads]
        for p, t in zip(params, grads):
            p.grad = t.clone()
        nn.utils.clip_grad_norm_(params, max_norm)
        got = clip_by_norm([t.clone() for t in grads], max_norm)
        if not isinstance(got, (list, tuple)) or len(got) != len(grads):
            raise Hint("return a list with one tensor per gradient")
        for i, (mine, p) in enumerate(zip(got, params)):
            same(
                mine,
                p.grad,
                f"gradient {i} at max_norm={max_norm}",
                hint="scale every tensor by min(1, max_norm / global norm)",
            )
