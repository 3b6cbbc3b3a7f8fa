"""benchmarks.network.floor_rows: the commit path's floor beside the "1 in flight" rows."""

from benchmarks.network import floor_rows

FLOOR = {
    "p50_ms": 3.36,
    "p99_ms": 5.29,
    "server_cpu_ms": 4.84,
    "cpu_ms": {"user": 2.39, "validator": 1.54, "sst": 0.91},
}


def test_rows_carry_the_figures_measured() -> None:
    rows = floor_rows(FLOOR, FLOOR | {"p50_ms": 4.24, "p99_ms": 6.67})
    assert len(rows) == 3
    assert "| 3.36 / 5.29 ms |" in rows[0]
    assert "| 4.84 ms (2.39 / 1.54 / 0.91) |" in rows[1]
    assert "durable commit" in rows[2] and "| 4.24 / 6.67 ms |" in rows[2]
    assert all(r.startswith("| ") and r.endswith(" | - |") for r in rows)


def test_no_floor_no_rows() -> None:
    assert floor_rows(None, None) == []
    assert len(floor_rows(FLOOR, None)) == 2  # measured without a database
