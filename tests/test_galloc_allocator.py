"""ggml-alloc's dynamic allocator (galloc.DynAllocator) against a plain transcription of ggml-alloc.c's
``ggml_dyn_tallocr_alloc`` / ``_free_tensor`` (one chunk): the same offsets, free blocks (in the same list
order) and high-water mark after every call, over random sequences of allocations and frees, tensors of
no bytes among them (issue 21: the faster allocator)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from ggufx.analysis.memory.graph.galloc import DynAllocator


class _Reference:
    """ggml_dyn_tallocr with one chunk, written as the C reads: best fit over the free blocks but the last
    (ties to the later block), else the last; a free merges with the block before, else after, else inserts."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]
        self.max_size = 0

    def alloc(self, size: int) -> int:
        a = self.alignment
        size = -(-size // a) * a
        blocks = self.blocks
        last = len(blocks) - 1
        best, best_size = last, 1 << 63
        for i in range(last):
            if size <= blocks[i][1] <= best_size:
                best, best_size = i, blocks[i][1]
        offset = blocks[best][0]
        blocks[best][0] += size
        blocks[best][1] -= size
        if blocks[best][1] == 0:
            del blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        a = self.alignment
        size = -(-size // a) * a
        blocks = self.blocks
        for i, block in enumerate(blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i + 1 < len(blocks) and block[0] + block[1] == blocks[i + 1][0]:
                    block[1] += blocks[i + 1][1]
                    del blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == offset:
                    blocks[i - 1][1] += block[1]
                    del blocks[i]
                return
        pos = 0
        while pos < len(blocks) and blocks[pos][0] < offset:
            pos += 1
        blocks.insert(pos, [offset, size])


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([32, 128]), st.integers(10, 400))
def test_the_allocator_is_ggml_allocs(seed: int, alignment: int, steps: int) -> None:
    rng = random.Random(seed)
    fast, ref = DynAllocator(alignment), _Reference(alignment)
    live: list[tuple[int, int]] = []
    # with tensors of no bytes: their frees insert empty blocks, which later merges can leave out of offset
    # order (PLaMo 2's graph does; recorded in tests/fixtures/llamacpp-logs)
    sizes = [rng.choice([0, 32, 100, 128, 4096, 5000, 65536]) * rng.randint(1, 9) for _ in range(12)]
    for _ in range(steps):
        if live and rng.random() < 0.45:
            offset, size = live.pop(rng.randrange(len(live)))
            if rng.random() < 0.2 and size > alignment:  # an in-place reuse gives back the tail
                keep = -(-rng.randint(1, size - 1) // alignment) * alignment
                if keep < size:
                    fast.free(offset + keep, size - keep)
                    ref.free(offset + keep, size - keep)
                    live.append((offset, keep))
                    continue
            fast.free(offset, size)
            ref.free(offset, size)
        else:
            size = rng.choice(sizes)
            at = fast.alloc(size)
            assert at == ref.alloc(size)
            live.append((at, -(-size // alignment) * alignment))
        assert fast.blocks == ref.blocks and fast.max_size == ref.max_size
