"""Chat templates: where they come from, rendering them safely, what they speak, what is wrong.

* :mod:`ggufx.chat.sources`  - read a template from a GGUF, a .jinja file or a tokenizer_config.json
* :mod:`ggufx.chat.render`   - render like transformers' ``apply_chat_template``, in a bounded sandbox
* :mod:`ggufx.chat.samples`  - built-in conversations (plain, system, multi-turn, tools, reasoning)
* :mod:`ggufx.chat.dialects` - the tool-call dialects: one canonical name per family, its aliases
* :mod:`ggufx.chat.dialect`  - template family and tool-call dialect, detected by rendering
* :mod:`ggufx.chat.lint`     - problems: syntax, failing conversations, tokenizer mismatches...
* :mod:`ggufx.chat.llamacpp` - render with llama.cpp's own Jinja engine (not jinja2), split as its
  ``common/jinja/`` is (value, builtins, runtime, parser, driver), with ``caps`` (llama.cpp's
  capability flags and llama-server's inputs) and ``server`` (a running llama-server's
  /apply-template and /props)
"""
