"""The block replay's allocator (galloc ``_Blocks.replay``, which writes ``DynAllocator.alloc`` and ``.free`` out
for speed) against the allocator itself: a block's allocations, frees and in-place reuses replayed for the blocks a
shortened graph leaves out give the same offsets, the same free blocks (in the same list order) and the same
high-water mark as ``DynAllocator.alloc`` / ``.free`` called for those events one by one, after every event of a
block and after several blocks; over random blocks on two buffer types (CUDA's and the host's alignment), with
tensors of no bytes and in-place reuses that give back a tail (issue 21)."""

from __future__ import annotations

import copy
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ggufx.analysis.memory.graph.galloc import DynAllocator, _Blocks
from ggufx.analysis.memory.graph.ggml import _T

BUFTS = {"CUDA0": 128, "CPU": 32}
ONE, RESUME = 2, 3  # blocks of one layer: block -2 at position 0, -1 at 1, the last kept (0) at 2


def _program(rng: random.Random) -> tuple[dict[int, tuple[str, int]], set[int], list[tuple[object, ...]]]:
    """One block's events on its slots (each slot: a buffer type and a size): ("a", slot), ("f", block, slot),
    ("i", slot, block, owner's slot), block 0 the block's own, -1 the one before. Every block frees the slots the
    block before left alive (``carry``) and leaves its own ``carry`` alive."""
    m = rng.randint(2, 14)
    slots = {d: (rng.choice(list(BUFTS)), rng.choice([0, 0, 32, 100, 128, 256, 4096, 5000]) * rng.randint(1, 6))
             for d in range(m)}  # fmt: skip
    carry = {d for d in range(m) if rng.random() < 0.3}
    prev_live = sorted(carry)
    own_live: list[int] = []  # allocated, not carried, not yet freed
    prog: list[tuple[object, ...]] = []

    def free_some(p: float) -> None:
        while (prev_live or own_live) and rng.random() < p:
            pool = [(-1, d) for d in prev_live] + [(0, d) for d in own_live]
            b, d = pool[rng.randrange(len(pool))]
            (prev_live if b == -1 else own_live).remove(d)
            prog.append(("f", b, d))

    for d in range(m):
        free_some(0.4)
        buft, size = slots[d]
        align = BUFTS[buft]
        owners = [(-1, o) for o in prev_live] + [(0, o) for o in own_live]
        owners = [
            (b, o)
            for b, o in owners
            if slots[o][0] == buft and -(-slots[o][1] // align) * align >= -(-size // align) * align
        ]
        if owners and rng.random() < 0.35:  # in place: the owner's offset, its tail given back
            b, o = owners[rng.randrange(len(owners))]
            (prev_live if b == -1 else own_live).remove(o)
            prog.append(("i", d, b, o))
        else:
            prog.append(("a", d))
        if d not in carry:
            own_live.append(d)
    free_some(1.0)
    return slots, carry, prog


class _Ref:
    """The events of blocks run through ``DynAllocator`` itself (the tensors of each block by slot)."""

    def __init__(self, slots: dict[int, tuple[str, int]]) -> None:
        self.slots = slots
        self.allocs = {b: DynAllocator(a) for b, a in BUFTS.items()}
        self.offsets: dict[int, dict[int, int]] = {}  # block -> slot -> offset

    def aligned(self, d: int) -> int:
        buft, size = self.slots[d]
        return self.allocs[buft].align(size)

    def step(self, k: int, ev: tuple[object, ...]) -> None:
        if ev[0] == "a":
            d = int(ev[1])  # type: ignore[call-overload]
            buft, size = self.slots[d]
            self.offsets.setdefault(k, {})[d] = self.allocs[buft].alloc(size)
        elif ev[0] == "f":
            b, d = int(ev[1]), int(ev[2])  # type: ignore[call-overload]
            buft, size = self.slots[d]
            self.allocs[buft].free(self.offsets[k + b].pop(d), size)
        else:
            d, b, o = int(ev[1]), int(ev[2]), int(ev[3])  # type: ignore[call-overload]
            off = self.offsets[k + b].pop(o)
            self.offsets.setdefault(k, {})[d] = off
            ps, ns = self.aligned(o), self.aligned(d)
            if ps > ns:
                self.allocs[self.slots[d][0]].free(off + ns, ps - ns)

    def state(self) -> list[tuple[str, list[list[int]], int]]:
        return [(b, copy.deepcopy(a.blocks), a.max_size) for b, a in self.allocs.items()]


def _setup(rng: random.Random) -> tuple[_Ref, set[int], list[tuple[object, ...]], list[tuple[object, ...]]]:
    """The blocks kept (-2 alive where it is carried, -1 and 0 run) and the events of block 0 as
    ``galloc._reserve`` logs them (its own tensors, those of block -1 it frees or reuses)."""
    slots, carry, prog = _program(rng)
    ref = _Ref(slots)
    for d in sorted(carry):  # what block -2 leaves alive
        buft, size = slots[d]
        ref.offsets.setdefault(-2, {})[d] = ref.allocs[buft].alloc(size)
    for ev in prog:
        ref.step(-1, ev)
    tensors = {
        (k, d): _T(f"t{k}.{d}", "NONE", "F32", (1, 1, 1, 1), (4, 4, 4, 4), pos=ONE + k, seq=d)
        for k in (-1, 0)
        for d in slots
    }
    log: list[tuple[object, ...]] = []
    for ev in prog:
        if ev[0] == "a":
            d = int(ev[1])  # type: ignore[call-overload]
            log.append(("a", tensors[(0, d)], slots[d][0], slots[d][1]))
        elif ev[0] == "f":
            b, d = int(ev[1]), int(ev[2])  # type: ignore[call-overload]
            log.append(("f", tensors[(b, d)], slots[d][0], slots[d][1]))
        else:
            d, b, o = int(ev[1]), int(ev[2]), int(ev[3])  # type: ignore[call-overload]
            log.append(("i", tensors[(0, d)], tensors[(b, o)], slots[d][0], ref.aligned(o), ref.aligned(d)))
        ref.step(0, ev)
    return ref, carry, prog, log


def _replay(
    ref: _Ref, carry: set[int], log: list[tuple[object, ...]], out: int, n: int | None = None
) -> tuple[bool, dict[str, DynAllocator], dict[_T, tuple[str, int]]]:
    """``_Blocks.replay`` of ``log`` (its first ``n`` events) for ``out`` blocks, on copies of the allocators
    after block 0, whose carried tensors are alive."""
    allocs = copy.deepcopy(ref.allocs)
    kept = {ev[1] for ev in log if ev[0] in ("a", "i") and isinstance(ev[1], _T) and ev[1].seq in carry}
    where = {t: (ref.slots[int(t.seq)][0], ref.offsets[0][int(t.seq)]) for t in kept}  # type: ignore[call-overload]
    blocks = _Blocks(RESUME, ONE, ONE - 1, 0, out)
    blocks.log = log[:n]
    ok = blocks.replay(allocs, where, set(kept), None)
    return ok, allocs, where


def _state(allocs: dict[str, DynAllocator]) -> list[tuple[str, list[list[int]], int]]:
    return [(b, a.blocks, a.max_size) for b, a in allocs.items()]


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_the_replay_allocates_as_the_allocator_after_every_event(seed: int) -> None:
    ref, carry, prog, log = _setup(random.Random(seed))
    left = copy.deepcopy(ref)
    for n in range(len(log) + 1):  # one block left out, its first n events replayed
        _, allocs, _ = _replay(ref, carry, log, 1, n)
        assert _state(allocs) == left.state(), f"after event {n} of {log[:n]}"
        if n < len(prog):
            left.step(1, prog[n])


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.integers(1, 6))
def test_the_replay_of_several_blocks_allocates_as_the_allocator(seed: int, out: int) -> None:
    ref, carry, prog, log = _setup(random.Random(seed))
    ok, allocs, where = _replay(ref, carry, log, out)
    assert ok
    for k in range(1, out + 1):
        for ev in prog:
            ref.step(k, ev)
    assert _state(allocs) == ref.state()
    # the tensors of the last block kept now stand for the last block left out: its offsets
    assert {int(t.seq): off for t, (_, off) in where.items()} == ref.offsets[out]  # type: ignore[call-overload]
    assert set(ref.offsets[out]) == carry
