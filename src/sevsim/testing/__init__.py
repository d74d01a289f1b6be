"""The test seam: what tests and benchmarks may use to look inside, outside the threat model.

Nothing in sevsim imports it; only tests, benchmarks and the demo do.
"""
