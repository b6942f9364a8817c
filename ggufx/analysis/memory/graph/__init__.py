"""llama.cpp's compute graphs rebuilt tensor by tensor and allocated as ggml-alloc allocates them."""
