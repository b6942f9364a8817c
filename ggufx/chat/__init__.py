"""Chat templates: where they come from, rendering them safely, what they speak, what is wrong.

* :mod:`ggufx.chat.sources`  - read a template from a GGUF, a .jinja file or a tokenizer_config.json
* :mod:`ggufx.chat.render`   - render like transformers' ``apply_chat_template``, in a bounded sandbox
* :mod:`ggufx.chat.samples`  - built-in conversations (plain, system, multi-turn, tools, reasoning)
* :mod:`ggufx.chat.dialect`  - template family and tool-call dialect, detected by rendering
* :mod:`ggufx.chat.lint`     - problems: syntax, failing conversations, tokenizer mismatches...
"""
