"""Tiny random Phi-3 checkpoints shaped like each member of the family users point the pipeline at.

The configs are the real ones' config.json with the sizes shrunk: hidden and intermediate stay multiples of 128 so
INT4 group 128 applies as on the real models. Weights are random, so logits are flat: compare them with cosine /
KL, never by greedy text.
"""

from __future__ import annotations

import json
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '<|end|>\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '<|assistant|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
SPECIALS = ["<unk>", "<s>", "</s>", "<|endoftext|>", "<|assistant|>", "<|user|>", "<|end|>", "<|system|>"]
VOCAB = 512

_BASE = dict(
    architectures=["Phi3ForCausalLM"],
    model_type="phi3",
    attention_bias=False,
    attention_dropout=0.0,
    embd_pdrop=0.0,
    resid_pdrop=0.0,
    hidden_act="silu",
    initializer_range=0.02,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    use_cache=True,
    vocab_size=VOCAB,
    bos_token_id=1,
    eos_token_id=3,
    pad_token_id=3,
    hidden_size=256,
    intermediate_size=768,  # != vocab: the ORT builder takes any Linear with out_features == vocab for the LM head
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=4,
)


def _longrope(head_dim: int, long_scale: float) -> dict:
    half = head_dim // 2
    return {
        "type": "longrope",
        "short_factor": [1.0 + 0.02 * i for i in range(half)],
        "long_factor": [1.0 + long_scale * i for i in range(half)],
    }


# name -> config.json overrides, after the real checkpoints of each family member
FAMILY: dict[str, dict] = {
    # microsoft/Phi-3-mini-4k-instruct: MHA, no rope scaling
    "mini-4k": dict(max_position_embeddings=4096, original_max_position_embeddings=4096, rope_scaling=None,
                    sliding_window=2047),
    # microsoft/Phi-3-mini-128k-instruct: longrope, 4k original context
    "mini-128k": dict(max_position_embeddings=131072, original_max_position_embeddings=4096,
                      rope_scaling=_longrope(64, 0.5), sliding_window=262144),
    # microsoft/Phi-3.5-mini-instruct: longrope with other factors, tied to 4k original context
    "3.5-mini": dict(max_position_embeddings=131072, original_max_position_embeddings=4096,
                     rope_scaling=_longrope(64, 1.5), sliding_window=262144),
    # microsoft/Phi-3-medium-4k-instruct: grouped-query attention (40 heads, 10 kv heads -> 8 / 2 here)
    "medium-4k": dict(max_position_embeddings=4096, original_max_position_embeddings=4096, rope_scaling=None,
                      num_attention_heads=8, num_key_value_heads=2, sliding_window=2047),
    # microsoft/Phi-4-mini-instruct (still model_type phi3): partial rotary (0.75 of each head: 48 of 64 here, 96 of
    # 128 there, so longrope has 24 factors), tied embeddings (no lm_head tensor), grouped-query attention (24 / 8
    # heads -> 4 / 1 here: with 2 kv heads qkv_proj would be 512 wide, the vocabulary, and the ORT builder takes any
    # Linear that wide for the LM head), longrope past a 4k original context
    "phi4-mini": dict(max_position_embeddings=131072, original_max_position_embeddings=4096,
                      rope_scaling=_longrope(48, 0.5), partial_rotary_factor=0.75, tie_word_embeddings=True,
                      num_key_value_heads=1, sliding_window=262144),
}

# Hidden size not a multiple of 128, like SmolLM2's 576: INT4 group 128 needs NNCF's group-size fallback.
ODD_WIDTH = {"hidden_size": 192, "intermediate_size": 384, "num_attention_heads": 3, "num_key_value_heads": 3}

_CORPUS = [
    "The capital of France is Paris. The capital of Italy is Rome.",
    "Write one sentence about the sea. The sea is wide, blue and deep.",
    "What is the capital of France? Paris is a city on the Seine.",
    "Hello! How are you today? I am fine, thank you very much.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Symbols: ! ? , . ; : ' \" ( ) [ ]",
] * 20


def build_tokenizer(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        bos_token="<s>",
        eos_token="<|endoftext|>",
        unk_token="<unk>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )
    fast.save_pretrained(out)


def build(kind: str, out: Path, seed: int = 0, **overrides) -> Path:
    """Write a tiny random Phi-3 checkpoint of family member `kind` to `out` (safetensors, fp32); `overrides` go
    into its config (e.g. tie_word_embeddings=True, as the embedded SmolLM2 has)."""
    import torch
    from transformers import GenerationConfig, Phi3Config, Phi3ForCausalLM

    out = Path(out)
    cfg = Phi3Config(**{**_BASE, **FAMILY[kind], **overrides})
    torch.manual_seed(seed)
    model = Phi3ForCausalLM(cfg).eval()
    # Random init gives near-zero logits; widen the output layer so quantization error is visible in metrics. A tied
    # output layer is the input embedding: scaled, it makes every step's hidden state its input token's embedding,
    # and the model repeats the prompt's last token ('\n' after <|assistant|>) forever; so the layers' outputs are
    # widened instead.
    with torch.no_grad():
        if cfg.tie_word_embeddings:
            for layer in model.model.layers:
                layer.mlp.down_proj.weight.mul_(8.0)
        else:
            model.lm_head.weight.mul_(8.0)
    model.save_pretrained(out, safe_serialization=True)
    # Hub checkpoints carry the config.json of the transformers that made them (legacy `rope_scaling`, not
    # transformers 5's `rope_parameters`): write that, so every exporter is tested on what users will feed it.
    (out / "config.json").write_text(
        json.dumps({**_BASE, **FAMILY[kind], **overrides, "torch_dtype": "float32", "transformers_version": "4.40.2"},
                   indent=2)
    )
    GenerationConfig(bos_token_id=1, eos_token_id=[3, 6], pad_token_id=3).save_pretrained(out)
    build_tokenizer(out)
    return out


def resave_config(checkpoint: Path, *, legacy_type: bool, original_at_top: bool = True, **rope) -> dict:
    """Re-save `checkpoint`'s config.json with the installed transformers 5, which writes `rope_parameters`
    (`rope_type`, with rope_theta and original_max_position_embeddings copied in) instead of `rope_scaling`.

    Loaded from a legacy file, transformers keeps the legacy `type` key in there (legacy_type=True); a config it
    builds itself (Phi3Config(rope_parameters=...)) has none. `rope` adds keys to rope_parameters; with
    original_at_top=False, original_max_position_embeddings is left only inside it. Returns the written config.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(checkpoint)
    if not legacy_type:
        del config.rope_parameters["type"]
    config.rope_parameters.update(rope)
    config.save_pretrained(checkpoint)
    path = Path(checkpoint) / "config.json"
    data = json.loads(path.read_text())
    if not original_at_top:
        del data["original_max_position_embeddings"]
        path.write_text(json.dumps(data, indent=2))
    return data
