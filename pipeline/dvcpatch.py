"""DVC 3.67 as this project runs it, for every DVC process in the venv (plain `dvc repro` too): its state files
written whole or not at all, a stage's params file parsed once per process, not once per stage, and no step whose
cost grows with the number of directories hashed before it.

Whole or not at all.

DVC 3.67 writes dvc.lock (and every YAML/JSON/TOML it saves: dvc/utils/serialize/_common.py `_dump_data`) and its
run lock .dvc/tmp/rwlock (dvc/rwlock.py `_edit_rwlock`) by opening the file for writing and streaming into it. A
process stopped in that window (SIGTERM from a CI cancel or `timeout`, Ctrl-C) leaves the file truncated: measured,
a `dvc repro` stopped by SIGTERM left dvc.lock at 0 bytes, and the next run failed "'./dvc.lock' validation failed"
with every stage recorded since the last commit to find again. Here dvc.lock goes to a temp file beside the target
that is renamed over it, so a reader sees the old file or the new one; the rwlock, which DVC edits 16 times per
stage it checks and whose readers hold its guard lock, is overwritten in place in one write (overwrite()). And a run
stopped while DVC saved a stage to its run cache can leave that stage's run-cache folder empty, on which the next
run's restore crashed ("join() argument must be str ... not 'NoneType'", dvc/stage/cache.py `_load`); an empty
folder is no entry.

Parsed once. DVC re-reads a stage's params file for every stage whose status it checks (dvc/dependency/param.py
`read_param_file` -> `load_path`): every stage of a model reads the model's build.yaml (pipeline/dvcfiles.py), 433
parses for 445 stages at 10 models. Here a file is parsed once per process and content (path, size, mtime, inode)
and each caller gets its own copy: `dvc status` at 10 models 4.96 -> 3.95 s (bench/dvc_scale.py, docs/dvc.md). The
stage's values are then looked up by their plain keys, not through dpath's glob walk over the whole file; the
rwlock text this process wrote is not schema-checked again when it reads it back; and dvc.lock, rewritten after
every stage run, is read with DVC's safe parser instead of its round-trip one (the same text dumped).

Linear. dvc_data's Tree.digest hashes each directory's listing as a file of fsspec's process-wide memory store,
whose info() scans every stored key: a no-op `dvc repro` at 10 models tested 1.8M keys for its 1915 directories, and
the count grows with the square of the models. Here the file's info comes from the store by its key.

`make setup` installs this into the venv as a .pth line (install_pth()), which Python runs at start-up; it only
registers an import hook, and each patch is applied when its DVC module is first imported.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.abc
import importlib.util
import os
import sys

PTH = "aipc_dvcpatch.pth"


def _temp(path: str) -> str:
    # the name integrity.sweep removes when its process is gone (fsutil's staging names)
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.partial-{os.getpid()}")


@contextlib.contextmanager
def replacing(path: str):
    """A text file to write that replaces `path` when the block ends without an exception."""
    tmp = _temp(os.fspath(path))
    try:
        with open(tmp, "w", encoding="utf-8") as fd:
            yield fd
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _local(fs) -> bool:
    return fs is None or getattr(fs, "protocol", None) == "local"


def _patch_serialize(module) -> None:
    original = module._dump_data

    def _dump_data(path, data, dumper, fs=None, **dumper_args):
        if not _local(fs):
            return original(path, data, dumper, fs=fs, **dumper_args)
        with replacing(path) as fd:
            return dumper(data, fd, **dumper_args)

    module._dump_data = _dump_data


def _patch_rwlock(module) -> None:
    json, defaultdict = module.json, module.defaultdict
    written: set[str] = set()  # the text this process last wrote: known to pass the schema

    def _load(text: str) -> dict:
        # Each rwlock taken is two edits (take, release), 16 a stage checked; the second reads what the first
        # wrote, and the next stage's first what the last release wrote: voluptuous's check of those same bytes was
        # half of an edit's cost. The schema's defaults: both keys there.
        if text in written:
            return {"read": {}, "write": {}, **json.loads(text)}
        return module.SCHEMA(json.loads(text))

    @contextlib.contextmanager
    def _edit_rwlock(lock_dir, fs, hardlink):  # dvc/rwlock.py's, with the write through overwrite()
        path = fs.join(lock_dir, module.RWLOCK_FILE)
        with module.make_lock(fs.join(lock_dir, module.RWLOCK_LOCK), tmp_dir=lock_dir, hardlink_lock=hardlink):
            try:
                with fs.open(path, encoding="utf-8") as fobj:
                    lock = _load(fobj.read())
            except FileNotFoundError:
                lock = module.SCHEMA({})
            except json.JSONDecodeError as exc:
                raise module.RWLockFileCorruptedError(path) from exc
            except module.Invalid as exc:
                raise module.RWLockFileFormatError(path) from exc
            lock["read"] = defaultdict(list, lock["read"])
            lock["write"] = defaultdict(dict, lock["write"])
            yield lock
            text = json.dumps(lock)
            if _local(fs):
                overwrite(path, text)
                written.clear()
                written.add(text)
            else:
                with fs.open(path, "w", encoding="utf-8") as fobj:
                    fobj.write(text)

    module._edit_rwlock = _edit_rwlock


def overwrite(path: str, text: str) -> None:
    """Replace a small JSON file's content in one write(2), which a signal cannot split: the new text padded with
    spaces to the old length (JSON ignores trailing whitespace), then trimmed. DVC edits the rwlock twice per lock
    taken, 16 times per stage a no-op `dvc repro` checks; a temp file renamed over it cost 0.3-3 ms each on ext4
    (rename over a file starts its writeback), this 0.02 ms."""
    data = text.encode()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        old = os.fstat(fd).st_size
        padded = data + b" " * (old - len(data))
        if os.pwrite(fd, padded, 0) != len(padded):
            raise OSError(f"{path}: short write")
        if old > len(data):
            os.ftruncate(fd, len(data))
    finally:
        os.close(fd)


def _patch_tree(module) -> None:
    original = module.hash_file

    def hash_file(path, fs, name, state=None, callback=None, info=None):
        # Tree.digest hashes each directory's listing as a file in fsspec's process-wide memory store and never
        # removes it; fsspec's MemoryFileSystem.info scans every key of that store for a directory prefix before it
        # looks the file up: quadratic in the trees a run hashes (1.8M key tests for 1915 trees at 10 models).
        # The file's info straight from the store (it is a file: the name is fresh) is what info() returns.
        if info is None and getattr(fs, "protocol", None) == "memory":
            stored = fs.fs.store.get(fs.fs._strip_protocol(path))
            if stored is not None:
                info = {"name": path, "size": stored.size, "type": "file"}
        return original(path, fs, name, state=state, callback=callback, info=info)

    module.hash_file = hash_file


def _patch_stage_cache(module) -> None:
    original = module.StageCache._load_cache

    def _load_cache(self, key, value):
        return None if value is None else original(self, key, value)  # value: the newest entry, None if none

    module.StageCache._load_cache = _load_cache


def _patch_params(module) -> None:
    load, read = module.load_path, module.read_param_file
    parsed: dict[tuple, object] = {}

    def load_path(path, fs, **kwargs):
        if not _local(fs):
            return load(path, fs, **kwargs)
        st = os.stat(path)
        key = (os.path.abspath(path), st.st_size, st.st_mtime_ns, st.st_ino, tuple(sorted(kwargs.items())))
        if key not in parsed:
            parsed[key] = load(path, fs, **kwargs)
        return copy.deepcopy(parsed[key])  # callers keep and compare what they get; none shares another's

    def read_param_file(fs, path, key_paths=None, flatten=False, **kwargs):
        # DVC picks a stage's values out of the parsed file with dpath.get, which walks every leaf of the file
        # matching each one against the key as a glob: about 1 ms a key, as much as the parse. A key without glob
        # characters names one path; it is looked up directly.
        if not (_local(fs) and flatten and key_paths) or any(c in k for k in key_paths for c in "*?[]"):
            return read(fs, path, key_paths, flatten, **kwargs)
        config = load_path(path, fs, **kwargs)
        out = {}
        for key_path in key_paths:
            node = config
            for part in key_path.split("."):
                if isinstance(node, dict) and part in node:
                    node = node[part]
                elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                    node = node[int(part)]
                else:
                    break
            else:
                out[key_path] = node
        return out

    read_param_file.__wrapped__ = read  # DVC's own, for the test that compares the two
    module.load_path, module.read_param_file = load_path, read_param_file


def _patch_dvcfile(module) -> None:
    from dvc.utils.serialize import _common, _yaml

    original = module.modify_yaml

    def modify_yaml(path, fs=None):
        # DVC updates dvc.lock after each stage it runs by parsing it round-trip (comments and styles kept for a
        # rewrite) and dumping it whole: the round-trip parse of one model's lock takes 0.36 s, the safe parse 0.06.
        # A lock holds no comments (DVC writes it), and DVC's dump of the safe parse is the same text (tested).
        if os.path.basename(os.fspath(path)) != "dvc.lock":
            return original(path, fs=fs)
        return _common._modify_data(path, _yaml.parse_yaml, _yaml._dump, fs=fs)

    module.modify_yaml = modify_yaml


PATCHES = {"dvc.utils.serialize._common": _patch_serialize, "dvc.rwlock": _patch_rwlock,
           "dvc.stage.cache": _patch_stage_cache, "dvc.dependency.param": _patch_params,
           "dvc_data.hashfile.tree": _patch_tree, "dvc.dvcfile": _patch_dvcfile}


class _Finder(importlib.abc.MetaPathFinder):
    """Finds DVC's modules as usual, then patches each after it has run."""

    def find_spec(self, name, path, target=None):
        if name not in PATCHES:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def patched(module):
            exec_module(module)
            PATCHES[name](module)
            module.__aipc_patched__ = True

        spec.loader.exec_module = patched
        return spec


def install_hook() -> None:
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def install_pth() -> str:
    """Write the .pth line into this interpreter's site-packages (a venv's own, under `make setup`). Python runs a
    .pth line that starts with `import` at every start-up; an environment without this package skips it quietly."""
    import sysconfig

    path = os.path.join(sysconfig.get_paths()["purelib"], PTH)
    with open(path, "w") as f:
        f.write('import sys; exec("try:\\n from pipeline import dvcpatch\\nexcept ImportError:\\n pass\\nelse:\\n '
                'dvcpatch.install_hook()")\n')
    return path

