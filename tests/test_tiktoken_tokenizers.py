"""Phi-4-mini's and Phi-4's tokenizers (pipeline/sources/tiktoken_tokenizer.py) against two independent tiktoken
implementations, then through every route's tokenizer: identical ids, and decoding gives the text back.

The references: OpenAI's `tiktoken` (Rust, its own split pattern; it also checks the rank file's sha256 against its
own pin) and `gpt-tokenizer` (JavaScript, run with node: its own implementation and its own copy of the ranks). The
routes: Hugging Face (transformers), OpenVINO's tokenizer IRs through openvino-genai (the openvino route), the
tokenizer onnxruntime-genai builds from tokenizer.json (onnx_genai; openvino_ep reads the same tokenizer.json), and
transformers inside the NPU library's own environment (npu_library).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from pipeline.errors import PipelineError
from pipeline.sources import synthetic
from pipeline.sources import tiktoken_tokenizer as tt
from tests.test_synthetic import shrink

# English, code, digits, whitespace runs, emoji, and other scripts: Devanagari (combining marks: o200k's \p{M}),
# CJK, Arabic, Hebrew, Cyrillic, Greek, Thai; contractions in both cases; a URL (o200k keeps '/' after punctuation).
CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "It's, I'm, you're, we've, they'll, I'd; IT'S, I'M, YOU'RE, WE'VE, THEY'LL, I'D. O'Neill's CamelCaseWord",
    "def fib(n: int) -> int:\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # naive\n\n\nprint(fib(30))\n",
    "for (int i = 0; i < 10; ++i) { total += a[i] * 0x1F; }\r\n\treturn total;",
    "0 7 42 123 1234 12345 1234567890 3.14159 -2.5e-10 1,000,000 2026-12-07 12:30:45",
    "a  b   c    d\t\te\n\n\nf \n \n g      ",
    "    leading spaces and trailing ones   ",
    "Emoji: 😀 👍🏽 👩‍💻 🇫🇷 ❤️ 🎉🎉🎉 done",
    "नमस्ते दुनिया! यह एक परीक्षण वाक्य है, जिसमें हिन्दी के संयुक्ताक्षर (क्ष, त्र, ज्ञ) हैं।",
    "你好，世界。今日はいい天気ですね。안녕하세요, 세계!",
    "مرحبا بالعالم. שלום עולם. Привет, мир! Γειά σου Κόσμε. สวัสดีชาวโลก",
    "See https://example.com/path/to/page?q=phi-4&lang=en#section or ../relative/path/",
    "Math: ∑_{i=1}^{n} x_i² ≤ √(a·b) ± ∞ → ∀ε>0",
    "",
]


def chat_turns(family: str) -> list[str]:
    """Text with the model's special tokens, as its chat template writes it."""
    if family == "phi-4":
        return ["<|im_start|>system<|im_sep|>You are helpful.<|im_end|><|im_start|>user<|im_sep|>2+2?<|im_end|>"
                "<|im_start|>assistant<|im_sep|>"]
    return ["<|system|>You are helpful.<|end|><|user|>2+2?<|end|><|assistant|>",
            "<|system|>Tools<|tool|>[]<|/tool|><|end|><|tool_call|>{}<|/tool_call|><|tool_response|><|tag|>"]


FAMILIES = {"phi-4-mini": "phi-4-mini-instruct", "phi-4": "phi-4"}


@pytest.fixture(scope="session")
def archive() -> Path:
    try:
        return tt.tarball()
    except PipelineError as e:
        pytest.skip(f"the o200k / cl100k tokenizers need {tt.PACKAGE}@{tt.VERSION}: not in the cache and not "
                    f"downloadable here: {e}")


@pytest.fixture(scope="session")
def sources(archive, tmp_path_factory) -> dict[str, Path]:
    """A shrunk synthetic Phi-4-mini and Phi-4 with their tokenizers (write_checkpoint: the whole source)."""
    out = {}
    for family, config in FAMILIES.items():
        dest = tmp_path_factory.mktemp(config)
        synthetic.write_checkpoint(dest, config, 0, overrides=shrink(config))
        out[family] = dest
    return out


@pytest.fixture(scope="session")
def tiktoken_encodings(archive, tmp_path_factory, monkeypatch_session) -> dict:
    """OpenAI's tiktoken encodings, from our rank files put where tiktoken caches its downloads: tiktoken accepts a
    cached file only if it hashes to its own pin, else it would download (and fail offline)."""
    import hashlib

    import tiktoken
    from tiktoken_ext import openai_public

    cache = tmp_path_factory.mktemp("tiktoken-cache")
    urls = {"o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
            "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"}
    for encoding, url in urls.items():
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(tt.rank_file(archive, encoding))
    monkeypatch_session.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    out = {}
    for family, spec in tt.FAMILIES.items():
        base = getattr(openai_public, spec.encoding)()
        out[family] = tiktoken.Encoding(family, pat_str=base["pat_str"], mergeable_ranks=base["mergeable_ranks"],
                                        special_tokens={t: i for i, t in spec.added.items()})
    return out


@pytest.fixture(scope="session")
def monkeypatch_session():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


@pytest.fixture(scope="session")
def hf(sources) -> dict:
    from transformers import AutoTokenizer

    return {family: AutoTokenizer.from_pretrained(path) for family, path in sources.items()}


def texts(family: str) -> list[str]:
    return CORPUS + chat_turns(family)


def reference_ids(tiktoken_encodings, family: str) -> list[list[int]]:
    return [tiktoken_encodings[family].encode(text, allowed_special="all") for text in texts(family)]


def differences(family, got: list[list[int]], want: list[list[int]]) -> list[str]:
    return [f"{text[:24]!r}: {g[:6]}... != {w[:6]}..." for text, g, w in zip(texts(family), got, want) if g != w]


def test_rank_files_are_openais_bytes(archive, tiktoken_encodings):
    """tiktoken loaded both from our files (its sha256 pins held); the vocabulary sizes are the encodings'."""
    assert tiktoken_encodings["phi-4-mini"].max_token_value == 200028
    assert tiktoken_encodings["phi-4"].n_vocab == 100352  # 100256 ranks + 96 added: the embedding's rows
    assert len(tt.mergeable_ranks(tt.rank_file(archive, "o200k_base"))) == 199998


def test_a_rank_file_with_other_bytes_is_refused(archive, tmp_path):
    member = "package/dist/ranks/cl100k_base.js"
    tampered = tmp_path / "js-tiktoken.tgz"
    with tarfile.open(archive) as src, tarfile.open(tampered, "w:gz") as dst:
        info = src.getmember(member)
        text = src.extractfile(info).read().replace(b"IQ== ", b"Ig== ", 1)  # rank 0 now the bytes of rank 1
        info.size = len(text)
        import io

        dst.addfile(info, io.BytesIO(text))
    with pytest.raises(PipelineError, match="not OpenAI's cl100k_base file"):
        tt.rank_file(tampered, "cl100k_base")


def test_tokenizer_files_and_special_tokens_are_the_published_ones(sources, hf):
    mini, phi4 = hf["phi-4-mini"], hf["phi-4"]
    assert mini.convert_tokens_to_ids(["<|endoftext|>", "<|endofprompt|>", "<|assistant|>", "<|end|>", "<|user|>",
                                       "<|system|>", "<|tool|>"]) == [199999, 200018, 200019, 200020, 200021,
                                                                      200022, 200023]
    # Microsoft.ML.Tokenizers' Phi-4 test vector, and the generation prompt's ids quoted by Phi-4 users
    assert phi4.encode("<|im_start|>Hello<|im_sep|> World<|im_end|><|dummy_85|>", add_special_tokens=False) == [
        100264, 9906, 100266, 4435, 100265, 100349]
    assert phi4.encode("<|im_end|><|im_start|>assistant<|im_sep|>", add_special_tokens=False) == [
        100265, 100264, 78191, 100266]
    assert (phi4.eos_token, phi4.pad_token_id, mini.eos_token_id) == ("<|im_end|>", 100349, 199999)
    assert mini.encode("Hi") == mini.encode("Hi", add_special_tokens=False)  # no BOS added, as published
    for family, path in sources.items():
        generation = json.loads((path / "generation_config.json").read_text())
        assert generation["eos_token_id"] == tt.FAMILIES[family].stop_ids


def test_chat_templates_render_as_published(sources):
    from pipeline.backends.common import chat_text

    assert chat_text(sources["phi-4"], "Hi") == (
        "<|im_start|>user<|im_sep|>Hi<|im_end|><|im_start|>assistant<|im_sep|>")
    assert chat_text(sources["phi-4-mini"], "Hi") == "<|user|>Hi<|end|><|assistant|>"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_transformers_gives_tiktokens_ids_and_decodes_back(family, hf, tiktoken_encodings):
    tok = hf[family]
    got = [tok.encode(text, add_special_tokens=False) for text in texts(family)]
    assert differences(family, got, reference_ids(tiktoken_encodings, family)) == []
    assert [tok.decode(ids) for ids in got] == texts(family)


NODE_ENCODE = """
const enc = require(process.argv[1]);
const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));
process.stdout.write(JSON.stringify(texts.map((t) => enc.encode(t))));
"""


@pytest.fixture(scope="session")
def gpt_tokenizer(tmp_path_factory) -> Path:
    """gpt-tokenizer 4.0.0 (MIT), unpacked: a JavaScript tiktoken with its own copy of the ranks and its own split
    patterns (3.x split o200k text with cl100k's pattern: 3 of the corpus's texts differed from tiktoken)."""
    from pipeline.sources.embedded import cache_dir

    if not shutil.which("node"):
        pytest.skip("the JavaScript reference needs node (not on PATH)")
    try:
        tgz = tt.npm_tarball("gpt-tokenizer", "4.0.0",
                          "e50075c9a98389fbe59bf6b42d8d50b49c1cbd7aec6c205bfc28847ee0eeb20a", cache_dir(),
                          "an independent tiktoken for the tokenizer tests")
    except PipelineError as e:
        pytest.skip(f"the JavaScript reference: {e}")
    out = tmp_path_factory.mktemp("gpt-tokenizer")
    with tarfile.open(tgz) as tar:
        tar.extractall(out, filter="data")
    return out / "package"


@pytest.mark.parametrize("family", list(FAMILIES))
def test_gpt_tokenizer_in_javascript_agrees(family, gpt_tokenizer, hf):
    """Another implementation in another language with its own data, on the corpus (no special tokens: its
    special-token ids are its own)."""
    module = gpt_tokenizer / "cjs" / "encoding" / f"{tt.FAMILIES[family].encoding}.js"
    proc = subprocess.run(["node", "-e", NODE_ENCODE, str(module)], input=json.dumps(CORPUS),
                          capture_output=True, text=True, check=True)
    want = json.loads(proc.stdout)
    got = [hf[family].encode(text, add_special_tokens=False) for text in CORPUS]
    assert [f"{t[:24]!r}" for t, g, w in zip(CORPUS, got, want) if g != w] == []


@pytest.fixture(scope="session")
def openvino_tokenizers(sources, hf, tmp_path_factory) -> dict:
    """openvino-genai Tokenizers over the tokenizer IRs optimum-intel's export writes (openvino_tokenizers'
    convert_tokenizer, detokenizer included)."""
    import openvino as ov
    import openvino_genai
    from openvino_tokenizers import convert_tokenizer

    out = {}
    for family in sources:
        where = tmp_path_factory.mktemp(f"ov-{family}")
        tok, detok = convert_tokenizer(hf[family], with_detokenizer=True)
        ov.save_model(tok, where / "openvino_tokenizer.xml")
        ov.save_model(detok, where / "openvino_detokenizer.xml")
        out[family] = openvino_genai.Tokenizer(str(where))
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_openvino_tokenizer_gives_tiktokens_ids_and_decodes_back(family, openvino_tokenizers, tiktoken_encodings,
                                                                 sources):
    from pipeline.backends.common import tokenizer_parity

    tok = openvino_tokenizers[family]
    encode = lambda text: [int(i) for i in tok.encode(text, add_special_tokens=False).input_ids.data[0]]  # noqa: E731
    decode = lambda ids: tok.decode(list(ids), skip_special_tokens=False)  # noqa: E731
    got = [encode(text) if text else [] for text in texts(family)]  # the IR refuses an empty batch item
    assert differences(family, got, reference_ids(tiktoken_encodings, family)) == []
    assert [decode(ids) for ids in got if ids] == [text for text in texts(family) if text]
    assert tokenizer_parity(sources[family], ["What is the capital of France?", "नमस्ते 😀"], encode, decode) == {
        "status": "passed", "prompts": 2, "decode": "exact"}


@pytest.fixture(scope="session")
def genai_models(sources, tmp_path_factory) -> dict:
    from pipeline.backends import onnx_genai
    from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
    from pipeline.params import Prompt, SmokeParams

    variant = OnnxGenaiVariant(backend="onnx_genai", precision="int4", execution_provider="cpu")
    smoke = SmokeParams(prompts=[Prompt(text="What is the capital of France?")], max_new_tokens=8)
    out = {}
    for family, source in sources.items():
        out[family] = tmp_path_factory.mktemp(f"genai-{family}")
        onnx_genai.export(source, variant, out[family], inputs={}, smoke=smoke)
    return out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_onnxruntime_genai_tokenizer_gives_tiktokens_ids_and_decodes_back(family, genai_models, tiktoken_encodings,
                                                                          sources):
    import numpy as np
    import onnxruntime_genai as og

    from pipeline.backends.common import tokenizer_parity

    tok = og.Tokenizer(og.Model(str(genai_models[family])))
    tok.update_options(skip_special_tokens="false")
    got = [[int(i) for i in tok.encode(text)] for text in texts(family)]
    assert differences(family, got, reference_ids(tiktoken_encodings, family)) == []
    decoded = [tok.decode(np.asarray(ids, dtype=np.int32)) for ids in got]
    assert [d for d, t in zip(decoded, CORPUS) if d != t] == []
    record = tokenizer_parity(sources[family], ["What is the capital of France?", "नमस्ते 😀"], tok.encode,
                              lambda ids: tok.decode(np.asarray(ids, dtype=np.int32)))
    assert record["status"] == "passed", record


NPU_ENCODE = """
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = json.load(sys.stdin)
ids = [tok.encode(t, add_special_tokens=False) for t in texts]
print(json.dumps({"ids": ids, "text": [tok.decode(i) for i in ids]}))
"""


@pytest.mark.parametrize("family", list(FAMILIES))
def test_npu_library_environment_gives_tiktokens_ids_and_decodes_back(family, sources, tiktoken_encodings):
    """The npu_library route tokenizes with the transformers of its own environment (another version)."""
    from pipeline.backends.npu_library import library

    try:
        python = library.python()
    except PipelineError as e:
        pytest.skip(str(e))
    proc = subprocess.run([str(python), "-c", NPU_ENCODE, str(sources[family])], input=json.dumps(texts(family)),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert differences(family, got["ids"], reference_ids(tiktoken_encodings, family)) == []
    assert got["text"] == texts(family)


def test_unknown_encoding_is_refused_in_one_line(archive):
    with pytest.raises(PipelineError, match="encoding 'p50k_base': not one of o200k_base, cl100k_base"):
        tt.rank_file(archive, "p50k_base")


def test_no_registry_names_the_cache_to_fill(tmp_path, monkeypatch):
    monkeypatch.setenv("NPM_CONFIG_REGISTRY", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(PipelineError, match=r"js-tiktoken-1\.0\.21\.tgz \(sha256 3b1f24b1") as e:
        tt.tarball(cache=tmp_path)
    assert "\n" not in str(e.value) and not list(tmp_path.iterdir())


SMOKE_PROMPTS = ["What is the capital of France?", "नमस्ते! Write one sentence about the sea 🌊."]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_smoke_runs_each_models_chat_template_through_openvino_and_genai(family, sources, genai_models, tmp_path):
    """The smoke stage as it runs a Phi-4 model: the model's template rendered, its ids through each runtime's
    tokenizer (parity with the source's), openvino-genai's own rendering of the template compared, tokens out."""
    from pipeline.backends import onnx_genai
    from pipeline.backends import openvino as ov_backend
    from pipeline.backends.onnx_genai.params import OnnxGenaiVariant
    from pipeline.backends.openvino.params import OpenVINOVariant
    from pipeline.layout import IR_FP16
    from pipeline.params import Prompt, SmokeParams

    smoke = SmokeParams(prompts=[Prompt(text=t) for t in SMOKE_PROMPTS], max_new_tokens=4)
    ort = onnx_genai.smoke(genai_models[family], OnnxGenaiVariant(backend="onnx_genai", precision="int4",
                                                                  execution_provider="cpu"), smoke, sources[family])
    assert (ort["status"], ort["tokenizer_parity"]["status"]) == ("passed", "passed"), ort["reason"]
    variant = OpenVINOVariant(backend="openvino", weight_format="fp16")
    ir, out = tmp_path / "ir", tmp_path / "ov-fp16"
    ir.mkdir()
    out.mkdir()
    ov_backend.export_ir(sources[family], ir)
    ov_backend.export(sources[family], variant, out, inputs={IR_FP16: ir}, smoke=smoke)
    ov = ov_backend.smoke(out, variant, smoke, sources[family])
    assert ov["status"] == "passed", ov["reason"]
    assert (ov["tokenizer_parity"]["status"], ov["chat_template"]["status"]) == ("passed", "passed")
    for record in (ort, ov):
        assert all(p["new_tokens"] > 0 and p["prompt_tokens"] > 8 for p in record["runs"][0]["prompts"])
