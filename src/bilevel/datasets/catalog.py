"""What each dataset consists of: file names, pinned checksums, download mirrors, constants, citations.

Checksums: the sha256 values come from the project's offline copies (the checksum list kept with them) and,
for the KMNIST IDX files, from torchvision's published checksum tables; the md5 values are the ones
upstream publishes and are kept for reference only (verification uses sha256).

``MIRRORS`` is a plain module-level dict so that callers (and the tests, with a loopback server) can
redirect downloads; an entry ending in ``/`` is a folder (the URL is ``base + file name``), any other entry
is the full URL of the dataset's one downloadable file (hosts that serve by id, such as figshare).

20 Newsgroups: the sha256 pinned for ``20news-bydate.tar.gz`` is upstream's (scikit-learn's table, for the
file served by figshare and qwone.com); the project's offline copy is a deterministic repack with other
bytes, accepted locally through ``FileSpec.repacks`` and checked document by document against its
``MANIFEST.tsv.gz`` (see ``bilevel.datasets.newsgroups``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FileSpec", "FILES", "MIRRORS", "NORMALISATION", "CITATIONS", "KMNIST_PARTIAL_COUNT",
           "NEWSGROUPS_REPACK_SHA256"]


@dataclass(frozen=True)
class FileSpec:
    """One file: its upstream name, sha256, size in bytes (None where unknown) and upstream md5.

    ``repacks``: sha256 of other copies accepted when found locally (the project's deterministic repack of
    an upstream archive); a download must always match ``sha256``.
    """

    name: str
    sha256: str
    size: int | None = None
    md5: str | None = None
    downloadable: bool = True  # False for files that exist only in the project's offline copy
    repacks: tuple[str, ...] = ()


def _specs(*specs: FileSpec) -> dict[str, FileSpec]:
    return {spec.name: spec for spec in specs}


# The project's offline 20 Newsgroups archive: the same 18846 documents as upstream, repacked
# deterministically (14372810 bytes); its MANIFEST.tsv.gz lists each document's sha256 and size.
NEWSGROUPS_REPACK_SHA256 = "665b4b527d01e15627226d933842b65f62078149ca32105772e0c33ccad34b83"

FILES: dict[str, dict[str, FileSpec]] = {
    "mnist": _specs(
        FileSpec("train-images-idx3-ubyte.gz",
                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609", 9912422,
                 "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        FileSpec("train-labels-idx1-ubyte.gz",
                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c", 28881,
                 "d53e105ee54ea40749a09fcbcd1e9432"),
        FileSpec("t10k-images-idx3-ubyte.gz",
                 "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6", 1648877,
                 "9fb629c4189551a2d022fa330f9573f3"),
        FileSpec("t10k-labels-idx1-ubyte.gz",
                 "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6", 4542,
                 "ec29112dd5afa0611ce80d1b7f02629c"),
    ),
    "fashion_mnist": _specs(
        FileSpec("train-images-idx3-ubyte.gz",
                 "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84", 26421880,
                 "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        FileSpec("train-labels-idx1-ubyte.gz",
                 "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845", 29515,
                 "25c81989df183df01b3e8a0aad5dffbe"),
        FileSpec("t10k-images-idx3-ubyte.gz",
                 "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073", 4422102,
                 "bef4ecab320f06d8554ea6380940ec79"),
        FileSpec("t10k-labels-idx1-ubyte.gz",
                 "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5", 5148,
                 "bb300cfdad3c16e7a12a480ee83cd310"),
    ),
    "kmnist": _specs(
        FileSpec("kmnist-test-imgs.npz",
                 "692d824896bec8f3c357ebf7a0fe904ed67ac632ce953d0b58f7fbef7bb27d87", 3079479,
                 "dace6de62ca8b90843cc45366337d02e"),
        FileSpec("kmnist-test-labels.npz",
                 "660f13a4705431ea2a6391c41ecbe384cd0d932c595a101ec4f3b8989e785046", 5304,
                 "3ae489a79983d0fe386152684e3b5412"),
        FileSpec("kmnist-train-labels.npz",
                 "a325c877035602cb9b9ba54f4194a2a1b5f718026a463db5b5e0cdc124c03720", 29700,
                 "b0e1d240e8afec72b50437fc3bc5908a"),
        # The full training images in MNIST's IDX format (upstream also serves them as a .npz whose
        # checksum is not pinned here, so that one is not used).
        FileSpec("train-images-idx3-ubyte.gz",
                 "51467d22d8cc72929e2a028a0428f2086b092bb31cfb79c69cc0a90ce135fde4", None,
                 "bdb82020997e1d708af4cf47b453dcf7"),
        # Not official: the first 7011 training images, the only ones available offline.
        FileSpec("kmnist-train-imgs-first7011.npz",
                 "6e1faf7a01597609fe2614135c269f18a0bf1632cba9fdc88d6a24d49441ccaf", 2145244,
                 downloadable=False),
        # The other upstream KMNIST IDX files, not read by the loader (the .npz files are used);
        # listed so that a copy of them can be verified too.
        FileSpec("train-labels-idx1-ubyte.gz",
                 "e38f9ebcd0f3ebcdec7fc8eabdcdaef93bb0df8ea12bee65224341c8183d8e17"),
        FileSpec("t10k-images-idx3-ubyte.gz",
                 "edd7a857845ad6bb1d0ba43fe7e794d164fe2dce499a1694695a792adfac43c5"),
        FileSpec("t10k-labels-idx1-ubyte.gz",
                 "20bb9a0ef54c7db3efc55a92eef5582c109615df22683c380526788f98e42a1c"),
    ),
    "20newsgroups": _specs(
        # upstream (J. Rennie's bydate archive, as served by figshare for scikit-learn and by qwone.com)
        FileSpec("20news-bydate.tar.gz",
                 "8f1b2514ca22a5ade8fbb9cfa5727df95fa587f4c87b786e15c759fa66d95610",
                 repacks=(NEWSGROUPS_REPACK_SHA256,)),
        # Not official: the per-document listing (path, sha256, bytes, provenance) of the offline repack.
        FileSpec("MANIFEST.tsv.gz",
                 "4b4aff72a2dce71c5ad8a247ad576b4e91907bc26fd4db1bb32389f7132ae0ef", 849819,
                 downloadable=False),
    ),
}

# Download locations, tried in order.  The ossci S3 copy of MNIST comes first because
# yann.lecun.com has been intermittently unavailable (and refuses some clients).
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion_mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
    "kmnist": ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"],
    # figshare (scikit-learn's source) first, then the author's page (plain http, occasionally down)
    "20newsgroups": ["https://ndownloader.figshare.com/files/5975967", "http://qwone.com/~jason/20Newsgroups/"],
}

# (mean, std) of pixel / pixel_max as used by the LancBiO hyper-cleaning experiments (the reference code's).
# Fashion-MNIST's (0.5, 0.5) is a convention; its true statistic is about (0.2860, 0.3530).
NORMALISATION: dict[str, tuple[float, float]] = {
    "mnist": (0.1307, 0.3081),
    "fashion_mnist": (0.5, 0.5),
    "kmnist": (0.1918, 0.3483),
}

KMNIST_PARTIAL_COUNT = 7011

CITATIONS: dict[str, str] = {
    "mnist": "MNIST: LeCun, Cortes, Burges; usually cited as CC BY-SA 3.0; cite LeCun et al. 1998.",
    "fashion_mnist": "Fashion-MNIST: MIT licence, (c) 2017 Zalando SE; cite Xiao, Rasul, Vollgraf 2017.",
    "kmnist": ("Kuzushiji-MNIST: CC BY-SA 4.0. 'KMNIST Dataset' (created by CODH), adapted from "
               "'Kuzushiji Dataset' (created by NIJL and others), doi:10.20676/00000341; "
               "cite Clanuwat et al. 2018."),
    "20newsgroups": ("20 Newsgroups, 'bydate' split by J. Rennie (train and test separated by posting date, "
                     "duplicates and some headers removed): no explicit licence, long redistributed for research; "
                     "cite K. Lang, NewsWeeder: Learning to Filter Netnews, ICML 1995."),
    "digits": ("UCI ML hand-written digits (Optical Recognition of Handwritten Digits, CC BY 4.0), "
               "as bundled with scikit-learn; cite Alpaydin & Kaynak 1998."),
}
