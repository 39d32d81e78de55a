"""Stage `runner@<model>`: our C++ OpenVINO runner (build_native/ov_runner), installed from its wheel, decodes the
model's FP16 IR; its tokens must equal openvino-genai's."""

from __future__ import annotations

import time
from pathlib import Path

from build_native import runner as ov_runner
from pipeline import fsutil
from pipeline.backends.openvino.runtime import F32, greedy
from pipeline.errors import PipelineError
from pipeline.layout import IR_FP16, NATIVE


def stage(params, layout, model: str) -> dict:
    """`aipc runner <model>`: install the runner's wheel, then decode each chat prompt with it and with
    openvino-genai from the same prompt ids, both in f32 and stopping at the IR's stop tokens; the tokens must be
    equal (metrics/<model>/ir-fp16/runner.json, and the stage fails if they are not)."""
    ir = layout.artifact(model, IR_FP16)
    fsutil.verify_manifest(ir)
    wheel = ov_runner.runner_wheel_file(layout.root / "artifacts" / NATIVE / "ov_runner")
    record = check_runner(ir, [p.text for p in params.smoke.prompts], params.smoke.max_new_tokens, wheel)
    fsutil.write_json(layout.metrics(model, IR_FP16, "runner"), record)
    if record["status"] != "passed":
        raise PipelineError(f"native runner on {model}/{IR_FP16}: {record['reason']}")
    return record


def check_runner(ir_dir: Path, prompts: list[str], max_new_tokens: int, wheel: Path) -> dict:
    """The runner against openvino-genai on `ir_dir`; never raises for a mismatch: it becomes the record's reason."""
    import openvino_genai

    start = time.perf_counter()
    binary = ov_runner.install_runner(wheel)
    record = {"status": "passed", "reason": None, "wheel": Path(wheel).name,
              "wheel_sha256": fsutil.sha256_file(wheel), "binary": str(binary),
              "install_s": round(time.perf_counter() - start, 2), "properties": F32, "prompts": []}
    tokenizer = openvino_genai.Tokenizer(str(ir_dir))
    pipe = openvino_genai.LLMPipeline(str(ir_dir), "CPU", **F32)
    eos = tuple(sorted(pipe.get_generation_config().stop_token_ids))
    for text in prompts:
        # GenAI renders string prompts with the IR's chat template; the runner gets exactly those ids.
        chat = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        ids = [int(i) for i in tokenizer.encode(chat, add_special_tokens=False).input_ids.data[0]]
        ours = ov_runner.runner_json(binary, ir_dir, ids, max_new_tokens, detokenize=True, eos=eos, properties=F32)
        theirs = greedy(pipe, ids, max_new_tokens)
        match = ours["tokens"] == theirs
        record["prompts"].append({"prompt": text, "prompt_tokens": len(ids), "runner_tokens": ours["tokens"],
                                  "genai_tokens": theirs, "match": match, "text": ours["text"],
                                  "ttft_ms": round(ours["ttft_ms"], 2), "tokens_per_s": round(ours["tokens_per_s"], 2)})
        if not match and record["reason"] is None:
            first = next((i for i, (a, b) in enumerate(zip(ours["tokens"], theirs)) if a != b),
                         min(len(ours["tokens"]), len(theirs)))
            record["status"] = "failed"
            record["reason"] = f"prompt {text!r}: runner and openvino-genai tokens differ from position {first}"
    return record
