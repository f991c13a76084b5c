"""Benchmark harness: YAML experiment grids × seeds → parallel, resumable runs → results store → plots/reports.

``bilevel bench CONFIG.yaml --out DIR`` · ``bilevel plot DIR`` · ``bilevel report DIR``
"""

from .config import ConfigError, RunSpec, load, parse
from .runner import SweepSummary, run_sweep

__all__ = ["ConfigError", "RunSpec", "SweepSummary", "load", "parse", "run_sweep"]
