# The node area: generated protobuf code, the local network, the network benchmark.
PROTO_SRC := $(wildcard proto/beco/v1/*.proto)
PROTO_GEN = $(PY) -m grpc_tools.protoc -Iproto --python_out=$(1) --grpc_python_out=$(1) \
	--mypy_out=$(1) --mypy_grpc_out=$(1) $(PROTO_SRC)

.PHONY: proto proto-check run bench-network bench-grpc-floor bench-memory-1m

proto: venv  ## generate node/beco/v1 from proto/beco/v1/*.proto
	$(call PROTO_GEN,node)
	@touch node/beco/__init__.py node/beco/v1/__init__.py

proto-check: venv  ## fail when node/beco/v1 is stale against proto/
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && mkdir -p $$tmp/beco/v1 && \
	$(call PROTO_GEN,$$tmp) && \
	for f in $$tmp/beco/v1/*; do \
	  cmp -s $$f node/beco/v1/$$(basename $$f) || { echo "stale generated code: node/beco/v1/$$(basename $$f) (run make proto)"; exit 1; }; \
	done; \
	for f in node/beco/v1/*_pb2*; do \
	  [ -e $$tmp/beco/v1/$$(basename $$f) ] || { echo "orphan generated file: $$f (run make proto)"; exit 1; }; \
	done; echo "generated code is up to date"

run: venv  ## start the local network (beco-local up); Ctrl-C stops it
	$(VENV)/bin/beco-local up $(RUN_ARGS)

bench-network: venv  ## network benchmarks -> docs/benchmarks.md (section network)
	$(PY) -m benchmarks.network --before-ref d14de17 \
	  --before-why "main before the throughput work: no batching, Ed25519 through OpenSSL, no read sessions" \
	  $(BENCH_ARGS)

bench-grpc-floor: venv  ## what one grpc.aio message costs here (the floor under bench-network) -> docs/benchmarks.md
	$(PY) -m benchmarks.grpc_floor

bench-memory: venv  ## node RSS vs commits on the local network -> docs/benchmarks-memory.md
	$(PY) -m benchmarks.memory $(BENCH_MEMORY_ARGS)

# Bulk-fills the SST's database (~5 min), then starts the network on it; about 15-20 min
# in all on 2 shared cores, niced. Not part of `make bench`.
bench-memory-1m: venv  ## node RSS with 1,000,000 users and commits -> docs/benchmarks.md (section memory-1m)
	nice -n 10 $(PY) -m benchmarks.memory_scale $(BENCH_MEMORY_1M_ARGS)

TEST_DEPS += proto-check
BENCH_DEPS += bench-grpc-floor bench-network
