import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    # one thread: on a 2-core machine shared with other work, torch's thread pool can make tiny
    # elementwise ops thousands of times slower; tests measure correctness, not throughput
    torch.set_num_threads(1)
    yield


def spd_matrix(n: int, condition: float, seed: int = 0) -> torch.Tensor:
    """Random SPD matrix with eigenvalues linspace(1, condition, n) (float64)."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    return q @ torch.diag(torch.linspace(1.0, condition, n, dtype=torch.float64)) @ q.T
