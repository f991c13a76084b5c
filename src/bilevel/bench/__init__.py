"""Benchmark harness: YAML experiment grids × seeds → parallel, resumable runs → results store → plots/reports.

``bilevel bench CONFIG.yaml --out DIR`` · ``bilevel plot DIR`` · ``bilevel report DIR``
"""

from .config import ConfigError, Experiment, RunSpec, load, parse
from .runner import BackendError, SpecMismatch, SweepInterrupted, SweepSummary, run_sweep
from .storage import BrokenRun, StoreError

__all__ = ["BackendError", "BrokenRun", "ConfigError", "Experiment", "RunSpec", "SpecMismatch", "StoreError",
           "SweepInterrupted", "SweepSummary", "load", "parse", "run_sweep"]
