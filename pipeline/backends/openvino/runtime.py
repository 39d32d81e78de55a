"""Running an OpenVINO IR: the smoke run through openvino-genai (and the NPU pipeline), teacher-forced logits from
an infer request and greedy answers from openvino-genai, both in f32 (F32)."""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.backends.common import (
    chat_text,
    concluded,
    ov_context_cost,
    ov_feed,
    one_line,
    prompt_record,
    tokenizer_parity,
    versions,
)
from pipeline.backends.openvino.calibration import prefill
from pipeline.backends.openvino.params import OpenVINOVariant
from pipeline.backends.openvino.readback import MODEL_XML

if TYPE_CHECKING:
    from pipeline.params import ContextParams, SmokeParams

# OpenVINO on CPU in f32, for the quality stage and the C++ runner's parity check: the CPU plugin otherwise picks
# bf16 (on CPUs with AVX512-BF16/AMX), an f16/u8 KV cache and dynamic int8 activations, each of which moves the
# numbers away from what the stored weights do and can flip a near-tie between two paths.
F32 = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32", "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0"}
# Runs GenAI's NPU (static-shape) pipeline on the CPU where no NPU exists. `AUTO:NPU,CPU` would silently run the
# ordinary CPU pipeline instead, and compiling for "NPU" alone fails without the device (DESIGN.md).
NPU_ON_CPU = {"NPUW_DEVICES": "CPU"}
# OpenVINO 2026.4's NPU pipeline cuts the prefill and generate models into subgraphs (NPUW's online partitioning) and
# fails on some with "Model references undeclared parameters" (issue #25: Phi-4-mini's 128-wide partial-rotary heads
# at 1-4 layers; its 32 pass): openvino's src/plugins/intel_npu/src/plugin/npuw/partitioning/partitioning.cpp,
# Partitioner::identifySubgraphs, hands the Result behind the KV-cache output's Convert to the producer's group also
# when the Convert sits in another group. Compiled whole (GenAI does the same for its small NPU models: Whisper,
# the Eagle3 draft, src/cpp/src/utils.cpp) they run; the run is retried so, and says so.
NPUW_WHOLE = {"NPUW_ONLINE_PIPELINE": "NONE"}
NPUW_CUT_BUG = "Model references undeclared parameters"
CPU_SMOKE = {"INFERENCE_PRECISION_HINT": "f32"}


def smoke(artifact: Path, variant: OpenVINOVariant, smoke: SmokeParams, source: Path) -> dict:
    """Generate for each chat prompt with openvino-genai (and through the NPU pipeline for NPU variants); check the
    tokenizer IRs against the source tokenizer. Never raises for a failed run: it becomes the record's reason."""
    record = {
        "status": "failed",
        "reason": None,
        "tokenizer_parity": None,
        "chat_template": None,
        "runs": [],
        "versions": versions("openvino", "openvino-genai", "openvino-tokenizers"),
    }
    texts = [p.text for p in smoke.prompts]
    try:
        import openvino as ov
        import openvino_genai

        tokenizer = openvino_genai.Tokenizer(str(artifact))
        record["tokenizer_parity"] = tokenizer_parity(
            source,
            texts,
            encode=lambda text: tokenizer.encode(text, add_special_tokens=False).input_ids.data[0],
            decode=lambda ids: tokenizer.decode(list(ids), skip_special_tokens=False),
        )
        record["chat_template"] = _chat_template_parity(tokenizer, source, texts)
        # f32 execution, the rest runtime defaults (u8 KV cache, int8 activations into compressed weights): that is
        # what an AI PC's client CPU runs, having no bf16. On a CPU with AVX512-BF16/AMX (these build machines) the
        # plugin defaults to bf16, and the embedded 135M model's FP16 IR then answers the capital-of-France prompt
        # with "L'Étoile, la Marseillaise, ..." instead of "The capital of France is Paris." (measured).
        record["runs"].append(_run(artifact, "CPU", "CPU", CPU_SMOKE, None, smoke))
        if variant.npu:
            npu_config = {"MAX_PROMPT_LEN": smoke.npu_max_prompt_len, "MIN_RESPONSE_LEN": smoke.npu_min_response_len}
            if "NPU" in ov.Core().available_devices:
                record["runs"].append(_npu_run(artifact, "NPU", npu_config, None, smoke))
            else:
                fallback = "no NPU device: the NPU pipeline ran on CPU (NPUW_DEVICES=CPU)"
                record["runs"].append(_npu_run(artifact, "CPU", {**npu_config, **NPU_ON_CPU}, fallback, smoke))
    except Exception as e:
        return concluded(record, e)
    return concluded(record)


def _chat_template_parity(tokenizer, source: Path, prompts: Sequence[str]) -> dict:
    # GenAI renders string prompts with the template stored in the tokenizer IR (optimum may have replaced it by a
    # "simplified" one); the model must see what the source's own template renders.
    for prompt in prompts:
        ours = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True)
        want = chat_text(source, prompt)
        if ours != want:
            return {"status": "failed", "reason": f"chat template renders {prompt!r} as {ours!r}, source as {want!r}"}
    return {"status": "passed", "prompts": len(prompts)}


def _npu_run(artifact: Path, device: str, config: dict, fallback: str | None, smoke: SmokeParams) -> dict:
    run = _run(artifact, "NPU", device, config, fallback, smoke)
    if NPUW_CUT_BUG not in run.get("error", ""):
        return run
    whole = "NPUW's partitioning failed (an OpenVINO 2026.4 bug), compiled whole (NPUW_ONLINE_PIPELINE=NONE)"
    return _run(artifact, "NPU", device, {**config, **NPUW_WHOLE}, f"{fallback}; {whole}" if fallback else whole, smoke)


def _run(artifact: Path, requested: str, device: str, config: dict, fallback: str | None, smoke: SmokeParams) -> dict:
    import openvino_genai

    run = {"requested": requested, "device": device, "fallback": fallback, "config": config, "prompts": []}
    try:
        start = time.perf_counter()
        pipe = openvino_genai.LLMPipeline(str(artifact), requested, **config)
        run["load_s"] = round(time.perf_counter() - start, 2)
        # Start from the artifact's generation_config.json so its stop tokens (eos ids) stay in force.
        generation = pipe.get_generation_config()
        generation.max_new_tokens = smoke.max_new_tokens
        generation.do_sample = False
        for prompt in smoke.prompts:
            # A list gives DecodedResults with perf metrics (a bare string returns just the text). GenAI applies
            # the chat template to string prompts; prompt_tokens shows it did (the templated length).
            result = pipe.generate([prompt.text], generation)
            metrics = result.perf_metrics
            text = result.texts[0]
            run["prompts"].append(prompt_record(
                prompt, text, prompt_tokens=int(metrics.get_num_input_tokens()),
                new_tokens=int(metrics.get_num_generated_tokens()), ttft_ms=float(metrics.get_ttft().mean),
                tokens_per_s=float(metrics.get_throughput().mean)))
    except Exception as e:
        run["error"] = one_line(e)
    return run


def runtime_settings(variant: OpenVINOVariant) -> dict[str, str]:
    """The CPU plugin properties a variant asks for at run time (its card's snippet passes the same)."""
    settings = {"KV_CACHE_PRECISION": variant.kv_cache_precision}
    if variant.dynamic_quantization_group_size is not None:
        settings["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = str(variant.dynamic_quantization_group_size)
    return settings


def context_cost(artifact: Path, variant: OpenVINOVariant, context: ContextParams, lengths: list[int]) -> dict:
    """Time to first token, decode speed and peak RSS at each context length, on the CPU plugin with its defaults
    (bf16 where the CPU has it, as openvino-genai users get) and the variant's runtime settings."""
    return ov_context_cost(Path(artifact) / MODEL_XML, runtime_settings(variant), lengths, context.new_tokens,
                           Path(artifact).name)


def kv_cache_logits(artifact: Path, variant: OpenVINOVariant, input_ids: Sequence[int], precision: str,
                    chunk: int) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab] with the ids fed `chunk` at a time, so every later chunk attends
    to keys and values read back from a KV cache of `precision`; f32 arithmetic otherwise (as logits())."""
    import openvino as ov

    _compiled_f32.cache_clear()  # one compiled copy at a time (real size)
    compiled = ov.Core().compile_model(str(Path(artifact) / MODEL_XML), "CPU", {**F32, "KV_CACHE_PRECISION": precision})
    request = compiled.create_infer_request()
    request.reset_state()
    out = [np.asarray(request.infer(ov_feed(input_ids[i:i + chunk], past=i))["logits"][0], dtype=np.float32)
           for i in range(0, len(input_ids), chunk)]
    return np.concatenate(out)


@functools.lru_cache(maxsize=1)
def _compiled_f32(xml: str, mtime_ns: int):
    """The IR compiled once per process for the quality stage's several logits() calls (keyed on mtime too, so an
    IR rewritten in place is recompiled)."""
    import openvino as ov

    # f32, so the numbers show what the stored weights do and not the CPU plugin's defaults (F32).
    return ov.Core().compile_model(xml, "CPU", F32)


def logits(artifact: Path, variant: OpenVINOVariant, input_ids: Sequence[int]) -> np.ndarray:
    """Teacher-forced logits [len(input_ids), vocab], float32, from one pass of the IR on CPU."""
    xml = Path(artifact) / MODEL_XML
    request = _compiled_f32(str(xml), xml.stat().st_mtime_ns).create_infer_request()
    request.reset_state()  # stateful model: the KV cache lives in the request
    outputs = request.infer(prefill(input_ids))
    return np.asarray(outputs["logits"][0], dtype=np.float32)


def generate(artifact: Path, variant: OpenVINOVariant, prompts: Sequence[Sequence[int]], max_new_tokens: int
             ) -> list[list[int]]:
    """Greedy new ids for each tokenized prompt, from openvino-genai on CPU in f32 (as logits()); stops at the
    artifact's eos ids."""
    import openvino_genai

    # The quality stage asks for logits() first: its compiled model would stay alive beside the pipeline's own
    # compilation (Phi-3-mini FP16: 23.0 GB peak with both, on a 24 GiB machine).
    _compiled_f32.cache_clear()
    pipe = openvino_genai.LLMPipeline(str(artifact), "CPU", **F32)
    return [greedy(pipe, ids, max_new_tokens) for ids in prompts]


def greedy(pipe, ids: Sequence[int], max_new_tokens: int, *, ignore_eos: bool = False) -> list[int]:
    """Greedy new ids after the prompt `ids` from an openvino-genai LLMPipeline. Token ids in, token ids out: no chat
    template and no tokenizer IR between the prompt and the model. The pipeline's own generation config (the
    artifact's) is the base, so its stop ids stay in force unless `ignore_eos`."""
    import openvino as ov
    import openvino_genai

    config = pipe.get_generation_config()
    config.max_new_tokens, config.do_sample, config.ignore_eos = max_new_tokens, False, ignore_eos
    prompt = openvino_genai.TokenizedInputs(ov.Tensor(np.asarray([ids], dtype=np.int64)),
                                            ov.Tensor(np.ones((1, len(ids)), dtype=np.int64)))
    return [int(t) for t in pipe.generate(prompt, config).tokens[0]]
