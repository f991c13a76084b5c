"""Datasets for the experiments: MNIST, Fashion-MNIST, KMNIST, digits (images, hyper-cleaning) and
20 Newsgroups (text, per-feature regularisation selection).

    from bilevel.datasets import load_dataset, load_newsgroups
    ds = load_dataset("mnist")                      # Dataset: uint8 images (N, 28, 28), int64 labels
    x = (ds.train_images / ds.pixel_max - ds.mean) / ds.std
    news = load_newsgroups()                        # TextDataset: CSR float64 (11314, 130107) / (7532, 130107)

Where files are looked for: the ``data_dir=`` argument, else ``$BILEVEL_DATA_DIR``, else the per-user cache
``$XDG_CACHE_HOME/bilevel/datasets`` (``~/.cache/bilevel/datasets``); see ``data_dir()``.  Each dataset has
a sub-folder named ``mnist/``, ``fashion_mnist/``, ``kmnist/`` or ``20newsgroups/`` holding the upstream file
names, the layout of the project's offline copy, so ``data_dir=`` can point straight at the root of such a
copy.

Downloads: with ``download=True``, or by default (``download=None``) unless ``BILEVEL_OFFLINE`` is set,
missing files are fetched from the upstream sites in ``MIRRORS`` (tried in order), into a temporary file
that takes its final name only once its sha256 matches.  Every file, downloaded or local, is verified
against the sha256 pinned in ``catalog.FILES`` before use; results are cached in-process per (path,
inode, size, mtime), so repeated loads do not re-hash.  A corrupted, truncated or missing file raises
``DatasetError`` naming the file and saying how to fix it; nothing is ever used unverified.

Formats:
- MNIST, Fashion-MNIST: the four upstream gzip-compressed IDX files (``train-images-idx3-ubyte.gz``,
  ``train-labels-idx1-ubyte.gz``, ``t10k-images-idx3-ubyte.gz``, ``t10k-labels-idx1-ubyte.gz``): a
  big-endian header (magic 0x00000803 for images, 0x00000801 for labels, then each dimension as uint32)
  followed by uint8 data.  60000 train / 10000 test images of 28x28.
- KMNIST: the upstream ``.npz`` archives (single array ``arr_0``) ``kmnist-train-labels.npz``,
  ``kmnist-test-imgs.npz``, ``kmnist-test-labels.npz``; the training images from the upstream IDX file
  ``train-images-idx3-ubyte.gz``.
- digits: scikit-learn's bundled ``load_digits()`` (1797 images of 8x8, values 0-16; nothing to
  download): train = the first 1200 samples, test = the remaining 597.  ``pixel_max`` is 16 and the
  mean/std are computed on the training split.

KMNIST deviation: offline, only the first 7011 of the 60000 official training images exist, in the
non-official ``kmnist-train-imgs-first7011.npz``.  When the full IDX file is absent, that copy is used
(unless ``download=True`` asks for the full one), ``train_labels`` are cut to the first 7011 to match,
and ``Dataset.notes`` says so; ``Dataset.files`` records which file was read.  A disjoint 5000 + 5000
train/validation split is then impossible: ``bilevel.problems.hyperclean`` says which split it uses instead
(its ``info``); report the deviation.

20 Newsgroups (``load_newsgroups``, module ``bilevel.datasets.newsgroups``): J. Rennie's "bydate" split,
11314 train / 7532 test Usenet posts in 20 groups, from ``20newsgroups/20news-bydate.tar.gz``: upstream's
archive (downloaded from figshare, scikit-learn's source, or qwone.com) or the project's offline repack
(other bytes, same documents; 73 documents with non-ASCII bytes may differ from upstream in a few
characters), each pinned by sha256, the repack's documents also checked one by one against its
``MANIFEST.tsv.gz``.  The archive is streamed, never extracted; members with unsafe names (``../x``,
absolute) or links are refused.  Documents are decoded as latin-1; rows are sorted by (group, numeric file
id) within each split, label = index of the group in the sorted group names (``target_names``).  Features
(scikit-learn's CountVectorizer conventions: lowercase, tokens ``(?u)\\b\\w\\w+\\b``, vocabulary of the
training split only, sorted): ``"counts_l2"`` (default) token counts with each document scaled to unit
l2 norm, no idf, giving train (11314, 130107) and test (7532, 130107) with 1787565 and 1107956 non-zeros;
``"tfidf_l2"`` tf-idf (smooth idf from the training split), unit l2 norm.  The features are cached after
the first build (seconds) as one ``.npz`` keyed by the archive's sha256 and the option, beside the archive
when its folder is writable, else in the per-user cache, written atomically and checked by its own sha256
when read (a damaged file is rebuilt); ``notes`` says which archive and cache were used.

Normalisation constants (mean, std of pixel / 255) as in the LancBiO experiments: MNIST (0.1307, 0.3081),
KMNIST (0.1918, 0.3483), Fashion-MNIST (0.5, 0.5) (its true statistic is about (0.2860, 0.3530)).

Licences and citations:
- MNIST: LeCun, Cortes, Burges; usually cited as CC BY-SA 3.0; cite LeCun et al. 1998.
- Fashion-MNIST: MIT, (c) 2017 Zalando SE; cite Xiao, Rasul, Vollgraf 2017.
- Kuzushiji-MNIST: CC BY-SA 4.0.  "KMNIST Dataset" (created by CODH), adapted from "Kuzushiji Dataset"
  (created by NIJL and others), doi:10.20676/00000341; cite Clanuwat et al. 2018.
- digits: UCI ML hand-written digits (CC BY 4.0) as bundled with scikit-learn; cite Alpaydin & Kaynak 1998.
- 20 Newsgroups (bydate, J. Rennie): no explicit licence, long redistributed for research; cite K. Lang,
  "NewsWeeder: Learning to Filter Netnews", ICML 1995.
"""

from __future__ import annotations

from ._base import Dataset, DatasetError, TextDataset
from ._download import clear_verification_cache
from ._load import DATASETS, data_dir, load_dataset
from .catalog import FILES, MIRRORS
from .newsgroups import load_newsgroups

__all__ = ["DATASETS", "Dataset", "DatasetError", "FILES", "MIRRORS", "TextDataset", "clear_verification_cache",
           "data_dir", "load_dataset", "load_newsgroups"]
