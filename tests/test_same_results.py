"""tools/same_results.py: a refactor's results against the last run's, timings left out."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

from same_results import differences, untimed  # noqa: E402


def test_timings_are_left_out_and_every_other_change_is_named():
    before = {"backends": [{"backend": "a", "top1": 0.9, "p50_ms": 1.0, "throughput": 10.0}], "chosen": "a"}
    slower = {"backends": [{"backend": "a", "top1": 0.9, "p50_ms": 2.0, "throughput": 5.0}], "chosen": "a"}
    assert differences(untimed(before), untimed(slower)) == []
    other = {"backends": [{"backend": "a", "top1": 0.8, "p50_ms": 1.0, "throughput": 10.0}], "chosen": "b"}
    assert differences(untimed(before), untimed(other)) == ["/backends[0]/top1: 0.9 -> 0.8", "/chosen: a -> b"]
    assert differences({"rows": [1, 2]}, {"rows": [1]}) == ["/rows: [1, 2] -> [1]"]
