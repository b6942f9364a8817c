"""ggml-alloc's dynamic allocator (``ggml_dyn_tallocr``, ggml/src/ggml-alloc.c), as llama.cpp's graph
allocator uses it to size a compute buffer: the replay both simulations share (the language model's
graph in :mod:`ggufx.analysis.memory.graph.graphsim`, a projector's in :mod:`ggufx.analysis.memory.graph.projector`)."""

from __future__ import annotations

__all__ = ["CUDA_ALIGN", "HOST_ALIGN", "MATRIX_ROW_PADDING", "DynAllocator"]

CUDA_ALIGN = 128  # ggml-cuda.cu: ggml_backend_cuda_buffer_type_get_alignment
HOST_ALIGN = 32  # TENSOR_ALIGNMENT: CPU, CPU_Mapped, CUDA_Host, CPU_REPACK
MATRIX_ROW_PADDING = 512  # ggml-cuda/common.cuh: CUDA pads a quantized row to this many elements


class DynAllocator:
    """``ggml_dyn_tallocr`` with one chunk (ggml-alloc.c:202 alloc, :312 free): free blocks sorted by
    offset; ``max_size`` is the high-water mark, the compute buffer llama.cpp reserves."""

    def __init__(self, alignment: int) -> None:
        self.alignment = alignment
        self.blocks: list[list[int]] = [[0, 1 << 62]]  # [offset, size], sorted by offset
        self.max_size = 0

    def align(self, n: int) -> int:
        return -(-n // self.alignment) * self.alignment

    def alloc(self, size: int) -> int:
        """Best fit among the free blocks but the last, ties to the later block; else the tail."""
        size = self.align(size)
        best, best_size = -1, 1 << 63
        for i, (_, bsize) in enumerate(self.blocks[:-1]):
            if size <= bsize <= best_size:
                best, best_size = i, bsize
        if best == -1:
            best = len(self.blocks) - 1
        block = self.blocks[best]
        offset = block[0]
        block[0] += size
        block[1] -= size
        if block[1] == 0:
            del self.blocks[best]
        self.max_size = max(self.max_size, offset + size)
        return offset

    def free(self, offset: int, size: int) -> None:
        """Merge with an adjacent free block, else insert in offset order."""
        size = self.align(size)
        for i, block in enumerate(self.blocks):
            if block[0] + block[1] == offset:
                block[1] += size
                if i + 1 < len(self.blocks) and block[0] + block[1] == self.blocks[i + 1][0]:
                    block[1] += self.blocks[i + 1][1]
                    del self.blocks[i + 1]
                return
            if offset + size == block[0]:
                block[0] = offset
                block[1] += size
                if i > 0 and self.blocks[i - 1][0] + self.blocks[i - 1][1] == block[0]:
                    self.blocks[i - 1][1] += block[1]
                    del self.blocks[i]
                return
        pos = 0
        while pos < len(self.blocks) and self.blocks[pos][0] < offset:
            pos += 1
        self.blocks.insert(pos, [offset, size])
