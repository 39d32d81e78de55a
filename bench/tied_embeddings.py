"""How each artifact holds a tied embedding: the input embedding and the output layer (LM head) stored once or
twice, in which precision, and the bytes of each. A checkpoint with `tie_word_embeddings` has one matrix for both;
an exporter may keep it shared, or write the output layer quantized beside an input embedding in another precision
(a duplicate the device then holds in memory).

    python bench/tied_embeddings.py [PROJECT] [--model smollm2] [--variants ov-int4,...]

PROJECT (default: this checkout) holds artifacts/<model>/<variant>/. Read from the files alone, nothing is run:
  - OpenVINO IRs (openvino, openvino_ep): the constants feeding the Gather on input_ids and the MatMul that makes
    the logits, through their decompression subgraphs (Convert / Subtract / Multiply / Reshape);
  - ONNX Runtime GenAI models: the initializers feeding the Gather / GatherBlockQuantized on input_ids and the
    MatMul / MatMulNBits that makes `logits`;
  - intel-npu-acceleration-library weights (npu_model.safetensors): model.embed_tokens.* and lm_head.*.
"stored" is "once" when both paths read the same constants (or the only copy), else "twice"; "together" is the
bytes of both paths' weights together; "differ" says whether the two paths' weight precisions differ.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MB = 1e6
SHORT = {"float32": "f32", "float16": "f16", "bfloat16": "bf16", "uint8": "u8", "int8": "i8"}  # OpenVINO's names


def _ir(xml: Path) -> dict:
    import openvino as ov

    model = ov.Core().read_model(xml)

    def constants(output) -> dict[str, tuple[str, int]]:
        """{name: (element type, bytes)} of the Constants upstream of `output`, not past a Parameter or a
        non-weight op (the walk stops at anything with more than weight-decompression inputs)."""
        found, stack, seen = {}, [output.get_node()], set()
        while stack:
            node = stack.pop()
            if node.get_name() in seen:
                continue
            seen.add(node.get_name())
            kind = node.get_type_name()
            if kind == "Constant":
                found[node.get_name()] = (node.get_element_type().get_type_name(), int(node.get_byte_size()))
            elif kind in ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze", "Squeeze"):
                stack.extend(i.get_source_output().get_node() for i in node.inputs())
        return found

    embed = None
    for op in model.get_ordered_ops():
        if op.get_type_name() == "Gather" and embed is None:
            ids = op.input(1).get_source_output().get_node()
            while ids.get_type_name() == "Convert":
                ids = ids.input(0).get_source_output().get_node()
            if ids.get_type_name() == "Parameter" and "input_ids" in ids.get_friendly_name():
                embed = constants(op.input(0).get_source_output())
    logits = next(r for r in model.get_results() if "logits" in r.input(0).get_source_output().get_names())
    node = logits.input(0).get_source_output().get_node()
    while node.get_type_name() != "MatMul":  # past Convert / Add / Slice to the LM head's MatMul
        node = node.input(0).get_source_output().get_node()
    head = constants(node.input(1).get_source_output())
    return {"embed": embed or {}, "head": head}


def _onnx(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graph = model.graph
    inits = {}
    for t in graph.initializer:
        size = next((int(e.value) for e in t.external_data if e.key == "length"), len(t.raw_data))
        kind = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name
        inits[t.name] = (SHORT.get(kind, kind), size)
    producer = {o: n for n in graph.node for o in n.output}

    def weights(names) -> dict[str, tuple[str, int]]:
        found, stack = {}, list(names)
        while stack:
            name = stack.pop()
            if name in inits:
                found[name] = inits[name]
            elif name in producer and producer[name].op_type in ("Reshape", "DequantizeLinear", "Cast", "Transpose"):
                stack.extend(producer[name].input)
        return found

    embed = next((weights([n.input[0]] + list(n.input[2:])) for n in graph.node
                  if n.op_type in ("Gather", "GatherBlockQuantized") and "input_ids" in n.input), {})
    node = producer["logits"]
    while node.op_type not in ("MatMul", "MatMulNBits"):
        node = producer[node.input[0]]
    head = weights(node.input[1:])
    if node.op_type == "MatMulNBits":
        fmt = "int4" if dict((a.name, a.i) for a in node.attribute).get("bits", 4) == 4 else "int8"
        head = {k: ((fmt if k.endswith(("_Q4", "_Q8")) else v[0]), v[1]) for k, v in head.items()}
    if embed and any(k.endswith(("_Q4", "_Q8")) for k in embed):  # GatherBlockQuantized over the same blocks
        embed = {k: (head.get(k, v)[0], v[1]) for k, v in embed.items()}
    return {"embed": embed, "head": head}


def _safetensors(path: Path) -> dict:
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    parts = {"embed": {}, "head": {}}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        size = spec["data_offsets"][1] - spec["data_offsets"][0]
        kind = "int4" if name.endswith("qweight") and spec["dtype"] == "U8" else spec["dtype"].lower()  # 2 a byte
        if name.startswith("model.embed_tokens."):
            parts["embed"][name] = (kind, size)
        elif name.startswith("lm_head."):
            parts["head"][name] = (kind, size)
    return parts


def inspect(artifact: Path) -> dict:
    if (artifact / "openvino_model.xml").is_file():
        parts = _ir(artifact / "openvino_model.xml")
    elif (artifact / "model.onnx").is_file():
        parts = _onnx(artifact / "model.onnx")
    elif (artifact / "npu_model.safetensors").is_file():
        parts = _safetensors(artifact / "npu_model.safetensors")
    else:
        return {"error": "no IR, ONNX model or npu_model.safetensors"}
    embed, head = parts["embed"], parts["head"]

    def precision(part):  # the largest constant is the weight matrix itself; the rest are scales / zero points
        return max(part.values(), key=lambda v: v[1])[0] if part else None

    shared = set(embed) & set(head)
    once = not embed or not head or shared == set(embed) or set(embed) <= set(head)
    embed_b, head_b = sum(v[1] for v in embed.values()), sum(v[1] for v in head.values())
    return {"embed": precision(embed), "embed_mb": embed_b / MB, "head": precision(head), "head_mb": head_b / MB,
            "stored": "once" if once else "twice",
            "together_mb": (max(embed_b, head_b) if once else embed_b + head_b) / MB,
            "differ": (not once) and precision(embed) != precision(head)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("project", nargs="?", default=str(ROOT))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--variants", default="", help="comma-separated; default every artifact with weights")
    args = ap.parse_args(argv)
    base = Path(args.project) / "artifacts" / args.model
    config = json.loads((base / "source" / "config.json").read_text()) if (base / "source").is_dir() else {}
    only = [v for v in args.variants.split(",") if v]
    print(f"{args.model}: tie_word_embeddings={config.get('tie_word_embeddings')}, vocab {config.get('vocab_size')}"
          f" x hidden {config.get('hidden_size')} (BF16/FP16 {2 * config.get('vocab_size', 0) * config.get('hidden_size', 0) / MB:.0f} MB)")
    print(f"{'variant':<20} {'embedding':<18} {'output layer':<18} {'stored':<7} {'together':>9}  differ")
    for artifact in sorted(p for p in base.iterdir() if p.is_dir() and (not only or p.name in only)):
        if artifact.name in ("source", "reference"):
            continue
        row = inspect(artifact)
        if "error" in row:
            continue
        print(f"{artifact.name:<20} {row['embed'] or '-':<7} {row['embed_mb']:>8.1f} MB  {row['head'] or '-':<7} "
              f"{row['head_mb']:>8.1f} MB  {row['stored']:<7} {row['together_mb']:>6.1f} MB  {'yes' if row['differ'] else 'no'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
