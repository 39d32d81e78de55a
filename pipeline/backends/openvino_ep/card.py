"""What a release of a model for the OpenVINO execution provider says about itself: its hub library and tags, the
upstream command that makes the same artifact (Olive's OpenVINOEncapsulation pass), and how to run it."""

from __future__ import annotations

from pipeline.backends.common import versions
from pipeline.backends.openvino_ep import plugin_openvino
from pipeline.backends.openvino_ep.params import OpenVINOEPVariant

LIBRARY = "onnx"  # huggingface.co's library name; the runtime and the EP go in the tags
RUNTIME = "onnxruntime-genai"


def tags(variant: OpenVINOEPVariant) -> list[str]:
    return ["openvino-ep", "windows-ml", variant.device.lower()]


def upstream(src: str, dst: str, variant: OpenVINOEPVariant) -> str:
    # Olive 0.13's pass over an OpenVINO IR (here the wrapped variant's, which `src` was converted into).
    config = ('{"input_model": {"type": "OpenVINOModel", "model_path": "' + f"artifacts/<model>/{variant.wraps}"
              + '"}, "passes": {"wrap": {"type": "OpenVINOEncapsulation", "target_device": "'
              + variant.device.lower() + '"}}, "output_dir": "' + dst + '"}')
    return f"olive run --config <(echo '{config}')"


def usage(repo: str, variant: OpenVINOEPVariant) -> str:
    pins = " ".join(f"{name}=={v}" for name, v in versions("onnxruntime-genai", "onnxruntime-ep-openvino").items())
    return f"""Built and checked with {pins.replace(" ", ", ")} (the EP bundles OpenVINO {plugin_openvino()}, which reads this
IR). On Windows 11 with Windows ML (which installs Intel's OpenVINO execution provider on Intel machines) or
Foundry Local, load the folder as an ONNX Runtime GenAI model; genai_config.json asks for the OpenVINO provider on
`{variant.device}`. Anywhere else, with the EP from PyPI (it claims Intel CPUs, GPUs and NPUs only):

```sh
pip install {pins} huggingface_hub
```

```python
import huggingface_hub, onnxruntime_ep_openvino, onnxruntime_genai as og

og.register_execution_provider_library("OpenVINO", onnxruntime_ep_openvino.get_library_path())
path = huggingface_hub.snapshot_download("{repo}")
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
```

To run it on another OpenVINO device than `{variant.device}`, change `device_type` in genai_config.json (CPU, GPU,
NPU)."""
