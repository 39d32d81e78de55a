"""`aipc publish`: release directories (pipeline/stages/package.py) to a Hugging Face hub, and DVC outs to a DVC remote.

Not a DVC stage: release jobs run it after `dvc repro`. Per variant, the hub repo `<repo-prefix>-<variant>`:
  - is created if missing,
  - gets the release as ONE commit on main (every file added, files no longer in the release deleted),
  - is tagged with the version; an existing tag is never moved: if it points at other content, publishing fails,
  - is left alone when the tag (or main, then only tagged) already holds exactly the release's files.
Content is compared without downloading: the hub's tree lists each file's git blob sha1, and for LFS files its
sha256, which are checked against the local files (whose sha256 manifest.json lists).
The token comes from HF_TOKEN or the HF login (huggingface_hub.get_token()); it is handed to HfApi and never
printed or written anywhere.
"""

from __future__ import annotations

import json

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import fsutil
from pipeline.errors import PipelineError
from pipeline.params import require
from pipeline.stages import package

VERSION = re.compile(r"^v\d+\.\d+\.\d+(?:[-+][0-9A-Za-z.-]+)?$")


@dataclass
class Plan:
    repo: str
    release: Path
    version: str
    create_repo: bool = False
    commit: bool = False  # main does not hold the release yet
    tag: bool = False  # the version tag does not exist yet
    base: str | None = None  # main's head when planned
    adds: list[str] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    bytes: int = 0
    result: str = ""

    def describe(self) -> str:
        if not (self.create_repo or self.commit or self.tag):
            return f"{self.repo}: {self.version} already holds {self.release} (nothing to do)"
        steps = (["create repo"] if self.create_repo else []) + (
            [f"one commit: {len(self.adds)} file(s), {self.bytes / 1e6:.1f} MB"
             + (f", delete {len(self.deletes)}" if self.deletes else "")] if self.commit else []
        ) + ([f"tag {self.version}"] if self.tag else [])
        return f"{self.repo}: {'; '.join(steps)}"


def token() -> str | None:
    from huggingface_hub import get_token

    return get_token()  # HF_TOKEN first, then the stored login


def _remote_matches(api, repo: str, revision: str, release: Path, files: dict) -> bool:
    """Does `revision` of `repo` hold exactly the release's files, byte for byte?"""
    remote = {e.path: e for e in api.list_repo_tree(repo, revision=revision, recursive=True)
              if e.__class__.__name__ == "RepoFile"}
    remote.pop(".gitattributes", None)  # the hub adds it to every new repo
    if set(remote) != set(files):
        return False
    for name, entry in remote.items():
        lfs = getattr(entry, "lfs", None)
        if lfs is not None:
            if lfs.sha256 != files[name]["sha256"]:
                return False
        elif entry.blob_id != fsutil.git_blob_sha1(release / name):
            return False
    return True


def plan(api, repo: str, release: Path, version: str) -> Plan:
    from huggingface_hub.errors import RepositoryNotFoundError

    if not VERSION.match(version):
        raise PipelineError(f"version {version!r} is not vMAJOR.MINOR.PATCH")
    files = dict(package.verify(release)["files"])  # every file but manifest.json itself, verified
    if json.loads((release / package.PROVENANCE).read_text()).get("synthetic"):
        raise PipelineError(f"{release}: random weights (source: synthetic); a synthetic model is never published")
    files[package.MANIFEST] = {"sha256": fsutil.sha256_file(release / package.MANIFEST)}
    p = Plan(repo=repo, release=release, version=version, adds=sorted(files),
             bytes=sum((release / f).stat().st_size for f in files))
    try:
        refs = api.list_repo_refs(repo)
    except RepositoryNotFoundError:
        p.create_repo = p.commit = p.tag = True
        return p
    tags = {t.name: t.target_commit for t in refs.tags}
    if version in tags:
        if _remote_matches(api, repo, tags[version], release, files):
            return p  # already published: nothing to do
        raise PipelineError(
            f"{repo}: tag {version} already points at {tags[version][:12]} with other content than {release}; "
            "refusing to move a published tag (bump the version)"
        )
    p.tag = True
    main = next((b.target_commit for b in refs.branches if b.name == "main"), None)
    p.base = main
    if main is None or not _remote_matches(api, repo, main, release, files):
        p.commit = True
        remote = [e.path for e in api.list_repo_tree(repo, revision=main, recursive=True)
                  if e.__class__.__name__ == "RepoFile"] if main else []
        p.deletes = sorted(set(remote) - set(files) - {".gitattributes"})
    return p


def execute(api, p: Plan) -> Plan:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    if p.create_repo:
        api.create_repo(p.repo, repo_type="model", exist_ok=True)
        p.base = api.list_repo_refs(p.repo).branches[0].target_commit if not p.base else p.base
    revision = p.base
    if p.commit:
        ops = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(p.release / f)) for f in p.adds]
        ops += [CommitOperationDelete(path_in_repo=f) for f in p.deletes]
        info = api.create_commit(p.repo, operations=ops, commit_message=f"Release {p.version}",
                                 commit_description="Built by aipc-pipeline; see provenance.json and manifest.json.",
                                 parent_commit=p.base)  # fails, rather than overwrite, if main moved meanwhile
        revision = info.oid
    if p.tag:
        api.create_tag(p.repo, tag=p.version, revision=revision, tag_message=f"Release {p.version}")
    p.result = f"{p.repo}: {p.version} at {revision[:12] if revision else '?'}" if (p.commit or p.tag) else p.describe()
    return p


def publish(releases: dict[str, Path], repo_prefix: str, version: str, *, endpoint: str | None = None,
            dry_run: bool = False, out=sys.stdout) -> list[Plan]:
    """Publish each release dir (variant -> path) to `<repo_prefix>-<variant>`; returns the plans (executed unless
    dry_run). All plans are made before anything is written, so a refused tag stops the whole publish."""
    from huggingface_hub import HfApi

    if "/" not in repo_prefix:
        raise PipelineError(f"--repo-prefix {repo_prefix!r}: expected ORG/NAME (repos become ORG/NAME-<variant>)")
    tok = token()
    if tok is None and not dry_run:
        raise PipelineError("no Hugging Face token: set HF_TOKEN or run `hf auth login`")
    api = HfApi(endpoint=endpoint, token=tok)
    plans = [plan(api, f"{repo_prefix}-{variant}", Path(rel), version) for variant, rel in releases.items()]
    for p in plans:
        print(("[dry-run] " if dry_run else "") + p.describe(), file=out)
    if not dry_run:
        for p in plans:
            if p.create_repo or p.commit or p.tag:
                print(execute(api, p).result, file=out)
    return plans


def dvc_push(root: Path, remote: str, targets: list[str] | None = None) -> None:
    """`dvc push -r <remote>`: the DVC outs (sources, artifacts, releases) for an offline site to `dvc pull`."""
    # This interpreter's dvc, whatever PATH holds.
    proc = subprocess.run([sys.executable, "-m", "dvc", "push", "-r", remote, *(targets or [])], cwd=root,
                          capture_output=True, text=True)
    if proc.returncode:
        lines = [ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        raise PipelineError(f"dvc push -r {remote} failed: {lines[-1].strip() if lines else proc.returncode}")
    print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else f"dvc push -r {remote}: done")


def stage(params, layout, model: str, variants: list[str], repo_prefix: str | None = None, version: str | None = None,
          endpoint: str | None = None, dry_run: bool = False, dvc_remote: str | None = None) -> list[Plan]:
    """`aipc publish MODEL [VARIANT...]`: each release to `<repo_prefix>-<variant>` and/or `dvc push`."""
    require(params, model, variants)
    if not repo_prefix and not dvc_remote:
        raise PipelineError("nothing to publish: give --repo-prefix ORG/NAME --version vX.Y.Z and/or --dvc-remote NAME")
    plans: list[Plan] = []
    if repo_prefix:
        if not version:
            raise PipelineError("--repo-prefix needs --version vX.Y.Z")
        releases = {v: layout.release(model, v) for v in (variants or list(params.variants))}
        plans = publish(releases, repo_prefix, version, endpoint=endpoint, dry_run=dry_run)
    if dvc_remote:
        if dry_run:
            print(f"[dry-run] dvc push -r {dvc_remote}")
        else:
            dvc_push(Path(layout.root), dvc_remote)
    return plans
