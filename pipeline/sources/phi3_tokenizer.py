"""Phi-3's real tokenizer, offline: rebuilt from the vocabulary llama.cpp ships for its tokenizer tests.

The llama-cpp-python sdist on PyPI (MIT) vendors llama.cpp's `models/ggml-vocab-phi-3.gguf`: Phi-3's 32064 tokens
with their SentencePiece scores and types, the chat template and the bos/eos/pad ids, converted by llama.cpp from
microsoft/Phi-3-mini-4k-instruct. Beside it, `ggml-vocab-phi-3.gguf.inp` / `.out` hold llama.cpp's tokenizer test
strings and the ids Hugging Face's own Phi-3 tokenizer gave for each (46 strings: the .inp file, split on its
separator, also yields an empty 47th field after the last one; the .out file has 46 lines). The sdist is fetched
with `pip download --no-deps --no-binary :all:` at a pinned sha256, kept in the same cache as the embedded model's
wheel (AIPC_CACHE), and only those three members are read out of the archive: it is never unpacked, built or
installed.

What is written, as Phi-3 ships it:
  - tokenizer.model: a SentencePiece BPE model (byte_fallback, identity normalizer, add_dummy_prefix, no
    whitespace collapsing, whitespace-only pieces allowed) of the first 32000 pieces with the GGUF's scores; id 0 is
    UNKNOWN, the GGUF's control/user-defined ones (<s>, </s>) CONTROL, its byte pieces BYTE, the rest NORMAL;
  - tokenizer.json: byte-fallback BPE over those pieces, merges ordered by score (transformers'
    `generate_merges` with the pieces' scores), normalizer Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer, a
    `<s> $A` post-processor, and the added special tokens 32000-32010 (<|endoftext|>, <|assistant|>,
    <|placeholder1-6|>, <|system|>, <|end|>, <|user|>): the layout of the tokenizer.json Phi-3 publishes;
  - tokenizer_config.json (with the GGUF's chat template) and special_tokens_map.json.
The GGUF's ids 32011-32063 ([PAD32011]...) are not tokens of Phi-3's tokenizer (its vocabulary stops at 32010;
llama.cpp padded the list to the embedding's 32064 rows) and are left out.

Two deliberate departures from a plain transformers 5 save, both because they change ids (measured on the 46
references): the tokenizer class is `TokenizersBackend`, which loads tokenizer.json as written, not
`LlamaTokenizer`, which transformers 5 rebuilds with a Metaspace pre-tokenizer that drops SentencePiece's dummy
prefix before a leading space (31/46); and the merges are ordered by piece score, not by vocabulary id as
transformers 5's own SentencePiece import orders them (36/46).
"""

from __future__ import annotations

import json
import sys
import tarfile
import tempfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fsutil import sha256_file
from pipeline.wheels import check_pin, download, download_cmd

SDIST = "llama-cpp-python==0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
VOCAB = "vendor/llama.cpp/models/ggml-vocab-phi-3.gguf"  # inside the sdist's top folder
TESTS_SEPARATOR = "\n__ggml_vocab_test__\n"
PIECES = 32000  # the SentencePiece model's own pieces; ids above are added tokens
# GGUF token types (llama.cpp's llama_token_type) and SentencePiece's piece types.
_GGUF_NORMAL, _GGUF_UNKNOWN, _GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_BYTE = 1, 2, 3, 4, 6
_SP_NORMAL, _SP_UNKNOWN, _SP_CONTROL, _SP_BYTE = 1, 2, 3, 6


def sdist(cache: Path | None = None) -> Path:
    """The pinned llama-cpp-python sdist: from the cache (found by its sha256), else from the package index."""
    from pipeline.sources.embedded import cache_dir  # the embedded model's wheel cache: one place for both

    cache = Path(cache) if cache else cache_dir()
    for path in sorted(cache.glob("*.tar.gz")):
        if sha256_file(path) == SDIST_SHA256:
            return path
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetch: pip download --no-deps --no-binary :all: {SDIST} (Phi-3's vocabulary)", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        download(download_cmd([SDIST], Path(tmp), sdist=True),
                 hint=f"; without a package index, put {SDIST.replace('==', '-')}'s sdist "
                      f"(sha256 {SDIST_SHA256}) into {cache}")
        (got,) = Path(tmp).glob("*.tar.gz")
        check_pin(got, SDIST_SHA256, "pipeline/sources/phi3_tokenizer.py")
        return got.replace(cache / got.name)


def vocab_files(archive: Path) -> dict[str, bytes]:
    """{'gguf', 'inp', 'out'}: the three vocabulary members, streamed out of the archive (nothing else is kept)."""
    want = {VOCAB: "gguf", VOCAB + ".inp": "inp", VOCAB + ".out": "out"}
    got: dict[str, bytes] = {}
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            key = want.get(member.name.split("/", 1)[-1])
            if key and member.isfile():
                got[key] = tar.extractfile(member).read()
                if len(got) == len(want):
                    break
    missing = sorted(set(want.values()) - set(got))
    if missing:
        names = {v: k for k, v in want.items()}
        raise PipelineError(f"{Path(archive).name}: no {', '.join(names[k] for k in missing)} in the archive")
    return got


def references(files: dict[str, bytes]) -> list[tuple[str, list[int]]]:
    """llama.cpp's test strings and the ids Hugging Face's Phi-3 tokenizer gave for each (no BOS)."""
    texts = files["inp"].decode("utf-8").split(TESTS_SEPARATOR)
    lines = files["out"].decode("utf-8").split("\n")
    if texts and texts[-1] == "":
        texts = texts[:-1]  # the separator also ends the file
    if lines and lines[-1] == "":
        lines = lines[:-1]
    if len(texts) != len(lines):
        raise PipelineError(f"{VOCAB}.inp has {len(texts)} strings but .out has {len(lines)} id lines")
    return [(text, [int(i) for i in line.split()]) for text, line in zip(texts, lines)]


def _vocab(gguf: bytes):
    from gguf import GGUFReader

    with tempfile.TemporaryDirectory(prefix="aipc-phi3-vocab-") as tmp:
        path = Path(tmp) / "vocab.gguf"
        path.write_bytes(gguf)
        reader = GGUFReader(path)
        fields = reader.fields

        def value(key):
            return fields[key].contents()

        vocab = {
            "tokens": value("tokenizer.ggml.tokens"),
            "scores": [float(s) for s in value("tokenizer.ggml.scores")],
            "types": [int(t) for t in value("tokenizer.ggml.token_type")],
            "chat_template": value("tokenizer.chat_template"),
            "bos": int(value("tokenizer.ggml.bos_token_id")),
            "eos": int(value("tokenizer.ggml.eos_token_id")),
            "unk": int(value("tokenizer.ggml.unknown_token_id")),
            "pad": int(value("tokenizer.ggml.padding_token_id")),
            "model": value("tokenizer.ggml.model"),
        }
    if vocab["model"] != "llama" or len(vocab["tokens"]) < PIECES:
        raise PipelineError(f"{VOCAB}: not a SentencePiece (llama) vocabulary of at least {PIECES} tokens")
    return vocab


def sentencepiece_model(vocab: dict) -> bytes:
    """tokenizer.model: the first 32000 pieces as a SentencePiece BPE model with Llama/Phi-3's settings."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    m = pb.ModelProto()
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = PIECES
    ts.byte_fallback = True
    ts.split_digits = True
    ts.allow_whitespace_only_pieces = True
    ts.unk_id, ts.bos_id, ts.eos_id, ts.pad_id = 0, 1, 2, -1
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    for i in range(PIECES):
        piece = m.pieces.add()
        piece.piece = vocab["tokens"][i]
        piece.score = vocab["scores"][i]
        kind = vocab["types"][i]
        piece.type = (_SP_UNKNOWN if i == vocab["unk"] else
                      _SP_CONTROL if kind in (_GGUF_CONTROL, _GGUF_USER_DEFINED, _GGUF_UNKNOWN) else
                      _SP_BYTE if kind == _GGUF_BYTE else _SP_NORMAL)
    return m.SerializeToString()


def added_tokens(vocab: dict) -> list[str]:
    """Phi-3's added tokens (ids 32000...): the GGUF's control tokens past the SentencePiece pieces, in id order."""
    out = []
    for i in range(PIECES, len(vocab["tokens"])):
        if vocab["types"][i] != _GGUF_CONTROL:
            break  # llama.cpp's [PADnnnnn] fillers up to the embedding size
        out.append(vocab["tokens"][i])
    return out


def _fast_tokenizer(model_path: Path, vocab: dict):
    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.tokenization_utils_base import generate_merges

    m = pb.ModelProto()
    m.ParseFromString(model_path.read_bytes())
    pieces = {p.piece: i for i, p in enumerate(m.pieces)}
    mergeable = {p.piece: p.score for p in m.pieces if p.type == _SP_NORMAL}
    merges = generate_merges(pieces, mergeable)
    unk, bos = vocab["tokens"][vocab["unk"]], vocab["tokens"][vocab["bos"]]
    tk = Tokenizer(BPE(vocab=pieces, merges=merges, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tk.pre_tokenizer = None
    tk.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                    decoders.Strip(content=" ", left=1)])
    controls = [p.piece for p in m.pieces if p.type in (_SP_UNKNOWN, _SP_CONTROL)]
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in controls + added_tokens(vocab)])
    tk.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                      special_tokens=[(bos, vocab["bos"])])
    return tk


def write(dest: Path, files: dict[str, bytes], model_max_length: int) -> dict:
    """Write Phi-3's tokenizer files into `dest` from the vocabulary members; returns what was written."""
    from transformers import PreTrainedTokenizerFast

    dest = Path(dest)
    vocab = _vocab(files["gguf"])
    (dest / "tokenizer.model").write_bytes(sentencepiece_model(vocab))
    tokens = vocab["tokens"]
    special = {"bos_token": tokens[vocab["bos"]], "eos_token": tokens[vocab["eos"]],
               "unk_token": tokens[vocab["unk"]], "pad_token": tokens[vocab["pad"]]}
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_fast_tokenizer(dest / "tokenizer.model", vocab),
        chat_template=vocab["chat_template"],
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        **special,
    )
    fast.save_pretrained(dest, save_jinja_files=False)  # the chat template inside tokenizer_config.json, as Phi-3
    config = json.loads((dest / "tokenizer_config.json").read_text())
    # Phi-3's own keys that transformers 5 no longer writes (transformers 4 and other runtimes read them).
    config.update({"add_bos_token": True, "add_eos_token": False, "legacy": False})
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    spec = {k: {"content": v, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
            for k, v in special.items()}
    (dest / "special_tokens_map.json").write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    return {"pieces": PIECES, "added_tokens": added_tokens(vocab), **special}


def build(dest: Path, model_max_length: int, cache: Path | None = None) -> dict:
    """Fetch (or reuse) the pinned sdist and write Phi-3's tokenizer into `dest`; returns its provenance."""
    archive = sdist(cache)
    written = write(dest, vocab_files(archive), model_max_length)
    return {"sdist": archive.name, "sdist_sha256": SDIST_SHA256, "member": VOCAB, **written}
