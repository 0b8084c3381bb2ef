"""Linear layers laid out once for the CPU's matrix kernels, for serving.

A decode step multiplies a few rows by every weight of the model. PyTorch's default CPU product
(``F.linear``) repacks each weight into its kernel's blocked layout on every call, which at a few
rows costs as much as the product itself. oneDNN, the library behind PyTorch's ``mkldnn`` ops (and
vLLM's CPU kernels), can pack a weight once (``_reorder_linear_weight``) and then run the product on
the packed copy (``_linear_pointwise``). Measured on this project's 2-core machine (one thread,
SmolLM2-135M's 30 layers and its head): 1.3x faster at 1 row and 1.6-2x at 2-16 rows in float32,
and in bfloat16 the packed product is the faster of all, where PyTorch's own bfloat16 product is
slower than its float32 (``benchmarks/linear_kernels.py`` measures each kind side by side).

Where oneDNN is missing, weights are stored transposed instead (column-major, the same values):
PyTorch's product then reads them without repacking (1.5x at 4 rows on the same machine).
A decode step's product of a few rows is a read of the weight, and oneDNN's read it at about 12 GB/s
where ``tensor.sum()`` reads 20 on the same cores: so a float32 weight is also kept laid out in
blocks of 16 columns (:func:`lay_out`), which maaskit's own C++ product (``row_products.cpp``, built by
:mod:`.kernels`) streams at the memory's speed, for products of up to :data:`ROW_PRODUCT_ROWS`
rows (benchmarks/linear_kernels.py; benchmarks/FIGURES.md, "a few rows"). The price is a second copy
of each float32 product's weight.

Training never sees any of this: only a server's own copy of a model is packed. A compiled step
calls the same products, each as one opaque operation (lm/runtime/backend/compiled.py).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels

__all__ = ["FUSED_NAMES", "ROW_PRODUCT_ROWS", "Fused", "FusedPart", "PackedLinear", "can_pack", "lay_out",
           "pack_for_cpu", "pack_from"]  # fmt: skip

# oneDNN's call costs more than PyTorch's: worth it for weights that take longer than that to read, a
# loss on a small model's (notebook 07's GPT). benchmarks/linear_kernels.py measures where the two cross
# (figures: benchmarks/FIGURES.md, "packing").
PACK_FROM = 2**18  # elements of a weight
# on some CPUs oneDNN's product at 1 or 2 rows reads the weight more slowly than at 4, so that padding a
# product of fewer rows to this many costs nothing; on others padding is the slower: pack_for_cpu measures
# which, on the machine at hand (benchmarks/FIGURES.md, "packing")
MIN_ROWS = 4
# products of up to this many rows run maaskit's row kernel, where it is built: faster than oneDNN's at 1-16
# rows on this project's machine, at 1 thread and at 2 (benchmarks/linear_kernels.py)
ROW_PRODUCT_ROWS = 16
BLOCK = 16  # columns of a block of row_products.cpp's layout


def lay_out(weight: torch.Tensor) -> torch.Tensor:
    """A float32 weight (out x in) as ``row_products.cpp`` reads it: blocks of :data:`BLOCK` output columns,
    each in features x columns (blocks x in x BLOCK), the last block zero-filled."""
    out, features = weight.shape
    blocks = -(-out // BLOCK)
    padded = torch.zeros(blocks * BLOCK, features, dtype=weight.dtype, device=weight.device)
    padded[:out] = weight
    return padded.view(blocks, BLOCK, features).transpose(1, 2).contiguous()


def pack_from(dtype: torch.dtype) -> int:
    """Elements from which a weight of ``dtype`` is packed: a quarter of :data:`PACK_FROM` in
    bfloat16, whose PyTorch product is slower than oneDNN's already at 384 x 384, though not at
    128 x 128 (benchmarks/linear_kernels.py; benchmarks/FIGURES.md, "packing")."""
    return PACK_FROM // 4 if dtype == torch.bfloat16 else PACK_FROM


def can_pack(dtype: torch.dtype) -> bool:
    """Whether this PyTorch build and CPU run oneDNN's packed products in ``dtype``."""
    mkldnn = torch.ops.mkldnn
    if not (torch.backends.mkldnn.is_available() and hasattr(mkldnn, "_reorder_linear_weight")):
        return False
    if dtype == torch.bfloat16:
        return bool(mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


class PackedLinear(nn.Module):
    """``nn.Linear``'s product on a weight oneDNN packed once. Inference only: the packed weight is
    not a parameter (no gradient, not in the state dict); the layer's shape and dtype are kept.
    A float32 layer also keeps its weight in column blocks (:attr:`blocked`, :func:`lay_out`), for products
    of up to :data:`ROW_PRODUCT_ROWS` rows once maaskit's kernels are loaded. A compiled step calls the same
    products, looked up by number in C++ (lm/runtime/backend/compiled.py, packed_linear.cpp)."""

    blocked: torch.Tensor | None

    def __init__(self, linear: nn.Linear, rows: int):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        self.dtype = weight.dtype
        # ``rows``: the batch oneDNN lays the weight out for (any number still works, but a layout for
        # 1 row runs 4 rows at about half speed)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, max(rows, MIN_ROWS))
        # a buffer, not saved with the model; none where the row kernel cannot be built (no C++ compiler)
        blocks = weight.dtype == torch.float32 and (kernels.loaded() or kernels.compiler() is not None)
        self.register_buffer("blocked", lay_out(weight) if blocks else None, persistent=False)
        self.bias = None if linear.bias is None else linear.bias.detach().clone()
        self.min_rows = 1  # a product of fewer rows is padded to this many (pack_for_cpu measures which is faster)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.product(x)

    def product(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        if self.blocked is not None and flat.shape[0] <= ROW_PRODUCT_ROWS and kernels.loaded():
            return torch.ops.maaskit_cpu.row_product(x, self.blocked, self.bias, self.out_features)
        return self.onednn(flat).view(*x.shape[:-1], self.out_features)

    def onednn(self, flat: torch.Tensor) -> torch.Tensor:
        """oneDNN's product of ``flat`` (rows x in features), padded to :attr:`min_rows` rows."""
        rows = flat.shape[0]
        if rows < self.min_rows:
            flat = F.pad(flat, (0, 0, 0, self.min_rows - rows))
        return torch.ops.mkldnn._linear_pointwise(flat, self.packed, self.bias, "none", [], "")[:rows]

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, dtype={self.dtype}, packed"


def _padding_pays(layer: PackedLinear, rounds: int = 7) -> bool:
    """Whether oneDNN's product of one row runs faster padded to :data:`MIN_ROWS` rows, on this
    machine, on the model's largest packed weight (medians of interleaved rounds; a few milliseconds)."""
    x = torch.randn(1, layer.in_features, dtype=layer.dtype)
    times: dict[int, list[float]] = {1: [], MIN_ROWS: []}
    with torch.inference_mode():
        for _ in range(rounds):
            for rows in times:
                layer.min_rows = rows
                start = time.perf_counter()
                for _ in range(3):
                    layer.onednn(x)
                times[rows].append(time.perf_counter() - start)
    layer.min_rows = 1
    return statistics.median(times[MIN_ROWS]) < statistics.median(times[1])


# sibling products that read the same input, by their (Hugging Face) names: where a module has all of
# a group as plain linear layers, they become one product (:class:`Fused`), whatever the model family
FUSED_NAMES = {"qkv": ("q_proj", "k_proj", "v_proj"), "gate_up": ("gate_proj", "up_proj")}


class Fused(nn.Module):
    """Linear layers that read the same input (a block's q, k and v; its gate and up) as one product:
    one call and one pass over the weights instead of several. Each layer is replaced by a
    :class:`FusedPart`; the first part called with an input runs the product for all of them, and
    each part takes its own share of it (nothing is kept once every part has taken its share)."""

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.sizes = [linear.out_features for linear in linears]
        biased = any(linear.bias is not None for linear in linears)
        self.product = nn.Linear(linears[0].in_features, sum(self.sizes), bias=biased).to(linears[0].weight)
        with torch.no_grad():
            self.product.weight.copy_(torch.cat([linear.weight for linear in linears]))
            if biased:
                self.product.bias.copy_(torch.cat([
                    linear.bias if linear.bias is not None else linear.weight.new_zeros(linear.out_features)
                    for linear in linears
                ]))  # fmt: skip
        self._input: torch.Tensor | None = None
        self._outputs: list[torch.Tensor] = []
        self._taken = 0

    def share(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Part ``part`` of the product of ``x``, run by the first of the siblings to read ``x``."""
        if self._input is not x:
            self._input, self._outputs, self._taken = x, list(self.product(x).split(self.sizes, dim=-1)), 0
        out = self._outputs[part]
        self._taken += 1
        if self._taken == len(self.sizes):
            self._input, self._outputs = None, []
        return out


class FusedPart(nn.Module):
    """One layer of a :class:`Fused` group, in the place of the ``nn.Linear`` it was."""

    def __init__(self, fused: Fused, part: int):
        super().__init__()
        self.part = part
        self.group = [fused]  # in a list: not a child of each part (the siblings' parent holds it once)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.group[0].share(x, self.part)


def _fuse(model: nn.Module) -> None:
    """Each module's groups of :data:`FUSED_NAMES` become one :class:`Fused`, a child named after the group."""
    for module in list(model.modules()):
        for group, names in FUSED_NAMES.items():
            if all(type(getattr(module, name, None)) is nn.Linear for name in names):
                fused = Fused([getattr(module, name) for name in names])
                module.add_module(group, fused)
                for i, name in enumerate(names):
                    setattr(module, name, FusedPart(fused, i))


def pack_for_cpu(model: nn.Module, rows: int = 16) -> int:
    """Replace every large linear layer of a CPU model (:func:`pack_from` elements or more) by a
    :class:`PackedLinear`; store the others' weights column-major. A weight tied to an embedding is
    packed as a copy, so the embedding keeps reading its own. Products that read the same input are
    fused into one first (:class:`Fused`). Whether a product of one row is padded (:data:`MIN_ROWS`)
    is measured here, on this machine. Returns how many layers were packed."""
    _fuse(model)
    packed: list[PackedLinear] = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.weight.device.type == "cpu":
                if child.weight.numel() >= pack_from(child.weight.dtype) and can_pack(child.weight.dtype):
                    packed.append(PackedLinear(child, rows))
                    setattr(parent, name, packed[-1])
                elif child.weight.is_contiguous():
                    child.weight.data = child.weight.data.t().contiguous().t()
    if packed and _padding_pays(max(packed, key=lambda layer: layer.in_features * layer.out_features)):
        for layer in packed:
            layer.min_rows = MIN_ROWS
    return len(packed)
