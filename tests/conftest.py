import pytest
import torch


@pytest.fixture(autouse=True)
def _float64_and_quiet():
    # tests compare against independent truth in float64; never rely on the global default dtype
    torch.set_num_threads(2)
    yield


def spd_matrix(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    """Random SPD matrix with eigenvalues linspace(1, condition, n) (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, condition, n, dtype=torch.float64)) @ q.T
