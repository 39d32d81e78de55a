"""Runs inside the intel-npu-acceleration-library environment (create.py), one command per process: the library
aborts on a second compile in a process that already generated (DESIGN.md). From `pipeline` it imports only
`pipeline.weights` and `pipeline.record` (the standard library and torch, which this environment has; library.py puts
the project on its path).

    worker.py export SOURCE OUT int4|int8 REQUEST.json RESULT.json
    worker.py run ARTIFACT REQUEST.json RESULT.json

REQUEST.json: {"logits": [[ids...], ...]} and/or {"generate": [{"ids": [...], "max_new_tokens": n}, ...]}.
RESULT.json gets the answers; the logits of sequence i go to RESULT.json's sibling `logits-<i>.npy` (float32
[len(ids), vocab]). Several forward passes in one process are fine (bit-identical to one per process); it is
compiling after generate() that aborts.

The artifact is portable: `npu_model.safetensors` (every QuantizedLinear's packed weight and scale, plus the float
tensors of state_dict()), `npu_model.json` (format, library version, dtype, which modules are quantized), and the
source's config/tokenizer files. No pickle, no absolute path. `load` rebuilds the model from them without
re-quantizing: the library keeps quantized weights as plain tensor attributes of its QuantizedLinear modules
(`weight`: int8, or uint8 with two int4 codes per byte; `scale`: fp16 per output channel, already multiplied by
sqrt(in_features) as its __init__ does), which is why state_dict() does not hold them.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

FORMAT = "aipc-npu-library/1"
WEIGHTS = "npu_model.safetensors"
MANIFEST = "npu_model.json"
COPIED = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
          "special_tokens_map.json", "tokenizer.model", "chat_template.jinja")
FALLBACK = "no NPU: the library ran OpenVINO kernels on CPU"


def _device() -> dict:
    from intel_npu_acceleration_library.backend import npu_available

    npu = bool(npu_available())
    return {"requested": "NPU", "device": "NPU" if npu else "CPU", "fallback": None if npu else FALLBACK}


def export(source: Path, out: Path, dtype: str) -> tuple[object, dict]:
    from pipeline.record import Phases

    phases = Phases("npu-lib export")  # its lines reach the stage's log: library.py streams this process's stderr
    with phases("import"):
        import torch
        from intel_npu_acceleration_library import int4, int8
        from transformers import AutoModelForCausalLM

    # What NPUModelForCausalLM.from_pretrained(src, use_cache=True, config=CompilerConfig(dtype=...), export=False)
    # does (its export=True cache is a pickle of the whole module under a path derived from the absolute source
    # path, which current torch refuses to load; the safetensors below replace it), with two steps changed. Tied
    # embeddings are untied first: quantizing a tied lm_head corrupts the model (measured: int8 logit cosine 0.96
    # on a tied tiny Phi-3 against 0.9998 untied, and SmolLM2 answered only newlines); untied, the float embedding
    # table and the quantized lm_head are separate tensors and the maths is unchanged. And compile() runs a decoder
    # layer at a time (_compile).
    with phases("load"):
        model = AutoModelForCausalLM.from_pretrained(str(source), use_cache=True)
        if model.config.tie_word_embeddings:
            model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
            model.config.tie_word_embeddings = False
    with phases("quantize a decoder layer at a time, compile"):
        model = _compile(model, {"int4": int4, "int8": int8}[dtype], source)
    with phases("save"):
        manifest = _save(model, source, out, dtype)
    return model, {"phases": phases.seconds, "quantized_layers": len(manifest["quantized_modules"]),
                   "library_version": manifest["library_version"], **_device()}


def _save(model, source: Path, out: Path, dtype: str) -> dict:
    import intel_npu_acceleration_library as lib
    import torch
    from intel_npu_acceleration_library.nn.linear import QuantizedLinear
    from safetensors.torch import save_file

    tensors, quantized = {}, {}
    for name, module in model.named_modules():
        if isinstance(module, QuantizedLinear):
            if module.bias is not None:
                tensors[f"{name}.bias"] = module.bias.detach().contiguous()
            tensors[f"{name}.qweight"] = module.weight.contiguous()
            tensors[f"{name}.scale"] = module.scale.contiguous()
            quantized[name] = {"out_features": int(module.outC), "bias": module.bias is not None,
                               "weight_dtype": str(module.weight.dtype).removeprefix("torch."),
                               "scale_dtype": str(module.scale.dtype).removeprefix("torch.")}
        elif isinstance(module, torch.nn.Linear):
            raise RuntimeError(f"{name}: left as torch.nn.Linear by the library; this exporter expects every "
                               "linear layer quantized")
    floats = model.state_dict()
    clash = set(floats) & set(tensors)
    if clash:
        raise RuntimeError(f"state_dict and quantized tensors overlap: {sorted(clash)[:3]}")
    tensors.update({k: v.detach().contiguous() for k, v in floats.items()})
    out.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(out / WEIGHTS), metadata={"format": FORMAT})
    model.config.save_pretrained(out)
    for name in COPIED[1:]:
        if (source / name).is_file():
            shutil.copy2(source / name, out / name)
    manifest = {
        "format": FORMAT,
        "library": "intel-npu-acceleration-library",
        "library_version": lib.__version__,
        "dtype": dtype,
        "torch_dtype": str(model.dtype).removeprefix("torch."),
        "quantization": "per-output-channel symmetric RTN (neural-compressor weight_only, group_size -1)",
        "quantized_modules": quantized,
        "float_tensors": sorted(floats),
        "weights": WEIGHTS,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _compile(model, dtype, source: Path):
    """npu_lib.compile(model, CompilerConfig(dtype=dtype)), a decoder layer at a time.

    compile() hands the whole model to neural-compressor, whose RTN writes a fake-quantized copy of every weight
    while the checkpoint's pages it read stay mapped: 2.07x the checkpoint's bytes on Phi-3-mini (15.8 GB). Its RTN
    is per output channel of one weight at a time, so quantizing each decoder layer on its own (then the rest: the
    lm_head), and handing that layer's checkpoint pages back after it, gives the same tensors byte for byte (tested
    against compile()) with one layer in flight."""
    import torch
    from intel_npu_acceleration_library.compiler import (
        apply_general_optimizations,
        create_npu_kernels,
        weights_quantization,
    )
    from intel_npu_acceleration_library.quantization import quantize_model

    from pipeline.weights import page_out

    with torch.no_grad():
        apply_general_optimizations(model)
        layers = model.get_decoder().layers
        for i, layer in enumerate(layers):
            layers[i] = quantize_model(layer, dtype)
            page_out(source)
            print(f"npu-lib: decoder layer {i + 1}/{len(layers)} quantized", file=sys.stderr, flush=True)
        model = quantize_model(model, dtype)  # what is left: the lm_head
        weights_quantization(model)
        create_npu_kernels(model)
    return model.eval()


def load(artifact: Path):
    """Rebuild the library's model from the portable files, without quantizing anything."""
    import torch
    from intel_npu_acceleration_library.compiler import (
        apply_general_optimizations,
        create_npu_kernels,
    )
    from intel_npu_acceleration_library.nn.linear import QuantizedLinear
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    manifest = json.loads((artifact / MANIFEST).read_text())
    if manifest.get("format") != FORMAT:
        raise RuntimeError(f"{artifact / MANIFEST}: format {manifest.get('format')!r}, expected {FORMAT!r}")
    tensors = load_file(str(artifact / manifest["weights"]))
    config = AutoConfig.from_pretrained(artifact)
    # Every weight is overwritten below (a QuantizedLinear, or load_state_dict(strict=True)): without the random
    # init, the float model from_config makes is never written, so never resident (and Phi-3-mini's is 7.6 GB).
    with torch.no_grad(), no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, manifest["torch_dtype"]))
    with torch.no_grad():
        # What compile() does before quantizing (fusions, attention rewrites), so module names line up.
        apply_general_optimizations(model)
        for name, spec in manifest["quantized_modules"].items():
            weight = tensors.pop(f"{name}.qweight")
            scale = tensors.pop(f"{name}.scale")
            layer = QuantizedLinear(weight, scale, tensors.pop(f"{name}.bias", None))
            layer.scale = scale  # the stored scale already carries __init__'s sqrt(in_features) factor
            model.set_submodule(name, layer)
        model.load_state_dict(tensors, strict=True)
        create_npu_kernels(model)
    return model.eval()


def answer(model, request: dict, result_path: Path) -> dict:
    import numpy as np
    import torch

    result: dict = {}
    with torch.no_grad():
        shapes = []
        for i, sequence in enumerate(request.get("logits", [])):
            ids = torch.tensor([sequence], dtype=torch.long)
            logits = model(ids, use_cache=False).logits[0].float().numpy()
            np.save(result_path.with_name(f"logits-{i}.npy"), logits.astype(np.float32))
            shapes.append(list(logits.shape))
        if shapes:
            result["logits_shapes"] = shapes
        runs = []
        for item in request.get("generate", []):
            ids = torch.tensor([item["ids"]], dtype=torch.long)
            start = time.perf_counter()
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=item["max_new_tokens"],
                                 do_sample=False)
            seconds = time.perf_counter() - start
            runs.append({"new_ids": out[0, ids.shape[1]:].tolist(), "seconds": round(seconds, 4)})
        if runs:
            result["generate"] = runs
    return result


def main(argv: list[str]) -> None:
    command, *args = argv
    if command == "export":
        source, out, dtype, request, result = args
        model, record = export(Path(source), Path(out), dtype)
    elif command == "run":
        artifact, request, result = args
        start = time.perf_counter()
        model = load(Path(artifact))
        record = {"load_s": round(time.perf_counter() - start, 2), **_device()}
    else:
        raise SystemExit(f"unknown command {command!r}")
    record.update(answer(model, json.loads(Path(request).read_text()), Path(result)))
    Path(result).write_text(json.dumps(record))


if __name__ == "__main__":
    main(sys.argv[1:])
    # Skip interpreter teardown: after generate() it segfaults now and then in torch.library's atexit finalizers
    # (measured: 1 run in 6 exits -11 with its result already written). Everything is on disk by now.
    sys.stdout.flush()
    sys.stderr.flush()
    import os

    os._exit(0)
