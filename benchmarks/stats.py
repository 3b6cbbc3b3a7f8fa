"""Statistics the network benchmarks share, so their rows are computed alike."""


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100) by nearest rank; NaN when there are no values."""
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))] if s else float("nan")
