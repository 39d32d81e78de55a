"""What a release of an ONNX Runtime GenAI model says about itself: its hub library and tags, the model builder
command that makes the same artifact, and how to run it."""

from __future__ import annotations

from pipeline.backends.onnx_genai.builder import builder_options
from pipeline.backends.onnx_genai.params import OnnxGenaiVariant

LIBRARY = "onnx"  # huggingface.co's library name; the runtime goes in the tags
RUNTIME = "onnxruntime-genai"


def tags(variant: OnnxGenaiVariant) -> list[str]:
    return [variant.execution_provider]


def upstream(src: str, dst: str, variant: OnnxGenaiVariant) -> str:
    extra = " ".join(f"{k}={v}" for k, v in builder_options(variant).items())
    return (f"python -m onnxruntime_genai.models.builder -i {src} -o {dst} -p {variant.precision} "
            f"-e {variant.execution_provider} --extra_options {extra}")


def usage(repo: str, variant: OnnxGenaiVariant) -> str:
    pip = "onnxruntime-genai-directml" if variant.execution_provider == "dml" else "onnxruntime-genai"
    return f"""```sh
pip install {pip} huggingface_hub
```

```python
import huggingface_hub, onnxruntime_genai as og

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
```"""
