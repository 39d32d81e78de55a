"""The release workflow: zizmor's security audit, and the secrets it hands out."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import ROOT

WORKFLOWS = ROOT / ".github" / "workflows"


def test_zizmor_finds_nothing_at_high_or_medium_severity():
    zizmor = Path(sys.executable).parent / "zizmor"
    proc = subprocess.run([str(zizmor), "--offline", "--format", "json", str(WORKFLOWS)], capture_output=True,
                          text=True)
    findings = json.loads(proc.stdout)
    assert proc.stdout.strip() and isinstance(findings, list), proc.stderr[-2000:]
    serious = [(f["ident"], f["determinations"]["severity"], f["locations"][0]["symbolic"]["key"])
               for f in findings if f["determinations"]["severity"] in ("High", "Medium")]
    assert serious == [], serious


def test_zizmor_does_flag_what_the_workflow_avoids(tmp_path):
    """The check can fail: a tag-pinned action, a secret expanded in a script, persisted checkout credentials."""
    bad = {"on": {"push": {}}, "permissions": {}, "jobs": {"j": {"runs-on": "ubuntu-latest", "permissions": {},
           "steps": [{"uses": "actions/checkout@v4"},
                     {"run": "echo ${{ secrets.HF_TOKEN }} ${{ github.event.head_commit.message }}"}]}}}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(bad))
    proc = subprocess.run([str(Path(sys.executable).parent / "zizmor"), "--offline", "--format", "json",
                           str(tmp_path / "bad.yml")], capture_output=True, text=True)
    idents = {f["ident"] for f in json.loads(proc.stdout) if f["determinations"]["severity"] in ("High", "Medium")}
    assert {"unpinned-uses", "template-injection", "artipacked"} <= idents, idents


def test_secrets_reach_only_the_steps_that_use_them():
    workflow = yaml.safe_load((WORKFLOWS / "release.yml").read_text())
    assert "secrets." not in json.dumps(workflow.get("env", {}))
    for name, job in workflow["jobs"].items():
        assert "secrets." not in json.dumps(job.get("env", {})), name
        assert "permissions" in job, f"{name}: no permissions block"
        for step in job["steps"]:
            # never expanded inside a script: through env only
            assert "${{" not in step.get("run", ""), (name, step.get("run"))
            for key, value in step.get("env", {}).items():
                secret = re.search(r"secrets\.(\w+)", str(value))
                if secret:
                    assert secret.group(1) == key, (name, key, value)  # each under its own name, used by that step
                    assert "$" + key in step["run"] or key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                                                               "HF_TOKEN"), (name, key)
            if "actions/checkout" in step.get("uses", ""):
                assert step["with"]["persist-credentials"] is False, name
    # the token that can publish is in the publish job only, in the step that publishes
    hf = [(name, s.get("name")) for name, job in workflow["jobs"].items() for s in job["steps"]
          if "HF_TOKEN" in json.dumps(s)]
    assert hf == [("publish", "Dry run, then publish every model's releases")], hf
