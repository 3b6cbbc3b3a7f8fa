"""benchmarks.network.round_fit: the per-round and per-change split of CPU per commit."""

import pytest

from benchmarks.network import round_fit


def test_recovers_the_line_it_was_given() -> None:
    rows = [{"batch_mean": b, "server_cpu_ms": 1.7 + 24.0 / b} for b in (1.0, 14.8, 28.9, 60.4)]
    per_round, per_change = round_fit(rows) or (0.0, 0.0)
    assert per_round == pytest.approx(24.0)
    assert per_change == pytest.approx(1.7)


def test_needs_two_batch_sizes() -> None:
    assert round_fit([{"batch_mean": 14.0, "server_cpu_ms": 3.0}]) is None
    same = [{"batch_mean": 14.0, "server_cpu_ms": 3.0}, {"batch_mean": 14.0, "server_cpu_ms": 3.2}]
    assert round_fit(same) is None
    assert round_fit([{"batch_mean": 0.0, "server_cpu_ms": 3.0}]) is None
