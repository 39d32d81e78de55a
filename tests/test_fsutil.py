import json

import pytest

from pipeline import fsutil
from pipeline.errors import PipelineError


def test_staged_dir_replaces_atomically(tmp_path):
    out = tmp_path / "art"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with fsutil.staged_dir(out) as tmp:
        assert tmp != out and tmp.parent == out.parent
        (tmp / "new.txt").write_text("new")
        assert (out / "old.txt").exists()  # readers see the old artifact until the rename
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_staged_dir_failure_leaves_nothing(tmp_path):
    out = tmp_path / "art"
    with pytest.raises(RuntimeError):
        with fsutil.staged_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x" * 10)
            raise RuntimeError("export died")
    assert list(tmp_path.iterdir()) == []


def test_staged_dir_sweeps_leftovers_of_a_killed_run(tmp_path):
    stale = tmp_path / ".art.partial-99999"
    stale.mkdir()
    (stale / "half.bin").write_bytes(b"x")
    with fsutil.staged_dir(tmp_path / "art") as tmp:
        (tmp / "ok").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_manifest_roundtrip_and_mismatch(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "a.bin").write_bytes(b"abc")
    (tmp_path / "sub" / "b.txt").write_text("hello")
    files = fsutil.write_manifest(tmp_path)
    assert files["a.bin"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert json.loads((tmp_path / fsutil.MANIFEST).read_text()) == files
    fsutil.verify_manifest(tmp_path)

    (tmp_path / "sub" / "b.txt").write_text("hellO")
    with pytest.raises(PipelineError, match=r"sub/b.txt: sha256 mismatch") as e:
        fsutil.verify_manifest(tmp_path)
    assert "\n" not in str(e.value)


def test_manifest_missing_and_extra_files(tmp_path):
    with pytest.raises(PipelineError, match="no manifest"):
        fsutil.verify_manifest(tmp_path)
    (tmp_path / "a").write_text("1")
    fsutil.write_manifest(tmp_path)
    (tmp_path / "b").write_text("2")
    with pytest.raises(PipelineError, match="b: not in manifest"):
        fsutil.verify_manifest(tmp_path)
    (tmp_path / "b").unlink()
    (tmp_path / "a").unlink()
    with pytest.raises(PipelineError, match="a: listed in manifest.sha256.json but missing"):
        fsutil.verify_manifest(tmp_path)
