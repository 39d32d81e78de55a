"""`aipc verify <release dir | repo@revision>`: rebuild what a release says it is and compare, file by file.

A release (pipeline/stages/package.py) names in provenance.json the model, the variant and its params (and those of a
variant it wraps), the source's files, the versions of the tools its export ran, and under `rebuild` which of its
files any x86 machine rebuilds byte for byte and which it cannot, with why and the bound those stay within. verify
  1. checks the release against its own manifest.json (a byte changed since packaging fails here, naming the file),
  2. checks this project would build the same thing: the variant's params in params.yaml and the installed versions
     of the tools the export ran equal the release's, and so does which files may differ (this project's say, not
     the release's: a release cannot widen its own bound),
  3. rebuilds in a scratch root under the project (`aipc --root <scratch> fetch / ir / export ...`, the commands the
     card lists, each in its own process as DVC runs them; deleted afterwards),
  4. prints one line per file: identical; within the bound (a machine-dependent file: the share of its quantized
     codes that differ, and the shift of its KL against the FP32 reference, both artifacts scored here against a
     rebuilt reference); or what differs. Exit 1 if any file fails.
The card (README.md) holds the building machine's measurements: it is shown as not compared.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from pipeline import backends, fsutil
from pipeline.errors import PipelineError
from pipeline.layout import REFERENCE, SOURCE, Layout
from pipeline.stages import package

DISTRIBUTION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def resolve(release: str, scratch: Path) -> Path:
    """A release directory as given, or `repo@revision` downloaded from the hub (HF_ENDPOINT) into `scratch`."""
    path = Path(release)
    if path.is_dir():
        return path
    if path.exists() or "/" not in release or release.startswith((".", "/")):
        raise PipelineError(f"{release}: neither a release directory nor a hub repo (ORG/NAME[@REVISION])")
    from huggingface_hub import snapshot_download

    repo, _, revision = release.partition("@")
    print(f"[verify] downloading {repo}@{revision or 'main'}", file=sys.stderr)
    return Path(snapshot_download(repo, revision=revision or None, cache_dir=scratch / "hub"))


def _differing(name: str, mine: dict, theirs: dict) -> str:
    keys = sorted(k for k in {*mine, *theirs} if mine.get(k) != theirs.get(k))
    return f"{name}: " + ", ".join(f"{k} {theirs.get(k)!r} in the release, {mine.get(k)!r} here" for k in keys)


def require_same_build(params, prov: dict) -> None:
    """The project builds what the release was built from: the same variant params, the same tool versions."""
    model, name = prov["model"], prov["variant"]
    if model not in params.models or name not in params.variants_of(model):
        raise PipelineError(f"params.yaml does not build {model}-{name}, which the release is: verify from a checkout "
                            "of the commit that made it")
    wanted = {name: prov["variant_params"], **prov.get("wrapped_params", {})}
    for made, theirs in wanted.items():
        mine = params.variants[made].model_dump() if made in params.variants else {}
        if mine != theirs:
            raise PipelineError(f"params.yaml's variant {_differing(made, mine, theirs)}")
    # Which files may differ, and by how much, is this project's to say: a release cannot widen its own bound.
    claimed, spec = (prov.get("rebuild") or {}).get("machine_dependent"), package.machine_dependent(params, name)
    if claimed != spec:
        def what(md: dict | None) -> str:
            return f"{', '.join(md['files'])} (bound {md['bound']})" if md else "no file"

        raise PipelineError(f"provenance.json lets {what(claimed)} differ from a rebuild, where this project lets "
                            f"{what(spec)} of {name}")
    for dist, theirs in sorted((prov.get("export", {}).get("versions") or {}).items()):
        if not DISTRIBUTION.fullmatch(dist):
            continue  # not a distribution (the EP plugin's bundled OpenVINO: its wheel's version pins it)
        try:
            mine = version(dist)
        except PackageNotFoundError:
            continue  # run in an environment of its own (the NPU library's venv): the rebuild's bytes tell
        if mine != theirs:
            raise PipelineError(f"the release was exported with {dist} {theirs}, this machine has {mine}: install "
                                f"the toolchain the release names (toolchain/*.txt of its commit), then verify")


def rebuild(layout: Layout, scratch: Path, lines: list[str]) -> Layout:
    """Run stage commands (`aipc <stage> ...` lines) with `scratch` as the project root; each in its own process."""
    there = Layout(scratch)
    for line in lines:
        args = line.split()[1:]
        print(f"[verify] {line}", file=sys.stderr)
        # their output to stderr: stdout is the verdicts'
        done = subprocess.run([sys.executable, "-m", "pipeline.cli", "--root", str(scratch), *args],
                              cwd=layout.root, stdout=sys.stderr.fileno())
        if done.returncode:
            raise PipelineError(f"the rebuild's `{line}` failed (exit {done.returncode}); see its output above")
    return there


def judge_bounded(release: Path, rebuilt: Path, variant, spec: dict, reference: Path, source: Path
                  ) -> tuple[bool, str]:
    """(whether the machine-dependent artifact is within its bound of the rebuild, the figures that say so), per
    provenance's `rebuild.machine_dependent` (`spec`)."""
    from pipeline.stages import quality

    bound = spec["bound"]
    share = backends.get(spec["backend"]).weight_difference(release, rebuilt)
    kl = {name: quality.measure(path, variant, reference, source)["gate"]["kl"]
          for name, path in (("release", release), ("rebuild", rebuilt))}
    shift = abs(kl["release"] - kl["rebuild"])
    figures = (f"codes differing {share['codes']:.2e} (bound {bound['code_share']:g}), floats {share['scales']:.2e}; "
               f"KL vs FP32 {kl['release']:.4f} release, {kl['rebuild']:.4f} rebuild: shift {shift:.2e} "
               f"(bound {bound['kl_shift']:g})")
    return share["codes"] <= bound["code_share"] and shift <= bound["kl_shift"], figures


def compare(release: Path, rebuilt: Path, prov: dict, spec: dict | None
            ) -> tuple[list[tuple[str, str, str]], list[str]]:
    """(file, verdict, detail) per file, and the machine-dependent files whose bytes differ (judged later)."""
    listed = prov["artifact_files_sha256"]
    made = fsutil.hash_tree(rebuilt)
    bounded = set((spec or {}).get("files", []))
    lines, pending = [], []
    for name in sorted({*listed, *made}):
        if name not in made:
            lines.append((name, "FAIL", "the release has it, the rebuild does not"))
        elif name not in listed:
            lines.append((name, "FAIL", "the rebuild has it, the release does not"))
        elif made[name] == listed[name]:
            lines.append((name, "identical", ""))
        elif name in bounded:
            pending.append(name)
        else:
            lines.append((name, "FAIL", f"differs from the rebuild (sha256 {listed[name][:12]}… in the release, "
                                        f"{made[name][:12]}… rebuilt), and provenance says it is deterministic"))
    return lines, pending


def run(params, layout: Layout, release_arg: str) -> int:
    """Verify one release; prints a verdict line per file and returns the number of files that failed."""
    scratch = Path(tempfile.mkdtemp(prefix=".aipc-verify-", dir=layout.root))
    try:
        release = resolve(release_arg, scratch)
        package.verify(release)
        prov = json.loads((release / package.PROVENANCE).read_text())
        require_same_build(params, prov)
        model, name = prov["model"], prov["variant"]
        variant = params.variants[name]
        spec = package.machine_dependent(params, name)
        there = rebuild(layout, scratch / "root", package.commands(model, name, variant)["stages"].splitlines())
        source = there.artifact(model, SOURCE)
        lines, pending = compare(release, there.artifact(model, name), prov, spec)
        got = fsutil.hash_tree(source, skip=fsutil.MANIFEST)
        lines.insert(0, (f"source ({len(got)} files)", "identical", "") if got == prov["source_files_sha256"] else
                     (f"source ({len(got)} files)", "FAIL", "the fetched checkpoint is not the one the release names"))
        if pending:  # one judgement of the whole artifact, against the rebuilt reference (the same on any CPU)
            rebuild(layout, scratch / "root", [f"aipc reference {model}"])
            ok, figures = judge_bounded(release, there.artifact(model, name), variant, spec,
                                        there.artifact(model, REFERENCE), source)
            lines += [(file, "within bound" if ok else "FAIL", f"{'' if ok else 'past the bound: '}{figures}; "
                                                               f"machine-dependent: {spec['why']}") for file in pending]
        lines.append((package.CARD, "not compared", "the building machine's smoke and quality measurements"))
        lines.append((package.MANIFEST, "checked", "every file is the bytes it lists"))
        width = max(len(f) for f, _, _ in lines)
        for file, verdict, detail in lines:
            print(f"{file:<{width}}  {verdict}{': ' + detail if detail else ''}")
        return sum(verdict == "FAIL" for _, verdict, _ in lines)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def stage(params, layout: Layout, release: str) -> None:
    """`aipc verify <release dir | repo@revision>`: see the module docstring."""
    failed = run(params, layout, release)
    if failed:
        raise PipelineError(f"{release}: {failed} file(s) differ from the rebuild (the FAIL lines above)")
    print(f"{release}: verified")
