# The operator: unit tests, integration tests against the real control plane, benchmarks.
.PHONY: test-operator test-operator-unit bench-operator

test-operator-unit: venv  ## operator unit tests (no cluster)
	$(PY) -m pytest -q tests/unit/operator

test-operator: venv controlplane  ## operator unit + integration tests (real control plane, kwok)
	$(PY) -m pytest -q -ra tests/unit/operator tests/operator

bench-operator: venv controlplane  ## operator benchmarks -> docs/benchmarks.md (operator section)
	$(PY) -m benchmarks.operator_bench

BENCH_DEPS += bench-operator
