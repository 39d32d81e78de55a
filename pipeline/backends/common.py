"""What every backend shares: the chat prompt as the source tokenizer renders it, tokenizer parity, the smoke
record's shape, one-line errors, and the export record's file list and versions."""

from __future__ import annotations

import importlib
import re
import sys
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


# ---- context cost: the points each backend's context_cost() measures (pipeline/devicecost.py derives from them) ----


def context_ids(n: int, vocab: int) -> list[int]:
    """`n` prompt ids for a cost run: a fixed walk over the vocabulary (time and memory do not depend on which)."""
    return [(7 + i * 7919) % vocab for i in range(n)]


def _peak_rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024


def context_points(step: Callable[[int, int], tuple[float, float]], lengths: Sequence[int], new_tokens: int,
                   label: str) -> list[dict]:
    """For each context length n: `step(n, new_tokens)` prefills n ids and decodes new_tokens more, returning
    (seconds to the first new token, decode tokens/s after it); beside them the process's peak RSS during that step
    alone (Linux resets the high-water mark on writing 5 to clear_refs)."""
    import gc

    step(16, 2)  # warm-up: the runtime's first call compiles kernels the timed ones should not pay for
    points = []
    for n in lengths:
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")
        ttft_s, decode = step(n, new_tokens)
        points.append({"tokens": n, "ttft_ms": round(ttft_s * 1000, 1), "decode_tokens_per_s": round(decode, 2),
                       "peak_rss_mb": round(_peak_rss_mb(), 1)})
        print(f"[smoke] {label}: {n}-token context: first token {ttft_s:.2f} s, {decode:.1f} tokens/s, peak RSS "
              f"{points[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
    return points


def ov_feed(ids: Sequence[int], past: int = 0) -> dict:
    """The stateful decoder IR's inputs for `ids` after `past` positions already in its state (its KV cache)."""
    import numpy as np

    n = len(ids)
    return {"input_ids": np.asarray([ids], dtype=np.int64),
            "attention_mask": np.ones((1, past + n), dtype=np.int64),
            "position_ids": np.arange(past, past + n, dtype=np.int64)[None],
            "beam_idx": np.zeros((1,), dtype=np.int32)}


def ov_last_logits(model) -> None:
    """Compute the logits of the last position only, as openvino-genai's pipelines do to a decoder IR (whose logits
    output holds every position's: a 4k prompt's would be 4096 x vocab floats): a Slice before the LM head."""
    from openvino import opset13 as ops

    node = model.output("logits").get_node()
    while node.get_type_name() != "MatMul":  # through the Result and any Convert / scaling after the head
        node = node.input_value(0).get_node()
    hidden = node.input_value(0)
    last = ops.slice(hidden, [-1], [2**62], [1], [1])
    node.input(0).replace_source_output(last.output(0))
    model.validate_nodes_and_infer_types()


def ov_step(compiled, vocab: int) -> Callable[[int, int], tuple[float, float]]:
    """context_points()'s step over a compiled stateful decoder IR: the prompt in one pass, then one id a step."""
    request = compiled.create_infer_request()

    def step(n: int, new_tokens: int) -> tuple[float, float]:
        request.reset_state()
        start = time.perf_counter()
        token = int(request.infer(ov_feed(context_ids(n, vocab)))["logits"][0, -1].argmax())
        first = time.perf_counter()
        for i in range(new_tokens):
            token = int(request.infer(ov_feed([token], past=n + i))["logits"][0, -1].argmax())
        return first - start, new_tokens / (time.perf_counter() - first)

    return step


def ov_context_cost(xml: Path, config: dict, lengths: Sequence[int], new_tokens: int, label: str) -> dict:
    """context_points() of an OpenVINO IR on the CPU plugin with `config`, and the settings read back from the
    compiled model that ran them."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(xml))
    ov_last_logits(model)
    vocab = model.output("logits").get_partial_shape()[2].get_length()
    compiled = core.compile_model(model, "CPU", config)
    del model  # its mapped weights: the compiled model holds what it runs on (FP16 on bf16: a converted copy)
    read = {k: compiled.get_property(k) for k in OV_COST_SETTINGS}
    settings = {k: v.get_type_name() if hasattr(v, "get_type_name") else str(v) for k, v in read.items()}
    return {"measured": True, "device": "CPU", "settings": settings,
            "kv_element_bytes": read["KV_CACHE_PRECISION"].bitwidth / 8,
            "runtime": f"OpenVINO {ov.get_version().split('-', 1)[0]} (the IR's stateful infer request, the prompt "
                       "in one pass)",
            "kv_cache": f"{settings['KV_CACHE_PRECISION']} (OpenVINO's KV_CACHE_PRECISION)",
            "kv_cache_options": OV_KV_OPTIONS,
            "points": context_points(ov_step(compiled, vocab), lengths, new_tokens, label)}


OV_COST_SETTINGS = ("INFERENCE_PRECISION_HINT", "KV_CACHE_PRECISION", "DYNAMIC_QUANTIZATION_GROUP_SIZE",
                    "INFERENCE_NUM_THREADS")
OV_KV_OPTIONS = ("OpenVINO's CPU plugin takes KV_CACHE_PRECISION as a property (u8 is already its x86 default; "
                 "f16 and f32 double and quadruple the cache); with openvino-genai: "
                 "LLMPipeline(path, \"CPU\", KV_CACHE_PRECISION=\"u8\").")


def genai_step(model, vocab: int) -> Callable[[int, int], tuple[float, float]]:
    """context_points()'s step through an onnxruntime-genai model."""
    import numpy as np
    import onnxruntime_genai as og

    def step(n: int, new_tokens: int) -> tuple[float, float]:
        params = og.GeneratorParams(model)
        # min_length: no early stop at an eos id, so every length decodes the same number of tokens
        params.set_search_options(do_sample=False, max_length=n + new_tokens + 1, min_length=n + new_tokens + 1)
        generator = og.Generator(model, params)
        start = time.perf_counter()
        generator.append_tokens(np.asarray(context_ids(n, vocab), dtype=np.int32))
        generator.generate_next_token()
        first = time.perf_counter()
        for _ in range(new_tokens):
            generator.generate_next_token()
        return first - start, new_tokens / (time.perf_counter() - first)

    return step


def genai_context_cost(model, artifact: Path, lengths: Sequence[int], new_tokens: int, label: str, *,
                       settings: dict, kv_cache: str, kv_element_bytes: float | None, kv_cache_options: str
                       ) -> dict:
    """context_points() of an onnxruntime-genai model, with what the caller read back of its settings."""
    import json

    vocab = json.loads((Path(artifact) / "genai_config.json").read_text())["model"]["vocab_size"]
    return {"measured": True, "device": model.device_type, "settings": settings,
            "runtime": f"onnxruntime-genai {versions('onnxruntime-genai')['onnxruntime-genai']}",
            "kv_cache": kv_cache, "kv_element_bytes": kv_element_bytes, "kv_cache_options": kv_cache_options,
            "points": context_points(genai_step(model, vocab), lengths, new_tokens, label)}
