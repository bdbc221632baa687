"""Measurements that print ratios from one run (``python -m bench.run``)."""
