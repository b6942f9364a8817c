"""The reader and summary on real GGUF files written by llama.cpp's tools."""

from __future__ import annotations

import json

import ggufx
from ggufx.analysis.summary import summarize
from ggufx.format.reader import parse_header
from ggufx.io.sources import FileSource
from tests.support import CliRun

from .gguf_reference import assert_matches_gguf_reader, gguf_reader


def test_real_files_match_gguf_reader(real_models) -> None:
    for path in real_models.values():
        assert assert_matches_gguf_reader(path) >= 30


def test_smollm2_summary(smollm2_path) -> None:
    ref = gguf_reader(smollm2_path)
    s = ggufx.info(smollm2_path)
    # llama.cpp's own definitions, recomputed from gguf-py's independent tensor table
    params = sum(int(t.n_elements) for t in ref.tensors)
    nbytes = sum(int(t.n_bytes) for t in ref.tensors)
    assert (s.parameters, s.tensor_bytes) == (params, nbytes)
    assert s.parameters == 134_515_008  # llama.cpp prints "model params = 134.52 M"
    assert abs(s.bpw - nbytes * 8 / params) < 1e-12
    assert s.architecture == "llama" and s.file_type_label == "Q4_1" and not s.file_type_guessed
    assert s.tensor_count == 272 and s.context_length == 8192 and s.block_count == 30
    assert s.vocab_size == 49152
    assert s.chat_template.present and s.chat_template.length == 368
    assert {t.type: t.count for t in s.types} == {"Q4_1": 210, "Q8_0": 1, "F32": 61}
    # the file is bigger than its tensors: metadata is not part of BPW
    assert s.file_bytes > s.tensor_bytes
    assert s.bpw < s.file_bytes * 8 / s.parameters


def test_gemma_summary_and_vocabulary(gemma_path) -> None:
    m = ggufx.open(gemma_path)
    s = summarize(m)
    assert s.architecture == "gemma3" and s.file_type_label == "Q4_K_M"
    assert s.parameters == 268_098_176 and s.vocab_size == 262_144 and not s.chat_template.present
    tokens = m.metadata["tokenizer.ggml.tokens"]
    assert len(tokens) == 262_144
    ref = gguf_reader(gemma_path).fields["tokenizer.ggml.tokens"]
    for i in (0, 1, 2, 106, 1000, 131_072, 262_143):
        assert tokens[i] == str(bytes(ref.parts[ref.data[i]]), "utf-8")
    scores = m.metadata["tokenizer.ggml.scores"]
    assert len(scores) == 262_144


def test_gemma_open_costs_a_header_not_a_file(gemma_path) -> None:
    with FileSource(gemma_path) as src:
        h = parse_header(src)
        # the header (262K tokens, scores, types) is ~6 MB of a 253 MB file
        assert h.data_offset < 8 << 20
        assert src.bytes_read <= 2 * h.data_offset + (1 << 20)
        assert src.reads <= 6


def test_cli_info_json_on_real_files(cli: CliRun, real_models) -> None:
    r = cli("info", "--json", str(real_models["smollm2"]), str(real_models["gemma"]))
    assert r.exit_code == 0, r.output
    docs = json.loads(r.output)
    assert [d["architecture"] for d in docs] == ["llama", "gemma3"]
    assert docs[1]["types"]["Q8_0"]["count"] == 10
    assert docs[0]["chat_template"]["present"] is True


def test_cli_meta_template_is_byte_identical(cli: CliRun, smollm2_path) -> None:
    field = gguf_reader(smollm2_path).fields["tokenizer.chat_template"]
    expected = bytes(field.parts[field.data[0]])
    r = cli("meta", str(smollm2_path), "tokenizer.chat_template")
    assert r.exit_code == 0
    assert r.stdout_bytes == expected
