"""What every backend shares: the chat prompt as the source tokenizer renders it, tokenizer parity, the smoke
record's shape, one-line errors, and the export record's file list and versions."""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
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


def until_eos(ids: Sequence[int], eos: Sequence[int]) -> list[int]:
    """`ids` up to and including the first eos id (a runtime that stops there leaves nothing after it anyway)."""
    ids = [int(i) for i in ids]
    return next((ids[: j + 1] for j, t in enumerate(ids) if t in eos), ids)


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
    """Encode each templated prompt with the runtime's tokenizer and compare to the source's ids: they must be equal.
    Decode them back and compare to what the source's tokenizer decodes them to; not to the prompt text, since a
    SentencePiece tokenizer such as Phi-3's puts its dummy-prefix piece after every special token, so even Hugging
    Face's own decode gives '<|user|> \\nWhat' for '<|user|>\\nWhat'. The decode must give the same words, with
    or without the special tokens: onnxruntime-genai renders none of Phi-3's and no leading dummy-prefix space
    whatever its options say ('\\nWhat is the capital of France?\\n\\n'), where Hugging Face gives
    '<s><|user|> \\nWhat ...'. Which of the three held is recorded (found running real-size Phi-3)."""
    tokenizer = source_tokenizer(source)
    matched = "exact"
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
        back, expected = decode(got), tokenizer.decode(want)
        if back == expected:
            continue
        if back.split() == expected.split():
            matched = "same words, other whitespace" if matched == "exact" else matched
        elif back.split() == tokenizer.decode(want, skip_special_tokens=True).split():
            matched = "same words without the special tokens"
        else:
            pos = first_difference(list(expected), list(back))
            return {
                "status": "failed",
                "reason": f"detokenizer mismatch at character {pos} for prompt {prompt!r}: {back[pos:pos + 20]!r}",
            }
    return {"status": "passed", "prompts": len(prompts), "decode": matched}


# OpenVINO and GenAI put source locations on lines of their own ("Exception from .../utils.cpp:500:",
# "Check 'x' failed at .../tokenizer_impl.cpp:627:"); the cause is the first line after them.
_SOURCE_LOCATION = re.compile(r"^(Exception from \S+:\d+:|Check .* failed at \S+:\d+:)$")


def one_line(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    useful = [line for line in lines if not _SOURCE_LOCATION.match(line)]
    return f"{type(e).__name__}: {(useful or lines or [''])[0]}"


def versions(*packages: str) -> dict[str, str]:
    return {name: version(name) for name in packages}


def provided(package: str, where: dict[str, str | None], name: str):
    """A backend package's module __getattr__: `name` from the submodule `where` names (None: the submodule `name`
    itself), imported on first use."""
    if name not in where:
        raise AttributeError(f"module {package!r} has no attribute {name!r}")
    module = importlib.import_module(f"{package}.{where[name] or name}")
    return module if where[name] is None else getattr(module, name)


def installed(packages: Sequence[str]) -> list[str]:
    """`name==version` of each package as installed, sorted; the local label dropped (torch 2.13.0+cpu and a CUDA
    2.13.0 trace the same graphs); `# name: not installed` where it is absent."""
    lines = []
    for name in sorted(packages):
        try:
            lines.append(f"{name}=={version(name).split('+', 1)[0]}")
        except PackageNotFoundError:
            lines.append(f"# {name}: not installed")
    return lines


def files_record(root: Path) -> dict[str, int]:
    """Every file an export wrote (relative posix path -> bytes): the `files` of each backend's export record."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in sorted(root.rglob("*")) if p.is_file()}


def prompt_record(prompt, text: str, *, prompt_tokens: int | None, new_tokens: int, ttft_ms: float | None,
                  tokens_per_s: float | None) -> dict:
    """One smoke prompt's answer and speed, as every backend records it (`prompt` is a params Prompt)."""
    return {
        "prompt": prompt.text,
        "text": text,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "ttft_ms": None if ttft_ms is None else round(ttft_ms, 2),
        "tokens_per_s": None if tokens_per_s is None else round(tokens_per_s, 2),
        "expect": prompt.expect,
        "contains_expect": None if prompt.expect is None else prompt.expect in text,
    }


def concluded(record: dict, error: BaseException | None = None) -> dict:
    """Set a smoke record's status and reason: failed with the error, or with its first failed check, else passed."""
    record["reason"] = one_line(error) if error is not None else first_failure(record)
    record["status"] = "failed" if record["reason"] else "passed"
    return record


def first_failure(record: dict) -> str | None:
    """The reason a smoke record fails, or None: a failed check, a run error, or a prompt with no output."""
    for check in ("tokenizer_parity", "chat_template"):
        if check in record and record[check]["status"] != "passed":
            return record[check]["reason"]
    for run in record["runs"]:
        label = f"{run['requested']} run" + (f" (on {run['device']})" if run["device"] != run["requested"] else "")
        if "error" in run:
            return f"{label}: {run['error']}"
        for p in run["prompts"]:
            if p["new_tokens"] == 0:
                return f"{label}: no tokens generated for prompt {p['prompt']!r}"
            if not p["text"].strip():
                return f"{label}: {p['new_tokens']} tokens but no text for prompt {p['prompt']!r}: {p['text']!r}"
    return None


# ---- onnxruntime-genai: shared by the backends whose artifacts it runs (onnx_genai, openvino_ep) ------------------


def genai_tokenizer_parity(model, source: Path, prompts: Sequence[str]) -> dict:
    """tokenizer_parity() of an onnxruntime-genai model's tokenizer."""
    import onnxruntime_genai as og

    # GenAI's decode drops special tokens by default; parity needs them back to reproduce the chat text.
    # Its encode never adds BOS, like the source ids taken without special tokens.
    full = og.Tokenizer(model)
    full.update_options(skip_special_tokens="false")
    return tokenizer_parity(source, prompts, full.encode, full.decode)


def genai_prompt(model, tokenizer, source: Path, prompt, max_new_tokens: int) -> dict:
    """One smoke prompt (a params Prompt) through an onnxruntime-genai model: its prompt_record()."""
    import numpy as np

    ids = tokenizer.encode(chat_text(source, prompt.text))
    new, start, first = genai_greedy(model, ids, max_new_tokens)
    end = time.perf_counter()
    answer = new[:-1] if new and new[-1] in set(tokenizer.eos_token_ids) else new
    text = tokenizer.decode(np.asarray(answer, dtype=np.int32))
    return prompt_record(prompt, text, prompt_tokens=len(ids), new_tokens=len(answer),
                         ttft_ms=(first - start) * 1000 if first else None,
                         # Decode speed: the tokens after the first, over the time after the first.
                         tokens_per_s=(len(new) - 1) / (end - first) if len(new) > 1 else None)


def genai_greedy(model, ids, max_new_tokens: int) -> tuple[list[int], float, float | None]:
    """Greedy new ids from an onnxruntime-genai model; when the prompt went in and when the first new id came out
    (perf_counter)."""
    import numpy as np
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    # Greedy, whatever genai_config.json's search section says; stops early at the eos ids stored there.
    params.set_search_options(do_sample=False, max_length=len(ids) + max_new_tokens)
    generator = og.Generator(model, params)
    start = time.perf_counter()
    generator.append_tokens(np.asarray(ids, dtype=np.int32))
    new: list[int] = []
    first = None
    while not generator.is_done():
        generator.generate_next_token()
        new.append(int(generator.get_next_tokens()[0]))
        first = first or time.perf_counter()
    return new, start, first


def genai_usage(repo: str, pip: str, *, imports: str = "", setup: str = "") -> str:
    """A model card's pip line and onnxruntime-genai snippet for hub repo `repo` (`imports`, `setup`: what a
    route adds before loading the model, e.g. registering an execution provider plugin)."""
    return f"""```sh
pip install {pip} huggingface_hub
```

```python
import huggingface_hub, {imports}onnxruntime_genai as og

{setup}path = huggingface_hub.snapshot_download("{repo}")
model = og.Model(path)
tokenizer = og.Tokenizer(model)
prompt = tokenizer.apply_chat_template('[{{"role": "user", "content": "What is the capital of France?"}}]',
                                       add_generation_prompt=True)
params = og.GeneratorParams(model)
params.set_search_options(max_length=128)
generator = og.Generator(model, params)
generator.append_tokens(tokenizer.encode(prompt))
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)))
```"""
