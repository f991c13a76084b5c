"""Refactors keep behaviour bit-identical: every configuration of ``tests/golden/record.py`` reproduces the
recorded history (every column but time, every float to the last bit), status and final x."""

import importlib.util
import json
import warnings
from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parent / "golden"
_spec = importlib.util.spec_from_file_location("golden_record", GOLDEN / "record.py")
record = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record)

#: columns whose meaning was changed on purpose since recording, with the reason
CHANGED: dict[str, str] = {}


def _cases():
    for problem in record.problems():
        data = json.loads((GOLDEN / f"{problem}.json").read_text())
        for config in sorted(data):
            yield pytest.param(problem, config, data[config], id=f"{problem}-{config}")


@pytest.mark.parametrize("problem,config,expected", list(_cases()))
def test_history_is_bit_identical(problem, config, expected):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = record.run(problem, config)
    assert got["status"] == expected["status"]
    assert got["iterations"] == expected["iterations"]
    assert len(got["rows"]) == len(expected["rows"])
    for i, (g, e) in enumerate(zip(got["rows"], expected["rows"])):
        for column, value in e.items():
            if column in CHANGED:
                continue
            assert column in g, f"{config} on {problem}: column {column!r} disappeared"
            assert g[column] == value, f"{config} on {problem}, row {i}, column {column}: {g[column]} != {value}"
    assert got["x"] == expected["x"], f"{config} on {problem}: final x differs"

