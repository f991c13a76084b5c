"""Host read-backs of the Lanczos bookkeeping (issue 12): one per Galerkin step without a restart (α_j, β_{j+1},
‖u‖ and Q_jᵀ r_k read back together), where there were four."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from bilevel.linear_solvers import Lanczos
from conftest import spd_matrix


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.scalar_reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func.overloadpacket) == "aten._local_scalar_dense":  # float(t), int(t), bool(t), t.item()
            self.scalar_reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_one_read_back_per_galerkin_step(dtype, monkeypatch):
    A = spd_matrix(60, 10.0, 0).to(dtype)
    b = torch.randn(60, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    solver = Lanczos(m=10)
    state = solver.init(b)
    for k in range(3):
        _, state, _ = solver.solve(A.__matmul__, b, state, k=k)
    calls = []
    original = torch.Tensor.tolist

    def counted(self):
        calls.append(self.numel())
        return original(self)

    monkeypatch.setattr(torch.Tensor, "tolist", counted)
    with _Ops() as ops:
        _, state, info = solver.solve(A.__matmul__, b, state, k=3)
    assert info.events == () and state.j == 4
    assert ops.scalar_reads == 0
    assert calls == [3 + 4]  # α, β, ‖u‖ and the 4 projections, one read-back


@pytest.mark.parametrize("mode", ["residual", "plain"])
def test_a_restart_adds_one_read_back(mode, monkeypatch):
    """A restart reads ‖r‖ and ‖b‖ together (issue 15: they were two reads): two reads in all at a restart."""
    A = spd_matrix(40, 10.0, 0)
    b = torch.randn(40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    solver = Lanczos(m=3, mode=mode)
    state = solver.init(b)
    first = 3 if mode == "residual" else 0  # residual: the full basis restarts (w = A v̄ ≠ 0); plain: the first call
    for k in range(first):
        _, state, _ = solver.solve(A.__matmul__, b, state, k=k)
    assert solver.restarts_at(state, first)
    reads = []
    original = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append("tolist") or original(self))
    with _Ops() as ops:
        _, state, info = solver.solve(A.__matmul__, b, state, k=first)
    assert "restart" in info.events and info.matvecs == (2 if mode == "residual" else 1)
    assert ops.scalar_reads + len(reads) == 2
