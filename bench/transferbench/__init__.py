"""The pieces of ``bench/transfer_bench.py``: measuring a command, workloads, the registry, the tools, the report."""
