# merkle area: the Merkle log, the SST store and the embedded PostgreSQL.
.PHONY: test-merkle bench-sst-store

test-merkle: venv  ## Merkle unit tests and the SST store on a real PostgreSQL
	$(PY) -m pytest -q tests/unit/merkle tests/integration/sst_store

bench-sst-store: venv  ## SST store commits/s and proof times at 100k leaves (docs/benchmarks-sst-store.md)
	$(PY) -m benchmarks.sst_store --out docs/benchmarks-sst-store.md

BENCH_DEPS += bench-sst-store
