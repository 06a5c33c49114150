"""The same network, data and optimizer in PyTorch: eager on the CPU or GPU,
and on the GPU with its whole training step captured in a CUDA graph. In
precision "tf32" PyTorch may use TF32 for its CUDA matmuls; in "bf16" the
forward pass and loss run under autocast to bfloat16 (fp32 master weights)."""

from __future__ import annotations

import numpy as np

from .workloads import synthetic_data


def torch_version():
    try:
        import torch
    except Exception:
        return None
    return torch.__version__


def _cuda_matmul_tf32(torch, on):
    """Let PyTorch's fp32 CUDA matmuls use TF32 or not: through
    ``fp32_precision`` where PyTorch has it (``allow_tf32`` is deprecated after 2.9)."""
    matmul = torch.backends.cuda.matmul
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision = "tf32" if on else "ieee"
    else:
        matmul.allow_tf32 = on


class TorchWorkload:
    def __init__(self, config, device, params, n_batches, graph=False, precision="float32"):
        import torch
        from torch import nn

        self.torch = torch
        self.config = config
        self.precision = precision
        if device == "cuda":
            _cuda_matmul_tf32(torch, precision == "tf32")
        acts = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU,
                "leaky_relu": lambda: nn.LeakyReLU(0.01), "identity": nn.Identity}
        layers = []
        for i, (W, b) in enumerate(params):
            lin = nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < len(params) - 1:
                layers.append(acts[config.activation]())
        self.net = nn.Sequential(*layers).to(device)
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3, capturable=graph)
        X, Y = synthetic_data(config, config.batch * n_batches)
        self.X = torch.from_numpy(X).to(device)
        self.Y = torch.from_numpy(Y).to(device)
        if config.loss == "cross_entropy":
            self.Y = self.Y.long()
        m = config.batch
        self.xb, self.yb = self.X[:m].clone(), self.Y[:m].clone()
        self.device = device
        self.graph = None
        if graph:
            self._capture()

    def _loss(self, z, y):
        F = self.torch.nn.functional
        m = z.shape[0]
        if self.config.loss == "cross_entropy":
            return F.cross_entropy(z, y)
        if self.config.loss == "binary_cross_entropy":
            return F.binary_cross_entropy_with_logits(z, y, reduction="sum") / m
        out = self.torch.sigmoid(z) if self.config.output == "sigmoid" else z
        return 0.5 * ((out - y) ** 2).sum() / m

    def _autocast(self):
        import contextlib

        if self.precision != "bf16":
            return contextlib.nullcontext()
        return self.torch.autocast(device_type=self.device, dtype=self.torch.bfloat16)

    def _step(self, xb, yb):
        self.opt.zero_grad(set_to_none=True)
        with self._autocast():
            loss = self._loss(self.net(xb), yb)
        loss.backward()
        self.opt.step()
        return loss

    def _capture(self):
        """torch.cuda.graph over forward, loss, backward and Adam: warm up on a
        side stream as PyTorch's documentation prescribes, then capture."""
        torch = self.torch
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self.xb, self.yb)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            with self._autocast():
                loss = self._loss(self.net(self.xb), self.yb)
            loss.backward()
            self.opt.step()

    def forward(self):
        with self.torch.no_grad(), self._autocast():
            self.net(self.xb)

    def step(self):
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step(self.xb, self.yb)

    def epoch(self):
        torch = self.torch
        n, m = self.X.shape[0], self.config.batch
        order = torch.randperm(n, device=self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for s in range(0, n, m):
            idx = order[s:s + m]
            loss = self._step(self.X[idx], self.Y[idx])
            total += loss.detach() * idx.shape[0]
        return float(total) / n


class TorchGemmFloor:
    """PyTorch's GEMMs of a forward pass or training step alone, the same shapes
    in the same order as :class:`gpubp.bench.workloads.GemmFloor`: the part of
    PyTorch's step that no framework overhead is in. Beside ``floor-numpy`` or
    ``floor-cupy`` it tells the GEMM library's share of a gap from the rest's.
    In "tf32" PyTorch's CUDA matmuls may use TF32; in "bf16" the operands are
    bfloat16 (bf16 outputs: what autocast's products do)."""

    def __init__(self, config, device, precision="float32"):
        import torch

        self.config = config
        if device == "cuda":
            _cuda_matmul_tf32(torch, precision == "tf32")
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        gen = torch.Generator().manual_seed(1)

        def rand(*shape):
            return torch.randn(shape, generator=gen).to(device=device, dtype=dtype)

        m, sizes = config.batch, config.layers
        self.acts = [rand(m, n) for n in sizes]
        self.deltas = [None] + [rand(m, n) for n in sizes[1:]]
        self.errs = [rand(m, n) for n in sizes]
        self.W = [rand(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.dW = [self.W[i].new_empty(w.shape) for i, w in enumerate(self.W)]
        self.mm = torch.mm

    def forward(self):
        for i, w in enumerate(self.W):
            self.mm(self.acts[i], w, out=self.acts[i + 1])

    def step(self):
        mm = self.mm
        for kind, i, _ in self.config.gemm_shapes():
            if kind == "forward":
                mm(self.acts[i], self.W[i], out=self.acts[i + 1])
            elif kind == "dW":
                mm(self.acts[i].t(), self.deltas[i + 1], out=self.dW[i])
            else:
                mm(self.deltas[i + 1], self.W[i].t(), out=self.errs[i])
