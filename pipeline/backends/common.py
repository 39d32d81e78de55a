"""What every backend's smoke run shares: the chat prompt as the source tokenizer renders it, and tokenizer parity."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path


@lru_cache(maxsize=4)
def source_tokenizer(source: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def chat_text(source: Path, prompt: str) -> str:
    """The prompt rendered with the source's chat template, ready for generation (special tokens included)."""
    tok = source_tokenizer(Path(source))
    return tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)


def source_ids(source: Path, text: str) -> list[int]:
    # The template already carries its special tokens; runtimes encode templated text the same way.
    return list(source_tokenizer(Path(source))(text, add_special_tokens=False)["input_ids"])


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """Index of the first position where the sequences differ (a length difference counts), else None."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def tokenizer_parity(
    source: Path,
    prompts: Sequence[str],
    encode: Callable[[str], Sequence[int]],
    decode: Callable[[Sequence[int]], str],
) -> dict:
    """Encode each templated prompt with the runtime's tokenizer and compare to the source's ids; decode back."""
    for prompt in prompts:
        text = chat_text(source, prompt)
        want = source_ids(source, text)
        got = [int(i) for i in encode(text)]
        pos = first_difference(want, got)
        if pos is not None:
            return {
                "status": "failed",
                "reason": (
                    f"tokenizer mismatch at position {pos} for prompt {prompt!r}: "
                    f"source id {want[pos] if pos < len(want) else None}, "
                    f"runtime id {got[pos] if pos < len(got) else None}"
                ),
            }
        back = decode(got)
        if back != text:
            pos = first_difference(list(text), list(back))
            return {
                "status": "failed",
                "reason": f"detokenizer mismatch at character {pos} for prompt {prompt!r}: {back[pos:pos + 20]!r}",
            }
    return {"status": "passed", "prompts": len(prompts)}
