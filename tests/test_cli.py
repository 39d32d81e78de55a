"""pipeline/cli.py: the table of commands, and one line for every failure a user can cause."""

from __future__ import annotations

import errno
import os
import subprocess
import sys

import httpx
import pytest
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

from pipeline import cli, fsutil
from pipeline.errors import PipelineError
from tests.conftest import ROOT


def test_every_command_names_an_importable_function():
    import importlib

    for name, command in cli.COMMANDS.items():
        module, function = command.function.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name


def test_help_imports_no_stage():
    code = "import sys; from pipeline import cli; cli._parser().format_help(); " \
           "assert not [m for m in sys.modules if m.startswith(('pipeline.stages', 'pipeline.backends', 'torch'))]"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


@pytest.mark.parametrize("error, expected", [
    (OSError(errno.ENOSPC, "No space left on device", "artifacts/m/ov-int4/openvino_model.bin"),
     "aipc export: disk full: artifacts/m/ov-int4/openvino_model.bin"),
    (PermissionError(errno.EACCES, "Permission denied", "artifacts/m"), "aipc export: permission denied: artifacts/m"),
    (OSError(errno.EROFS, "Read-only file system", "artifacts"), "aipc export: read-only file system: artifacts"),
    (OfflineModeIsEnabled("Cannot reach https://huggingface.co/api/models/x: offline mode is enabled."),
     "aipc export: needs the Hugging Face hub but HF_HUB_OFFLINE is set"),
    (HfHubHTTPError("401 Client Error", response=httpx.Response(401, request=httpx.Request("GET", "http://hub/x"))),
     "aipc export: the hub refused the token (HTTP 401)"),
    (httpx.ConnectError("[Errno 111] Connection refused", request=httpx.Request("GET", "http://127.0.0.1:9/api")),
     "aipc export: network error reaching http://127.0.0.1:9/api"),
])
def test_failures_a_user_can_cause_are_one_line(error, expected):
    message = cli.one_line(error, "aipc export")
    assert message.startswith(expected) and "\n" not in message, message


def test_a_bug_keeps_its_traceback():
    assert cli.one_line(KeyError("x"), "aipc export") is None


def test_a_full_disk_in_a_writers_own_words_is_named(tmp_path, monkeypatch):
    """OpenVINO reports a full disk as "basic_ios::clear: iostream error"; the free space tells."""
    monkeypatch.setattr(fsutil.shutil, "disk_usage", lambda _: _Usage(1 << 20))
    out = tmp_path / "m" / "ov-int4"
    with pytest.raises(PipelineError, match=r"ov-int4: disk full while writing it \(1024 KiB left\)"):
        with fsutil.staged_dir(out) as tmp:
            (tmp / "openvino_model.bin").write_bytes(b"half")
            raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1234:\nbasic_ios::clear: iostream error")
    assert not (tmp_path / "m").exists()  # no partial dir, and no empty model dir either


class _Usage:
    def __init__(self, free: int) -> None:
        self.free, self.total, self.used = free, free, 0


def test_the_real_cli_on_a_read_only_output_is_one_line(tmp_path):
    """`aipc toolchain --write` into a directory that cannot be written: one line, exit 1."""
    if os.geteuid() == 0:
        blocked = tmp_path / "toolchain"
        blocked.write_text("a file where the lock directory should be\n")  # root ignores permission bits
    else:
        (tmp_path / "toolchain").mkdir(mode=0o500)
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(tmp_path), "--params",
                           str(tmp_path / "params.yaml"), "toolchain", "--write"], cwd=ROOT, capture_output=True,
                          text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aipc: error: aipc toolchain: "), proc.stderr
