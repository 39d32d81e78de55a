"""Phi-4-mini's and Phi-4's tokenizers, offline: byte-level BPE over tiktoken's o200k / cl100k ranks.

Neither the hub nor OpenAI's blob store (where `tiktoken` downloads its rank files) is reachable here; npm is. The
`js-tiktoken` package (MIT, OpenAI's tiktoken ported to JavaScript) ships every encoding's ranks in
`dist/ranks/<encoding>.js`: one line `! <first rank> <base64 token> <base64 token> ...`. Its tarball is fetched
from the npm registry ($NPM_CONFIG_REGISTRY, as npm reads it) at a pinned sha256, kept in the same cache as the
embedded model's wheel (AIPC_CACHE), and only those members are read out of the archive. The ranks are written back
in tiktoken's own file format ("<base64> <rank>" lines), which must hash to the sha256 tiktoken itself pins for
OpenAI's published file (`expected_hash` in tiktoken_ext/openai_public.py): the bytes are OpenAI's, not a copy's.

The tokenizer.json is what transformers' TikTokenConverter makes of that file (byte-level vocabulary, merges in
rank order, `ignore_merges` as tiktoken, the encoding's split pattern then ByteLevel without its own regex), which is
how the published Phi-4 tokenizers were made (Phi-4-mini's config names "Xenova/gpt-4o" as its AutoTokenizer),
plus each model's added tokens at their published ids (not appended: the ids have gaps). FAMILIES says which tokens,
template and stop ids each model has; pipeline/sources/configs/README.md says where each came from and how sure.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fsutil import sha256_file

PACKAGE, VERSION = "js-tiktoken", "1.0.21"
TARBALL_SHA256 = "3b1f24b185565ca9a8d8f51466dfc4f99d67f1f05bc009258710ddb7a8d810fa"
# sha256 of OpenAI's published rank files, as tiktoken 0.14 pins them (o200k_base(), cl100k_base()).
RANKS_SHA256 = {
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
}
# tiktoken's split patterns in the form Hugging Face's tokenizer.json files carry them: o200k's as tiktoken has it;
# cl100k's as TikTokenConverter writes it (tiktoken 0.14 spells it with possessive quantifiers, the same splits).
PATTERNS = {
    "o200k_base": "|".join([
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]),
    "cl100k_base": r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""",
}


@dataclass(frozen=True)
class Family:
    encoding: str
    added: dict[int, str]          # id -> content, every one special
    bos: str
    eos: str
    pad: str
    chat_template: str
    stop_ids: list[int]            # generation_config.json's eos_token_id


_PHI4_DUMMIES = [100256, *range(100261, 100264), *range(100267, 100276), *range(100277, 100352)]

FAMILIES = {
    "phi-4-mini": Family(
        encoding="o200k_base",
        added={199999: "<|endoftext|>", 200018: "<|endofprompt|>", 200019: "<|assistant|>", 200020: "<|end|>",
               200021: "<|user|>", 200022: "<|system|>", 200023: "<|tool|>", 200024: "<|/tool|>",
               200025: "<|tool_call|>", 200026: "<|/tool_call|>", 200027: "<|tool_response|>", 200028: "<|tag|>"},
        bos="<|endoftext|>", eos="<|endoftext|>", pad="<|endoftext|>",
        chat_template=(
            "{% for message in messages %}{% if message['role'] == 'system' and 'tools' in message and "
            "message['tools'] is not none %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|tool|>' + "
            "message['tools'] + '<|/tool|>' + '<|end|>' }}{% else %}{{ '<|' + message['role'] + '|>' + "
            "message['content'] + '<|end|>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
            "{{ '<|assistant|>' }}{% else %}{{ eos_token }}{% endif %}"),
        stop_ids=[200020, 199999]),
    "phi-4": Family(
        encoding="cl100k_base",
        added={**{i: f"<|dummy_{k}|>" for k, i in enumerate(_PHI4_DUMMIES)},
               100257: "<|endoftext|>", 100258: "<|fim_prefix|>", 100259: "<|fim_middle|>",
               100260: "<|fim_suffix|>", 100264: "<|im_start|>", 100265: "<|im_end|>", 100266: "<|im_sep|>",
               100276: "<|endofprompt|>"},
        bos="<|endoftext|>", eos="<|im_end|>", pad="<|dummy_85|>",
        chat_template=(
            "{% for message in messages %}{% if (message['role'] == 'system') %}{{'<|im_start|>system<|im_sep|>' + "
            "message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}{{'<|im_start|>user<|im_sep|>'"
            " + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}"
            "{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}"
            "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"),
        stop_ids=[100265, 100257]),
}
SYNTHETIC = {"phi-4-mini-instruct": "phi-4-mini", "phi-4": "phi-4"}  # synthetic config -> tokenizer family


def npm_tarball(package: str, version: str, pinned: str, cache: Path, why: str) -> Path:
    """`package`@`version`'s tarball from `cache` (by name and sha256), else from the npm registry that
    $NPM_CONFIG_REGISTRY names (npm's own variable), checked against `pinned` before it lands in the cache."""
    name = f"{package.rsplit('/', 1)[-1]}-{version}.tgz"
    if (cache / name).is_file() and sha256_file(cache / name) == pinned:
        return cache / name
    registry = (os.environ.get("NPM_CONFIG_REGISTRY") or "https://registry.npmjs.org").rstrip("/")
    url = f"{registry}/{package}/-/{name}"
    print(f"fetch: {url} ({why})", file=sys.stderr)
    try:
        with urllib.request.urlopen(url, timeout=120) as resp:
            data = resp.read()
    except (urllib.error.URLError, OSError) as e:
        raise PipelineError(f"download {url} failed ({getattr(e, 'reason', e)}); without the npm registry, put "
                            f"{name} (sha256 {pinned}) into {cache}") from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != pinned:
        raise PipelineError(f"{name}: sha256 {digest[:12]}… but the pin is {pinned[:12]}…; the registry served "
                            "different bytes for this version (or the pin is stale)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cache, prefix=".download-", delete=False) as tmp:
        tmp.write(data)
    return Path(tmp.name).replace(cache / name)


def tarball(cache: Path | None = None) -> Path:
    """The pinned js-tiktoken tarball: from the cache, else from the npm registry."""
    from pipeline.sources.embedded import cache_dir  # the embedded model's wheel cache: one place for all

    return npm_tarball(PACKAGE, VERSION, TARBALL_SHA256, Path(cache) if cache else cache_dir(),
                       "tiktoken's rank files")


def rank_file(archive: Path, encoding: str) -> bytes:
    """`encoding`'s ranks in tiktoken's file format, read out of the js-tiktoken tarball; OpenAI's exact bytes."""
    if encoding not in RANKS_SHA256:
        raise PipelineError(f"encoding {encoding!r}: not one of {', '.join(RANKS_SHA256)}")
    member = f"package/dist/ranks/{encoding}.js"
    with tarfile.open(archive, mode="r:gz") as tar:
        try:
            text = tar.extractfile(member).read().decode("utf-8")
        except KeyError:
            raise PipelineError(f"{Path(archive).name}: no {member} in the archive") from None
    prefix = "export default "
    if not text.startswith(prefix):
        raise PipelineError(f"{member}: not the `export default {{...}}` module js-tiktoken ships")
    ranks = json.loads(text[len(prefix):].rstrip().rstrip(";"))["bpe_ranks"]
    out = io.StringIO()
    for line in filter(None, ranks.split("\n")):
        marker, first, *tokens = line.split(" ")
        if marker != "!":
            raise PipelineError(f"{member}: a ranks line starts with {marker[:10]!r}, not '!'")
        for k, token in enumerate(tokens):
            out.write(f"{token} {int(first) + k}\n")
    data = out.getvalue().encode("ascii")
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256[encoding]:
        raise PipelineError(f"{member}: its ranks hash to {digest[:12]}…, not OpenAI's {encoding} file "
                            f"({RANKS_SHA256[encoding][:12]}…)")
    return data


def mergeable_ranks(data: bytes) -> dict[bytes, int]:
    """tiktoken's {token bytes: rank} of a rank file (tiktoken.load.load_tiktoken_bpe's parse)."""
    return {base64.b64decode(token): int(rank) for token, rank in (ln.split() for ln in data.splitlines() if ln)}


def _fast_tokenizer(ranks: bytes, family: Family):
    from tokenizers import Tokenizer
    from transformers.convert_slow_tokenizer import TikTokenConverter

    with tempfile.TemporaryDirectory(prefix="aipc-tiktoken-") as tmp:
        path = Path(tmp) / f"{family.encoding}.tiktoken"
        path.write_bytes(ranks)
        tk = TikTokenConverter(vocab_file=str(path), pattern=PATTERNS[family.encoding]).converted()
    # add_special_tokens would append them after the vocabulary, and the `added_tokens` list alone is renumbered
    # the same way on load; the published ids have gaps (o200k: 199999, then 200018...), so each special token is
    # also in the model's vocabulary at its id, which the added vocabulary then keeps.
    spec = json.loads(tk.to_str())
    vocab = spec["model"]["vocab"]
    clash = sorted(i for i in family.added if i < len(vocab))
    if clash:
        raise PipelineError(f"{family.encoding}: added token ids {clash[:3]} fall inside its {len(vocab)} ranks")
    vocab.update({t: i for i, t in family.added.items()})
    spec["added_tokens"] = [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                             "normalized": False, "special": True} for i, t in sorted(family.added.items())]
    return Tokenizer.from_str(json.dumps(spec, ensure_ascii=False))


def write(dest: Path, family_name: str, ranks: bytes, model_max_length: int) -> dict:
    """Write `family_name`'s tokenizer files into `dest` from the rank file bytes; returns what was written."""
    from transformers import PreTrainedTokenizerFast

    dest = Path(dest)
    family = FAMILIES[family_name]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_fast_tokenizer(ranks, family),
        chat_template=family.chat_template,
        model_max_length=model_max_length,
        bos_token=family.bos, eos_token=family.eos, pad_token=family.pad, unk_token=family.bos,
        clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(dest, save_jinja_files=False)  # the chat template inside tokenizer_config.json
    config = json.loads((dest / "tokenizer_config.json").read_text())
    # As published: no BOS added, and transformers 4 and other runtimes read these keys.
    config.update({"add_bos_token": False, "add_eos_token": False, "add_prefix_space": False})
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return {"encoding": family.encoding, "ranks_sha256": RANKS_SHA256[family.encoding],
            "added_tokens": {str(i): t for i, t in sorted(family.added.items()) if "dummy" not in t},
            "bos_token": family.bos, "eos_token": family.eos, "pad_token": family.pad}


def build(dest: Path, family_name: str, model_max_length: int, cache: Path | None = None) -> dict:
    """Fetch (or reuse) the pinned tarball and write `family_name`'s tokenizer into `dest`; returns provenance."""
    archive = tarball(cache)
    family = FAMILIES[family_name]
    written = write(dest, family_name, rank_file(archive, family.encoding), model_max_length)
    return {"package": f"{PACKAGE}@{VERSION}", "tarball_sha256": TARBALL_SHA256, "family": family_name, **written}
