import functools
import http.server
import threading
from pathlib import Path

import pytest
import torch

import bilevel

#: the project's offline dataset copies, beside the repository (absent in a fresh clone)
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

#: what the loaders read from each offline copy (KMNIST: the partial training images, see bilevel.datasets)
_DATA_FILES = {
    "mnist": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
              "t10k-labels-idx1-ubyte.gz"),
    "fashion_mnist": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                      "t10k-labels-idx1-ubyte.gz"),
    "kmnist": ("kmnist-train-imgs-first7011.npz", "kmnist-train-labels.npz", "kmnist-test-imgs.npz",
               "kmnist-test-labels.npz"),
    # the project's repack of the bydate archive and its per-document listing
    "20newsgroups": ("20news-bydate.tar.gz", "MANIFEST.tsv.gz"),
}
#: what needs_shared_data() with no names asks for: the image data sets
_DEFAULT_SETS = ("mnist", "fashion_mnist", "kmnist")


@functools.lru_cache(maxsize=None)
def shared_data_missing(*names: str) -> str:
    """'' when every file the loaders need for ``names`` is in SHARED_DATA and matches its pinned sha256,
    else why not.  A folder is not enough: a failed download or a partial copy must skip, not fail."""
    from bilevel.datasets import DatasetError
    from bilevel.datasets._download import verify_file
    from bilevel.datasets.catalog import FILES

    for name in names or _DEFAULT_SETS:
        for filename in _DATA_FILES[name]:
            path = SHARED_DATA / name / filename
            if not path.is_file():
                return f"offline dataset file {path} not present"
            try:
                verify_file(path, FILES[name][filename])
            except DatasetError:
                return f"offline dataset file {path} does not match its pinned sha256"
    return ""


def needs_shared_data(*names: str):
    """Skip unless the offline copies of ``names`` (default: the three image sets) are present and verified."""
    reason = shared_data_missing(*names)
    return pytest.mark.skipif(bool(reason), reason=reason)


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


#: step sizes for the toy lower levels below (they carry no published settings)
TOY_STEPS = {"*": {"lr_x": 0.1, "lr_y": 0.1, "eta": 0.1}}


def toy(kind: str) -> bilevel.BilevelProblem:
    """A lower level that is not strongly convex (linear, indefinite or concave in y) under a well-posed
    upper level: the cases of the curvature tests and the bad-input table."""
    lower = {
        "linear": lambda x, y: (x * y).sum(),
        "indefinite": lambda x, y: y[0] ** 2 - y[1] ** 2 + (x * y).sum(),
        "concave": lambda x, y: -(y ** 2).sum() + (x * y).sum(),
    }[kind]
    x0, y0 = torch.ones(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    return bilevel.BilevelProblem(lambda x, y: ((y - 1.0) ** 2).sum() + (x ** 2).sum(), lower, x0, y0,
                                  name=kind, presets=TOY_STEPS)


# ---------------------------------------------------------------- a loopback HTTP server (download tests)

class _Server:
    """ThreadingHTTPServer on 127.0.0.1 serving one folder; ``url`` is its base URL (ends with /)."""

    def __init__(self, root: Path):
        class Quiet(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                pass

        self.root = root
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                                     functools.partial(Quiet, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    yield srv
    srv.close()
