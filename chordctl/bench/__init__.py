"""Benchmarks: YCSB-style workloads against a running ring, and a bare gRPC
echo baseline measured with the same client machinery."""
