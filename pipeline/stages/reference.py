"""Stage `reference@<model>`: what the PyTorch checkpoint says about the eval set, for `quality` to compare with.

Computed in float64 and stored in float32, so that the stored bytes do not depend on the CPU: float32 arithmetic
gives different last bits with other kernels (another vendor's, another ISA's: AVX2 vs AVX-512 changed 1000 tokens'
logits here), float64 arithmetic rounded to float32 gives the same float32 unless a value lies within float64's
error of a rounding boundary, about once in 10^7 values. tests/test_quality.py runs it with AVX2 kernels beside the
host's own and compares the bytes. It is still "the FP32 reference" everywhere: the checkpoint's own values, computed
more exactly than float32 would.

artifacts/<model>/reference/ holds
  reference.json   the eval set as run: each sequence's name, kind, length; each chat prompt's greedy answer
                   (ids and text); the eval text's perplexity; top_k; the eos ids the answers stop at.
  logits.npz       per sequence `<name>.ids` (int32 [n]), `<name>.topk_ids` (int32 [n, k], best first),
                   `<name>.topk_logprobs` (fp32 [n, k]) and `<name>.lse` (fp32 [n], logsumexp of the full row);
                   a top-k logit is `topk_logprobs + lse`.

Sequences (all teacher-forced): `chat-<i>`, the templated prompt followed by the reference's own greedy answer (so
the answer positions are scored too); `text`, the eval text; `long`, the eval text's tokens repeated up to
`long_sequence_tokens` (where long-context bugs show: rope scaling, sliding windows, KV-cache growth).

Why top-k and not the full rows: Phi-3's vocabulary is 32064, so a 2k-token sequence is 128 MB of fp16 logits,
while k=64 log-probabilities + ids + one logsumexp is 1.2 MB. fp32, not fp16: fp16 log-probabilities (error up to
1e-3 at -2..-4) put a noise floor of ~1e-3 under KL (measured in tests/test_quality.py), above what an fp16 artifact
scores, to save 0.3 MB. The logsumexp gives the logits back (logprob + lse), and 1 - sum(top-k probabilities) is
the reference's tail mass, which is what KL over "top-k + one tail bucket" needs.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from pipeline import fsutil
from pipeline.backends.common import chat_text, source_ids, source_tokenizer, until_eos
from pipeline.errors import PipelineError
from pipeline.record import Phases, measured
from pipeline.weights import checkpoint_dtype, load_causal_lm, page_out_tensors

REFERENCE_JSON = "reference.json"
LOGITS_NPZ = "logits.npz"
# Beside its stored weights and their float64 copies the reference holds the long sequence's activations and logits
# and torch itself: Phi-3.5-mini peaked at 12.4 GB with 7.6 GB of weights and 1.2 GB of copies.
OWN_MEMORY = 4 * 2**30


@dataclass(frozen=True)
class EvalSet:
    prompts: list[str]
    text: str


def load_evalset(path: Path) -> EvalSet:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise PipelineError(f"{path}: cannot read the eval set: {str(e).splitlines()[0]}") from None
    prompts, text = (raw or {}).get("prompts"), (raw or {}).get("text")
    if not prompts or not all(isinstance(p, str) and p for p in prompts) or not isinstance(text, str) or not text:
        raise PipelineError(f"{path}: the eval set needs `prompts` (a list of strings) and `text` (a string)")
    return EvalSet(prompts=list(prompts), text=text)


def long_ids(text_ids: list[int], length: int) -> list[int]:
    """The eval text's tokens repeated (whole copies, then a cut) to exactly `length` tokens."""
    reps = -(-length // len(text_ids))
    return (text_ids * reps)[:length]


def eos_ids(source: Path) -> list[int]:
    from transformers import GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(source).eos_token_id
    except OSError:
        eos = None
    if eos is None:
        eos = source_tokenizer(Path(source)).eos_token_id
    return sorted({eos} if isinstance(eos, int) else set(eos or []))


def check_loading(info: dict, source: Path) -> None:
    """Refuse a model that transformers completed with freshly initialised weights: its logits would be a random
    model's, and every artifact compared with them would look fine."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = sorted(k[0] for k in info.get("mismatched_keys") or [])
    if missing or mismatched:
        names = missing + [f"{k} (shape mismatch)" for k in mismatched]
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        raise PipelineError(
            f"{source}: the checkpoint lacks weights its config needs, which loading would initialise at random: "
            f"{', '.join(names[:3])}{more}"
        )


def run(
    source: Path, evalset: EvalSet, out: Path, *, max_new_tokens: int, top_k: int, long_sequence_tokens: int,
    phases: Phases | None = None, memory: int | None = None,
) -> dict:
    """Run the checkpoint (in float64) on the eval set and write reference.json + logits.npz into `out` atomically.

    Returns reference.json's record, plus `streamed` where a 16-bit checkpoint's weights did not fit in `memory`
    (bytes; None: what the machine has available once it is loaded): how they were read instead. That depends on the
    machine, so it is the stage's metrics', not the artifact's."""
    import torch

    source = Path(source)
    phases = phases or Phases("reference")
    with phases("load"):
        model, info, weights, streamed = _load(source, memory)
    check_loading(info, source)
    model.eval()
    eos = eos_ids(source)
    sequences: list[tuple[str, str, list[int], dict]] = []  # name, kind, ids, extra record
    with torch.no_grad(), phases("greedy answers"):
        for i, prompt in enumerate(evalset.prompts):
            prompt_ids = source_ids(source, chat_text(source, prompt))
            print(f"[reference] chat-{i}: up to {max_new_tokens} tokens after {len(prompt_ids)}", file=sys.stderr)
            gen = model.generate(
                torch.tensor([prompt_ids]),
                attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos or None,
                pad_token_id=(eos or [0])[0],
            )[0, len(prompt_ids):].tolist()
            answer = until_eos(gen, eos)  # the eos stays: the artifact must predict it too
            sequences.append((f"chat-{i}", "chat", prompt_ids + answer, {
                "prompt": prompt,
                "prompt_len": len(prompt_ids),
                "answer_ids": answer,
                "answer": source_tokenizer(source).decode(answer, skip_special_tokens=True),
            }))
    text_ids = source_ids(source, evalset.text)
    if len(text_ids) < 2:
        raise PipelineError("the eval text is shorter than two tokens; perplexity needs more")
    sequences.append(("text", "text", text_ids, {}))
    if long_sequence_tokens:
        sequences.append(("long", "text", long_ids(text_ids, long_sequence_tokens), {}))

    arrays: dict[str, np.ndarray] = {}
    records = []
    with torch.no_grad(), phases("score every sequence"):
        for name, kind, ids, extra in sequences:
            print(f"[reference] {name}: {len(ids)} tokens", file=sys.stderr)
            logits = model(torch.tensor([ids])).logits[0]
            values, indices = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1)
            lse = torch.cat([torch.logsumexp(logits[rows], dim=-1) for rows in row_blocks(*logits.shape)])
            arrays[f"{name}.ids"] = np.asarray(ids, dtype=np.int32)
            arrays[f"{name}.topk_ids"] = indices.numpy().astype(np.int32)
            arrays[f"{name}.topk_logprobs"] = (values - lse[:, None]).numpy().astype(np.float32)
            arrays[f"{name}.lse"] = lse.numpy().astype(np.float32)
            rec = {"name": name, "kind": kind, "len": len(ids), **extra}
            if kind == "text":
                rec["ppl"] = perplexity(logits.numpy(), ids)
            records.append(rec)

    ref = {"top_k": top_k, "eos_ids": eos, "vocab": int(logits.shape[-1]), "max_new_tokens": max_new_tokens,
           "sequences": records}
    ref["weights"] = weights
    with fsutil.staged_dir(Path(out)) as tmp:
        np.savez_compressed(tmp / LOGITS_NPZ, **arrays)
        fsutil.write_json(tmp / REFERENCE_JSON, ref)
        fsutil.write_manifest(tmp)
    return {**ref, "streamed": streamed} if streamed else ref


def _load(source: Path, memory: int | None):
    """(model, loading info, how its weights are held, how those that did not fit in memory were read: None if all
    did)."""
    # The weights as stored and float64 copies of a layer's while it runs: what a float64 copy of the model would
    # compute, at a quarter of its memory (Phi-3-mini: 7.6 GB instead of 30.6).
    model, info = load_causal_lm(source, None, label="reference")
    _float64_where_float32_is_forced(model)
    streamed = _upcast_when_used(model, memory)
    if streamed:
        print(f"[reference] {streamed}", file=sys.stderr)
    return model, info, f"{checkpoint_dtype(source)} as stored, upcast to float64 per layer when it runs", streamed


def _float64_where_float32_is_forced(model) -> None:
    """transformers computes the rotary cos/sin and the RMS norms in float32 whatever the model's dtype; their
    vectorised cos, sin and rsqrt give other last bits with other kernels (AVX2 vs AVX-512 moved 30k of the long
    sequence's 147k stored log-probabilities by up to 7e-6, the short sequences' none). Here both run in float64,
    from the module's own inverse frequencies and scaling (whichever longrope picked for the length)."""
    import torch

    def rotary(module, args, kwargs, _out):
        position_ids = kwargs["position_ids"] if "position_ids" in kwargs else args[1]
        freqs = module.inv_freq.double()[None, :, None] * position_ids.double()[:, None, :]
        emb = torch.cat((freqs, freqs), dim=1).transpose(1, 2)
        return emb.cos() * module.attention_scaling, emb.sin() * module.attention_scaling

    def rms_norm(module, hidden_states):
        h = hidden_states.double()
        return module.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + module.variance_epsilon))

    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "attention_scaling"):
            module.register_forward_hook(rotary, with_kwargs=True)
        elif type(module).__name__.endswith("RMSNorm") and hasattr(module, "variance_epsilon"):
            module.forward = rms_norm.__get__(module)


def _available() -> int:
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))


def hook_own_parameters(model, up, down, skip=()) -> list:
    """Run `up` before and `down` after the forward of each module holding parameters of its own (a projection, a
    norm, the embedding) but those in `skip`; returns those modules in the model's order."""
    modules = [m for m in model.modules()
               if next(m.parameters(recurse=False), None) is not None and not any(m is s for s in skip)]
    for module in modules:
        module.register_forward_pre_hook(up)
        module.register_forward_hook(down)
    return modules


def _upcast_when_used(model, memory: int | None = None) -> str | None:
    """Hold each module's parameters as stored and give its forward float64 copies while it runs; if they do not all
    fit in `memory` (bytes; None: what the machine has available, less what the run needs besides), keep the first
    modules' in memory and hand each later module's pages back once it has run. Returns what streamed, or None.

    The copies go into float64 buffers kept by shape and reused (one per shape in use at once: a few layers' worth).
    A fresh tensor per layer per token had the kernel hand out and zero a model's worth of new pages for
    every generated token: 3.3x the time of copying into a buffer already there (one Phi-3-mini MLP weight).
    Weights that do not fit (Phi-3-medium's 28 GB here) are read from the checkpoint every pass either way; left to
    the kernel, each pass evicts the pages the next one needs first, and every page is read again. Handing back the
    later modules' pages keeps the first ones resident, so a pass reads only what does not fit."""
    import torch

    spare: dict[tuple[int, ...], list[torch.Tensor]] = {}
    streamed = set()

    def up(module, _args):
        module._aipc_stored = [(p, p.data) for p in module.parameters(recurse=False)]
        for p, data in module._aipc_stored:
            free = spare.get(tuple(data.shape))
            p.data = (free.pop() if free else torch.empty(data.shape, dtype=torch.float64)).copy_(data)

    def down(module, _args, _out):
        for p, data in module._aipc_stored:
            spare.setdefault(tuple(data.shape), []).append(p.data)
            p.data = data
        if module in streamed:
            page_out_tensors(data for _p, data in module._aipc_stored)
        del module._aipc_stored

    vocab = _vocabulary_in_blocks(model)
    modules = hook_own_parameters(model, up, down, skip=vocab)
    held = [sum(p.numel() * p.element_size() for p in m.parameters(recurse=False)) for m in modules]
    if memory is None:
        copies = {tuple(p.shape): p.numel() * 8 for m in modules for p in m.parameters(recurse=False)}
        memory = _available() - OWN_MEMORY - sum(copies.values())
    total = 0
    for module, size in zip(modules, held):
        total += size
        if total > memory:
            streamed.add(module)
    if not streamed:
        return None
    out = sum(size for module, size in zip(modules, held) if module in streamed)
    return (f"{len(streamed)} of {len(modules)} modules' weights ({out / 1e9:.1f} GB) read from the checkpoint again "
            f"on every pass: {total / 1e9:.1f} GB of weights, {max(memory, 0) / 1e9:.1f} GB of memory for them")


def _vocabulary_in_blocks(model) -> list:
    """The input embedding and the output layer in float64 without a float64 copy of their [vocab, hidden] weight
    (4.9 GB at Phi-4-mini's 200064 x 3072, held in a reused buffer for the run): the embedding widens only the rows
    it looks up, the output layer a block of vocabulary rows at a time, filling its logits block by block. The same
    float64 arithmetic per logit (tested equal to the whole-weight copy); returns the two modules."""
    import torch

    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embedding, torch.nn.Embedding) or not isinstance(head, torch.nn.Linear):
        return []

    def embed(module, ids):
        return torch.nn.functional.embedding(ids, module.weight).to(torch.float64)

    blocks = row_blocks(*head.weight.shape)
    # One float64 block reused for every block of every pass: a fresh one per block per generated token had the
    # kernel hand out and zero new pages each time (greedy answers 434 s against 334 s at Phi-4-mini).
    buffer = torch.empty(blocks[0].stop - blocks[0].start, head.weight.shape[1], dtype=torch.float64)

    def linear(module, hidden):
        weight = module.weight
        out = torch.empty(*hidden.shape[:-1], weight.shape[0], dtype=torch.float64)
        for rows in blocks:
            bias = None if module.bias is None else module.bias[rows].to(torch.float64)
            block = buffer[: rows.stop - rows.start].copy_(weight[rows])
            out[..., rows] = torch.nn.functional.linear(hidden, block, bias)
        return out

    embedding.forward = embed.__get__(embedding)
    head.forward = linear.__get__(head)
    return [embedding, head]


def load(reference_dir: Path) -> tuple[dict, dict[str, np.ndarray]]:
    reference_dir = Path(reference_dir)
    fsutil.verify_manifest(reference_dir)
    ref = json.loads((reference_dir / REFERENCE_JSON).read_text())
    with np.load(reference_dir / LOGITS_NPZ) as npz:
        arrays = {k: npz[k] for k in npz.files}
    return ref, arrays


# Full-vocabulary temporaries are made a block of rows at a time: over the long sequence a whole float64 array is
# 3.7 GB at Phi-4-mini's 200064 columns, and exp(x - max) needed two more (reference and quality stages peaked at
# 20.2 / 23.2 GB, against 12.9 / 15.4 GB at Phi-3-mini's 32064). Each row's arithmetic is unchanged (tested equal).
BLOCK_BYTES = 2**28


def row_blocks(rows: int, columns: int) -> list[slice]:
    """Slices of `rows` whose float64 [block, columns] temporaries hold about BLOCK_BYTES each."""
    step = max(1, BLOCK_BYTES // (8 * max(columns, 1)))
    return [slice(s, min(s + step, rows)) for s in range(0, rows, step)]


def log_sum_exp(logits: np.ndarray) -> np.ndarray:
    """logsumexp of each row in float64, a block of rows at a time."""
    out = np.empty(len(logits), dtype=np.float64)
    for rows in row_blocks(*logits.shape):
        block = np.asarray(logits[rows], dtype=np.float64)
        m = block.max(-1, keepdims=True)
        out[rows] = m[:, 0] + np.log(np.exp(block - m).sum(-1))
    return out


def perplexity(logits: np.ndarray, ids: list[int]) -> float:
    """exp(mean negative log-likelihood of each next token), from full logits [len, vocab]."""
    logits = np.asarray(logits)[:-1]
    lse = log_sum_exp(logits)
    nll = lse - logits[np.arange(len(logits)), np.asarray(ids[1:])].astype(np.float64)
    # Each term at the precision the logits are stored in, so the reference's perplexity is the same on any CPU
    # (numpy's exp and log take other code paths on AVX-512 machines).
    return math.exp(float(nll.astype(np.float32).astype(np.float64).mean()))


def stage(params, layout, model: str) -> dict:
    """`aipc reference <model>`: reads params.quality (evalset, max_new_tokens, top_k, long_sequence_tokens)."""
    from pipeline.layout import SOURCE

    q = params.quality
    source = layout.artifact(model, SOURCE)
    phases = Phases("reference")
    with measured(f"reference@{model}") as rec:
        ref = run(source, load_evalset(Path(q.evalset)), layout.artifact(model, "reference"),
                  max_new_tokens=q.max_new_tokens, top_k=q.top_k, long_sequence_tokens=q.long_sequence_tokens,
                  phases=phases)
        rec["phases"] = phases.seconds
        rec["sequences"] = [{k: s[k] for k in ("name", "len") if k in s} for s in ref["sequences"]]
        for key in ("weights", "streamed"):
            if key in ref:
                rec[key] = ref[key]
    fsutil.write_json(layout.metrics(model, "reference", "reference"), rec)
    return rec
