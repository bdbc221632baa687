"""Fault-injection suite: real processes killed, cut off and restarted (marker ``faults``)."""
