"""The files a sandbox needs to run `python3 -m rlm.runtime.worker`, and nothing else.

A sandbox gets `rlm/errors.py` and `rlm/runtime/*.py` under a package `rlm` whose
`__init__.py` is EMPTY: the real one would import the client and core modules. The worker and
the runtime modules use the same absolute imports inside the sandbox as on the host, and the
bundle holds no secret and no third-party code.

Three shapes, one content: `bundle_files()` (path -> bytes, for SDK file APIs),
`build_bundle_dir(dest)` (a directory tree, bind-mounted or put on PYTHONPATH) and
`bundle_zip()` (one zip file; Python can import straight from it).
"""

from __future__ import annotations

import atexit
import hashlib
import io
import os
import shutil
import tempfile
import threading
import zipfile
from pathlib import Path

_RUNTIME_DIR = Path(__file__).resolve().parent
_PACKAGE_DIR = _RUNTIME_DIR.parent
WORKER_MODULE = "rlm.runtime.worker"

_lock = threading.Lock()
_cached_dir: Path | None = None


def bundle_files() -> dict[str, bytes]:
    """Relative POSIX path -> content of every file the sandbox runtime needs."""
    files: dict[str, bytes] = {
        "rlm/__init__.py": b"",
        "rlm/errors.py": (_PACKAGE_DIR / "errors.py").read_bytes(),
    }
    for path in sorted(_RUNTIME_DIR.glob("*.py")):
        files[f"rlm/runtime/{path.name}"] = path.read_bytes()
    return files


def bundle_digest() -> str:
    """A short hash of the bundle's content (names a cached copy, tells versions apart)."""
    digest = hashlib.sha256()
    for name, data in bundle_files().items():
        digest.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def build_bundle_dir(dest: str | os.PathLike[str]) -> Path:
    """Write the bundle under `dest` (created if needed); world-readable, so any sandbox
    user can import it. Returns `dest` as a Path."""
    root = Path(dest)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    for name, data in bundle_files().items():
        target = root / name
        for parent in reversed(target.relative_to(root).parents):
            folder = root / parent
            folder.mkdir(exist_ok=True)
            os.chmod(folder, 0o755)
        target.write_bytes(data)
        os.chmod(target, 0o644)
    return root


def bundle_dir() -> Path:
    """A bundle directory shared by every sandbox this process starts; removed at exit."""
    global _cached_dir
    with _lock:
        if _cached_dir is None or not (_cached_dir / "rlm" / "runtime" / "worker.py").exists():
            root = Path(tempfile.mkdtemp(prefix=f"rlm-bundle-{bundle_digest()}-"))
            build_bundle_dir(root)
            atexit.register(shutil.rmtree, root, True)
            _cached_dir = root
        return _cached_dir


def bundle_zip() -> bytes:
    """The bundle as a zip archive; `PYTHONPATH=/path/bundle.zip` makes it importable."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in bundle_files().items():
            info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return buffer.getvalue()
