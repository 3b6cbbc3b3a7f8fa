"""Put on PYTHONPATH of one node process: its wall clock runs BECO_TEST_SKEW_MS ahead."""

import os
import time

_OFFSET_NS = int(os.environ.get("BECO_TEST_SKEW_MS", "0")) * 1_000_000
if _OFFSET_NS:
    _real_time_ns = time.time_ns
    time.time_ns = lambda: _real_time_ns() + _OFFSET_NS
