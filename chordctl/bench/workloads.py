"""Key choosers and operation mixes of the YCSB core workloads. Pure."""

from __future__ import annotations

import bisect
import random

# name -> (read share, update share)
WORKLOADS = {"A": (0.5, 0.5), "B": (0.95, 0.05), "C": (1.0, 0.0)}
DISTRIBUTIONS = ("uniform", "zipfian")
ZIPF_THETA = 0.99    # YCSB's default constant


class Zipfian:
    """Items 0..n-1 with P(i) ~ 1/(i+1)^theta, scattered over the key space.

    Built from the cumulative distribution once (O(n)), drawn by bisection;
    like YCSB's ScrambledZipfianGenerator, ranks are scattered with a fixed
    permutation so the hot keys do not all sit on one node's arc.
    """

    def __init__(self, n: int, theta: float = ZIPF_THETA, seed: int = 1):
        if n < 1:
            raise ValueError("zipfian: n must be >= 1")
        cdf = []
        total = 0.0
        for i in range(n):
            total += 1.0 / (i + 1) ** theta
            cdf.append(total)
        self._cdf = [c / total for c in cdf]
        self._perm = list(range(n))
        random.Random(seed).shuffle(self._perm)
        self._rng = random.Random(seed + 1)
        self.n = n

    def __call__(self) -> int:
        i = bisect.bisect_left(self._cdf, self._rng.random())
        return self._perm[min(i, self.n - 1)]


class Uniform:
    def __init__(self, n: int, seed: int = 1):
        self._rng = random.Random(seed)
        self.n = n

    def __call__(self) -> int:
        return self._rng.randrange(self.n)


def chooser(distribution: str, n: int, seed: int = 1):
    if distribution == "uniform":
        return Uniform(n, seed)
    if distribution == "zipfian":
        return Zipfian(n, seed=seed)
    raise ValueError(f"unknown distribution {distribution!r}; expected one of {DISTRIBUTIONS}")


def operations(workload: str, distribution: str, records: int, count: int,
               key_of, value: bytes, seed: int = 1):
    """Yield (op, key, value) for *count* operations of *workload*."""
    read_share, _ = WORKLOADS[workload]
    pick = chooser(distribution, records, seed)
    rng = random.Random(seed + 7)
    for _ in range(count):
        k = key_of(pick())
        if rng.random() < read_share:
            yield ("read", k, None)
        else:
            yield ("update", k, value)
