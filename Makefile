.PHONY: bench

# B1: etcd put -> first HTTP 200 from the new server, runtime API vs reload (bench/README.md).
bench:
	.venv/bin/python bench/convergence.py $(BENCH_ARGS)
