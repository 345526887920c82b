"""PyTorch models and fixed inputs of the peer benchmarks (mirrors of jmeta's models).

* :class:`Conv4Body`: jmeta's ``Conv4`` (``jmeta/models/_conv4.py``) without its head: 4 x
  [3x3 conv, BatchNorm with the batch's statistics, ReLU, then 2x2 max-pool (floor) unless
  ``strided``]; with ``strided`` the convolutions have stride 2 instead of the pooling. SAME
  padding is ``padding=1`` here; for the stride-2 convolutions of even-sized inputs XLA's SAME
  pads (0, 1) where torch pads (1, 1): the output shapes and the FLOPs are the same, the
  sampling grid is shifted by one pixel (immaterial for speed).
  torchfunc's second-order MAML uses :class:`CompositeBatchNorm2d` instead of the native
  kernel (see there why).
* :class:`MLPBody`: the sinusoid MLP's hidden layers (1 -> 40 -> 40, ReLU).
* :class:`Net`: ``head(body(x))``; the head is a ``Linear`` (``ways`` outputs, or 1 for the
  sinusoid). ANIL adapts ``net.head`` only; ProtoNets uses ``net.body`` (the embedding).

Initialisation is PyTorch's default (jmeta's is flax's): losses are not comparable to jmeta's
numbers, only to the other peers' (all peers build the model after ``torch.manual_seed(seed)``).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CompositeBatchNorm2d(nn.Module):
    """``BatchNorm2d(track_running_stats=False)`` in training mode, written in basic tensor ops.

    Same parameters (``weight`` = 1, ``bias`` = 0), same outputs. Used where ``torch.func``'s
    batching rule for the native batch-norm backward is wrong: second-order gradients under
    ``vmap`` (pytorch/functorch#534). With the native kernel, torchfunc's MAML meta-gradient on
    Conv-4 is off by ~0.2% (relative, in float64 too) from autograd's (learn2learn, higher) and
    from ``torch.func`` without ``vmap``; with this module all agree to rounding.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((0, 2, 3), keepdim=True)
        centred = x - mean
        var = (centred * centred).mean((0, 2, 3), keepdim=True)  # biased, as BatchNorm's
        return centred * torch.rsqrt(var + self.eps) * self.weight[:, None, None] + \
            self.bias[:, None, None]


class Conv4Body(nn.Module):
    def __init__(self, in_channels: int, filters: int, strided: bool, image_size: int,
                 composite_bn: bool = False):
        super().__init__()
        layers: list[nn.Module] = []
        size = image_size
        for i in range(4):
            layers += [
                nn.Conv2d(in_channels if i == 0 else filters, filters, 3, stride=2 if strided else 1,
                          padding=1),
                # always the batch's statistics
                CompositeBatchNorm2d(filters) if composite_bn
                else nn.BatchNorm2d(filters, track_running_stats=False),
                nn.ReLU(),
            ]
            if strided:
                size = -(-size // 2)
            else:
                layers.append(nn.MaxPool2d(2))  # floor, like jmeta's max_pool_2x2
                size //= 2
        self.layers = nn.Sequential(*layers)
        self.out_features = filters * size * size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x).flatten(1)


class MLPBody(nn.Module):
    def __init__(self, in_features: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in zip([in_features, *hidden[:-1]], hidden):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.layers = nn.Sequential(*layers)
        self.out_features = hidden[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class Net(nn.Module):
    def __init__(self, body: nn.Module, out_features: int | None):
        super().__init__()
        self.body = body
        self.head = nn.Linear(body.out_features, out_features) if out_features else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(x)
        return self.head(x) if self.head is not None else x


def build_model(spec: dict, *, seed: int = 0, embedding: bool = False,
                composite_bn: bool = False) -> Net:
    """The workload's network, built right after ``torch.manual_seed(seed)``.

    ``composite_bn``: Conv-4's BatchNorm as :class:`CompositeBatchNorm2d` (same initial weights).
    """
    torch.manual_seed(seed)
    if spec["model"] == "conv4":
        body = Conv4Body(spec["channels"], spec["filters"], spec["strided"], spec["size"],
                         composite_bn=composite_bn)
        return Net(body, None if embedding else spec["ways"])
    if spec["model"] == "mlp":
        return Net(MLPBody(1, list(spec["hidden"])), None if embedding else 1)
    raise ValueError(f"unknown model {spec['model']!r}")


class Tasks:
    """A fixed meta-batch: ``xs, ys`` (support) and ``xq, yq`` (query) with a leading task axis.

    Images: ``torch.randn`` inputs ``[tasks, ways * n, C, H, W]``, labels ``arange(ways)``
    repeated ``n`` times. Sinusoid: x ~ U(-5, 5), y = A sin(x - phase) with A ~ U(0.1, 5) and
    phase ~ U(0, pi) per task, shapes ``[tasks, n, 1]``. Every task has its own inputs; the same
    tensors are reused at every meta-step (no data pipeline in the measurement). They are drawn
    on the CPU (the same values on every device) and then moved to ``device``.
    """

    def __init__(self, spec: dict, *, seed: int = 1, device: str | torch.device = "cpu"):
        g = torch.Generator().manual_seed(seed)
        tasks, ways, shots, queries = spec["meta_batch"], spec["ways"], spec["shots"], spec["queries"]
        self.classification = spec["model"] != "mlp"
        if self.classification:
            shape = (spec["channels"], spec["size"], spec["size"])

            def make(n):
                x = torch.randn(tasks, ways * n, *shape, generator=g)
                y = torch.arange(ways).repeat(n).expand(tasks, ways * n).contiguous()
                return x, y
        else:
            amp = torch.empty(tasks, 1, 1).uniform_(0.1, 5.0, generator=g)
            phase = torch.empty(tasks, 1, 1).uniform_(0.0, math.pi, generator=g)

            def make(n):
                x = torch.empty(tasks, ways * n, 1).uniform_(-5.0, 5.0, generator=g)
                return x, amp * torch.sin(x - phase)
        self.device = torch.device(device)
        self.xs, self.ys = (t.to(self.device) for t in make(shots))
        self.xq, self.yq = (t.to(self.device) for t in make(queries))
        self.num_tasks = tasks

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy for images, MSE for the sinusoid."""
        if self.classification:
            return nn.functional.cross_entropy(out, y)
        return nn.functional.mse_loss(out, y)
