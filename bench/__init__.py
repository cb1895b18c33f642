"""Benchmarks of the gateway (not tests): `python -m bench`, see bench/README.md."""
