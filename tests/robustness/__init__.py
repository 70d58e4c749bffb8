"""Fault-injection suite: a history recorder, a linearizability checker, faults and fuzzing."""
