"""The networks the notebooks train: an MLP, LeNet-5 and a small ResNet, built by name; and the
registry an artifact's architecture is rebuilt from (other layers register theirs)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "IMAGE_MODELS",
    "MODELS",
    "MLP",
    "Residual",
    "LeNet5",
    "SmallResNet",
    "build_model",
    "rebuild",
    "register_model",
    "summary",
]

_ACTIVATIONS = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}


def _activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class Residual(nn.Sequential):
    """``x + layers(x)``: the shortcut carries the signal, and the gradient, past the layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


class MLP(nn.Sequential):
    """Flatten, then ``Linear -> activation`` for each hidden width, then a ``Linear`` to the classes.

    ``MLP(784, 10, hidden=(128, 64))`` is the 784-128-64-10 network of the classic tutorials.
    ``batch_norm=True`` puts batch norm before each activation; ``residual=True`` wraps every
    hidden layer after the first whose width does not change in a :class:`Residual` shortcut.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (128, 64),
        activation: str = "relu",
        batch_norm: bool = False,
        residual: bool = False,
    ):
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            block = [nn.Linear(width, h)] + ([nn.BatchNorm1d(h)] if batch_norm else []) + [_activation(activation)]
            layers.extend([Residual(*block)] if residual and i > 0 and h == width else block)
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max-pooling, as modern tutorials write it.

    On 3x32x32 (CIFAR-10) it is exactly the PyTorch tutorial's network (62,006 parameters).
    Inputs smaller than 32 pixels get the classic padding of 2 on the first convolution
    (28x28 MNIST is then laid out as LeNet's original 32x32), and on tiny inputs such as
    8x8 digits the second convolution is padded too so the feature map never vanishes.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, in_size: int = 32, activation: str = "relu"):
        super().__init__()
        pad1 = 2 if in_size < 32 else 0
        size = (in_size + 2 * pad1 - 4) // 2
        pad2 = 2 if size < 10 else 0
        size = (size + 2 * pad2 - 4) // 2
        if size < 1:
            raise ValueError(f"LeNet5 needs images of at least 4 pixels, got {in_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=pad1),
            _activation(activation),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=pad2),
            _activation(activation),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(16 * size * size, 120),
            _activation(activation),
            nn.Linear(120, 84),
            _activation(activation),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm, added to a (projected) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
            nn.BatchNorm2d(c_out),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class SmallResNet(nn.Module):
    """A CIFAR-style ResNet (He et al., 2016): a 3x3 stem, then stages of basic blocks that
    halve the resolution and double the width, global average pooling and one linear layer."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 16, blocks: Sequence[int] = (1, 1, 1)):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        c = width
        for stage, n in enumerate(blocks):
            c_out = width * 2**stage
            for i in range(n):
                layers.append(_BasicBlock(c, c_out, stride=2 if stage > 0 and i == 0 else 1))
                c = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _mlp(in_shape, num_classes, **kw):
    c, h, w = in_shape
    return MLP(c * h * w, num_classes, **kw)


def _lenet(in_shape, num_classes, **kw):
    c, h, w = in_shape
    if h != w:
        raise ValueError(f"LeNet5 expects square images, got {h}x{w}")
    return LeNet5(c, num_classes, in_size=h, **kw)


def _resnet(in_shape, num_classes, **kw):
    return SmallResNet(in_shape[0], num_classes, **kw)


IMAGE_MODELS = {"mlp": _mlp, "lenet": _lenet, "resnet": _resnet}  # what `maaskit train` and the TrainingDashboard offer


def build_model(name: str, in_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build ``mlp``, ``lenet`` or ``resnet`` for images of ``in_shape`` (C, H, W) and ``num_classes``.

    The arguments are kept on the model as ``model.maaskit_config`` so that the same
    network can be rebuilt later from a manifest, without pickling code. (A language model is
    ``maaskit.lm.GPT(GPTConfig(...))``, which records its own config.)
    """
    if name not in IMAGE_MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(IMAGE_MODELS)}")
    in_shape = tuple(int(d) for d in in_shape)
    if len(in_shape) != 3:
        raise ValueError(f"in_shape must be (channels, height, width), got {in_shape}")
    model = IMAGE_MODELS[name](in_shape, int(num_classes), **kwargs)
    model.maaskit_config = {"name": name, "in_shape": list(in_shape), "num_classes": int(num_classes), "kwargs": kwargs}
    return model


# architecture name -> a function of its ``maaskit_config`` (a manifest's ``architecture``) that
# builds it with fresh weights. Other layers add theirs: ``maaskit.lm.models.gpt`` registers "gpt".
MODELS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {
    name: (lambda config: build_model(config["name"], config["in_shape"], config["num_classes"], **config["kwargs"]))
    for name in IMAGE_MODELS
}


def register_model(name: str, rebuild: Callable[[dict[str, Any]], nn.Module]) -> None:
    """Let artifacts of architecture ``name`` be rebuilt: ``rebuild(maaskit_config)`` -> a fresh model."""
    MODELS[name] = rebuild


def rebuild(config: dict[str, Any]) -> nn.Module:
    """The network a ``maaskit_config`` (a manifest's ``architecture``) describes, with fresh weights.

    An architecture of a higher layer registers itself when its module is imported (``maaskit.lm``
    registers "gpt"); the core never imports a module a manifest names, nor any layer above its own."""
    name, module = config.get("name"), config.get("module")
    if name not in MODELS:
        hint = f" (it registers when {module} is imported)" if isinstance(module, str) else ""
        raise ValueError(f"unknown architecture {name!r}{hint}; this maaskit knows {', '.join(MODELS)}")
    return MODELS[name](config)


def summary(model: nn.Module, in_shape: Sequence[int], *, device: str | torch.device | None = None) -> str:
    """A table of the model's layers with their output shapes and parameter counts.

    Runs one forward pass on a zero batch of size 1 and records each leaf module's output.
    """
    device = device or next(model.parameters()).device
    rows: list[tuple[str, str, str, int]] = []  # name, type, output shape, own parameters

    def record(name):
        def hook(module, _inputs, output):
            shape = tuple(output.shape) if isinstance(output, torch.Tensor) else "?"
            own = sum(p.numel() for p in module.parameters(recurse=False))
            rows.append((name, type(module).__name__, str(shape), own))

        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n and not list(m.children())]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *in_shape, device=device))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    header = ("layer", "type", "output shape")
    widths = [max(len(header[i]), *(len(str(r[i])) for r in rows)) for i in range(3)]
    line = lambda a, b, c, d: f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d:>10}"  # noqa: E731
    out = [line("layer", "type", "output shape", "params"), "-" * (sum(widths) + 16)]
    out += [line(n, t, s, f"{p:,}") for n, t, s, p in rows]
    out += ["-" * (sum(widths) + 16), f"total parameters: {total:,} (trainable: {trainable:,})"]
    return "\n".join(out)
