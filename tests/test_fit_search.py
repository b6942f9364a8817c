"""``fit._largest``: the largest-context search gives a bisection's answer on every falling slack,
in at most about twice a bisection's calls, and far fewer where memory is linear in the context."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from ggufx.analysis.memory.fit import _largest


def _bisection(slack: Callable[[int], int], top: int) -> int:
    lo, hi = 0, top
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if slack(mid) >= 0:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _shapes(rng: random.Random, top: int) -> list[Callable[[int], int]]:
    a, b = rng.randint(-(10**6), 10**9), rng.randint(1, 10**6)
    jump = rng.randint(1, top)
    return [
        lambda k: a - b * k,  # KV cache: linear
        lambda k: int(a - b * k - b * k * k / 50),  # attention scores without flash attention
        lambda k: int(a - b * 40 * math.sqrt(k) - (b * 10 if k > jump else 0)),  # a step (a larger compute buffer)
        lambda k: a,  # independent of the context
    ]


@pytest.mark.parametrize("seed", range(40))
def test_the_answer_is_the_bisections(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(50):
        top = rng.randint(1, 4096)
        for f in _shapes(rng, top):
            calls: list[int] = []

            def counted(k: int, f: Callable[[int], int] = f) -> int:
                assert 1 <= k <= top, k
                calls.append(k)
                return f(k)

            assert _largest(counted, top) == _bisection(f, top)
            assert len(calls) <= 2 * math.ceil(math.log2(top + 1)) + 2


def test_linear_memory_takes_a_handful_of_breakdowns() -> None:
    calls: list[int] = []

    def slack(k: int) -> int:
        calls.append(k)
        return 24 * 2**30 - (17 * 2**30 + k * 256 * 65536)  # 64 KiB of KV per token

    n = _largest(slack, 1024)  # 262,144 tokens in steps of 256
    assert n == 7 * 2**30 // (256 * 65536)
    assert len(calls) <= 5  # a bisection: 11


def test_where_nothing_fits_two_breakdowns_say_so() -> None:
    """A model whose smallest context does not fit (GLM-4.5-Air's 73 GB on a 24 GiB GPU): the top and
    the bottom, where a bisection takes every halving down to 1."""
    calls: list[int] = []

    def slack(k: int) -> int:
        calls.append(k)
        return -(50 * 2**30) - k * 2**20

    assert _largest(slack, 512) == 0 and calls == [512, 1]
    assert _bisection(lambda k: -1, 512) == 0
