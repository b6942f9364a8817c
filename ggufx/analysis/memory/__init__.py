"""What llama.cpp allocates for a model, per device, from its header alone.

``hparams`` (the sizes llama.cpp reads), ``placement`` (which device holds each layer and tensor:
``-ngl``, ``-ts``, ``-sm``, ``-ot``), ``buffers`` (every buffer: weights, KV, recurrent state, output,
compute), ``compute`` (the phase model of compute buffers for graphs not rebuilt), ``graph/`` (llama.cpp's
graphs rebuilt and allocated as ggml-alloc does: decoders and projectors), ``estimate`` (the one-GPU
summary), ``fit`` (llama.cpp's ``--fit``), ``llamaargs`` (llama.cpp command lines) and ``llamalog``
(llama.cpp logs, for ``mem --check``).
"""
