"""Resumable downloads from the Hugging Face hub into a folder of our own.

huggingface_hub (2.x) writes each download to a temporary file unique to the process and deletes it
on failure, so a download killed or cut off after 8 GB of a 10 GB shard starts again from zero. Here
every file is fetched into `<name>.part` beside its final name and continued with an HTTP Range request
on the next run; the bytes move with huggingface_hub's own `http_get` (retries, auth, proxies). LFS
files are checked against their SHA-256 before they count as downloaded, and a folder is complete
only once `.complete.json` is written, so a half download never passes for a checkpoint.

Layout: `<root>/<owner>--<name>/<commit>/<files>` and `<root>/<owner>--<name>/revision-<rev>` (the commit
last seen for a branch, for working offline).
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import ConversionCancelled, DownloadError
from .progress import Reporter

DOWNLOADS_ENV = "GEMMA4_MAC_DOWNLOADS"
COMPLETE_MARKER = ".complete.json"
PART_SUFFIX = ".part"
_HASH_BLOCK = 8 << 20
_SPACE_MARGIN = 256 << 20  # leave the disk some room beyond the files themselves


@dataclass(frozen=True)
class RemoteFile:
    """One file of a repo at a commit: its path, size and (for LFS files) SHA-256."""

    path: str
    size: int | None
    sha256: str | None


def default_download_dir() -> Path:
    """Where hub downloads wait for conversion: $GEMMA4_MAC_DOWNLOADS, else the user's cache folder."""
    override = os.environ.get(DOWNLOADS_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "gemma4-mac" / "downloads"
    cache = os.environ.get("XDG_CACHE_HOME")
    return (Path(cache) if cache else Path.home() / ".cache") / "gemma4-mac" / "downloads"


def download_repo(repo_id: str, reporter: Reporter, *, patterns: list[str] | None = None, filename: str | None = None,
                  revision: str = "main", root: Path | None = None) -> Path:
    """Download the files of `repo_id` matching `patterns` (or the single `filename`), resuming partial files.

    Returns the commit folder (or the file, when `filename` is given). Raises DownloadError with a message
    that says what to do; ConversionCancelled when the reporter's cancel event is set (partial files stay
    and the next run continues them).
    """
    repo_dir = (root or default_download_dir()) / repo_id.replace("/", "--")
    try:
        commit, files = _listing(repo_id, revision)
    except _Offline as error:
        local = _complete_copy(repo_dir, revision)
        if local is not None and (filename is None or (local / filename).is_file()):
            return local / filename if filename else local
        raise DownloadError(f"Cannot download {repo_id}: the Hugging Face hub is unreachable (offline?) and the model "
                            "is not downloaded yet. Connect to the internet and try again; a partial download "
                            "resumes where it stopped.") from error
    wanted = [f for f in files if (f.path == filename if filename else _matches(f.path, patterns))]
    if filename and not wanted:
        raise DownloadError(f"{repo_id} has no file named {filename}. Check the name on huggingface.co.")
    folder = repo_dir / commit
    _forget_other_partial_commits(repo_dir, commit)
    if not _is_complete(folder, wanted):
        _fetch_all(repo_id, commit, folder, wanted, reporter)
    (repo_dir / f"revision-{revision}").write_text(commit, encoding="utf-8")
    return folder / filename if filename else folder


def discard_download(path: Path, root: Path | None = None) -> None:
    """Delete a finished download (a commit folder, or one file of it) once it has been converted.

    Paths outside the downloads folder are never touched (a local checkpoint is the user's own)."""
    root = (root or default_download_dir()).resolve()
    path = Path(path).resolve()
    folder = path if path.is_dir() else path.parent
    if folder.parent.parent != root:
        return
    if path.is_file():
        path.unlink()  # the marker still lists it, but a missing file is fetched again when asked for
        if any(other.name != COMPLETE_MARKER for other in folder.iterdir()):
            return
    shutil.rmtree(folder, ignore_errors=True)


class _Offline(Exception):
    """The hub could not be reached (or HF_HUB_OFFLINE is set)."""


def _http_module():
    """The httpx-compatible package behind huggingface_hub's session (httpx, or its fork httpx2)."""
    from huggingface_hub.utils import get_session

    return sys.modules[type(get_session()).__module__.split(".")[0]]


def _http_errors() -> tuple[type[BaseException], ...]:
    """Every error of a transfer: transport failures and bad statuses."""
    http = _http_module()
    return (http.HTTPError, http.StreamError)


def _listing(repo_id: str, revision: str) -> tuple[str, list[RemoteFile]]:
    from huggingface_hub import HfApi, constants
    from huggingface_hub import errors as hub_errors

    if constants.HF_HUB_OFFLINE:
        raise _Offline("HF_HUB_OFFLINE is set")
    unreachable = _http_module().TransportError  # no connection, DNS failure, timeout
    try:
        info = HfApi().model_info(repo_id, revision=revision, files_metadata=True)
    except hub_errors.GatedRepoError as error:
        raise DownloadError(f"{repo_id} is gated: accept its licence on huggingface.co and log in with "
                            "`hf auth login`, then try again.") from error
    except hub_errors.RepositoryNotFoundError as error:
        raise DownloadError(f"{repo_id} was not found on the Hugging Face hub (check the spelling, or log in "
                            "if it is private).") from error
    except hub_errors.RevisionNotFoundError as error:
        raise DownloadError(f"{repo_id} has no revision {revision!r}.") from error
    except hub_errors.HfHubHTTPError as error:  # before OSError: it is one
        raise DownloadError(f"The Hugging Face hub refused the listing of {repo_id} ({error}). Try again later.") from error
    except (hub_errors.OfflineModeIsEnabled, OSError, unreachable) as error:
        raise _Offline(str(error)) from error
    files = [RemoteFile(s.rfilename, s.size, s.lfs.sha256 if s.lfs else None) for s in info.siblings or []]
    return str(info.sha), files


def _matches(path: str, patterns: list[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatch(path, pattern) for pattern in patterns)


def _marked_files(folder: Path) -> list[str]:
    """Files the folder's marker lists as downloaded and checked (none without a readable marker)."""
    try:
        files = json.loads((folder / COMPLETE_MARKER).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in files if isinstance(name, str)] if isinstance(files, list) else []


def _is_complete(folder: Path, wanted: list[RemoteFile]) -> bool:
    done = set(_marked_files(folder))
    return bool(done) and all(f.path in done and (folder / f.path).is_file() for f in wanted)


def _complete_copy(repo_dir: Path, revision: str) -> Path | None:
    try:
        commit = (repo_dir / f"revision-{revision}").read_text(encoding="utf-8").strip()
    except OSError:
        return None
    folder = repo_dir / commit
    return folder if (folder / COMPLETE_MARKER).is_file() else None


def _forget_other_partial_commits(repo_dir: Path, commit: str) -> None:
    # parts of an older commit can never be continued: the files changed
    if repo_dir.is_dir():
        for other in repo_dir.iterdir():
            if other.is_dir() and other.name != commit and not (other / COMPLETE_MARKER).is_file():
                shutil.rmtree(other, ignore_errors=True)


def _fetch_all(repo_id: str, commit: str, folder: Path, wanted: list[RemoteFile], reporter: Reporter) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = {f.path: _bytes_on_disk(folder, f) for f in wanted}
    total = sum(f.size or 0 for f in wanted)
    missing = sum(max(0, (f.size or 0) - have[f.path]) for f in wanted)
    free = shutil.disk_usage(folder).free
    if missing + _SPACE_MARGIN > free:
        raise DownloadError(f"{repo_id} needs {_gb(missing)} more on disk but only {_gb(free)} is free in {folder}. "
                            "Free some disk space and download again; what arrived so far is kept.")
    done = sum(have.values())
    for remote in wanted:
        reporter.report("download", done, total, item=remote.path, message=f"Downloading {remote.path}")
        done_before = done - have[remote.path]
        _fetch(repo_id, commit, folder, remote, reporter, done_before, total)
        done = done_before + (remote.size or (folder / remote.path).stat().st_size)
    files = sorted(set(_marked_files(folder)) | {f.path for f in wanted})  # earlier single-file downloads stay
    marker = {"repo": repo_id, "commit": commit, "files": files}
    (folder / COMPLETE_MARKER).write_text(json.dumps(marker, indent=2), encoding="utf-8")
    reporter.report("download", total, total, item=repo_id, message=f"Downloaded {repo_id}")


def _bytes_on_disk(folder: Path, remote: RemoteFile) -> int:
    final = folder / remote.path
    if final.is_file():
        return final.stat().st_size
    part = final.with_name(final.name + PART_SUFFIX)
    return part.stat().st_size if part.is_file() else 0


def _fetch(repo_id: str, commit: str, folder: Path, remote: RemoteFile, reporter: Reporter, done_before: int,
           total: int) -> None:
    from huggingface_hub import hf_hub_url
    from huggingface_hub import errors as hub_errors
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    final = folder / remote.path
    if final.is_file() and (remote.size is None or final.stat().st_size == remote.size):
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + PART_SUFFIX)
    if part.is_file() and remote.size is not None and part.stat().st_size > remote.size:
        part.unlink()  # longer than the file: not ours to continue
    resume = part.stat().st_size if part.is_file() else 0
    url = hf_hub_url(repo_id, remote.path, revision=commit)
    try:
        with open(part, "r+b" if resume else "wb") as handle:
            handle.seek(resume)
            http_get(url, handle, resume_size=resume, headers=build_hf_headers(), expected_size=remote.size,
                     displayed_filename=remote.path, tqdm_class=_forwarding_tqdm(reporter, done_before, total))
    except ConversionCancelled:
        raise
    except (hub_errors.HfHubHTTPError, *_http_errors()) as error:  # before OSError: HfHubHTTPError is one
        raise DownloadError(f"Downloading {remote.path} of {repo_id} failed ({error}). Check the connection and try "
                            "again; it continues where it stopped.") from error
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DownloadError(f"The disk filled up while downloading {remote.path} ({error.strerror}). Free some "
                                "disk space and download again; it continues where it stopped.") from error
        raise DownloadError(f"Downloading {remote.path} of {repo_id} failed ({error}). Try again; it continues "
                            "where it stopped.") from error
    if remote.sha256 and _sha256(part) != remote.sha256:
        part.unlink()
        raise DownloadError(f"{remote.path} of {repo_id} arrived damaged (its checksum does not match the hub's). "
                            "The damaged copy was deleted; download again.")
    part.replace(final)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _gb(size: int) -> str:
    return f"{size / 1e9:.1f} GB"


def _forwarding_tqdm(reporter: Reporter, done_before: int, total: int):
    from tqdm.auto import tqdm

    class ForwardingTqdm(tqdm):
        """huggingface_hub's progress bar turned into "download" reports over all files (and cancel checks)."""

        def __init__(self, *args, **kwargs):
            kwargs.pop("name", None)  # huggingface_hub's own bar class takes it; tqdm does not
            kwargs["disable"] = True  # the caller draws progress from the reports
            super().__init__(*args, **kwargs)
            self.received, self.item = int(kwargs.get("initial") or 0), str(kwargs.get("desc") or "")

        def update(self, n: float | None = 1) -> bool | None:
            self.received += int(n or 0)
            reporter.report("download", done_before + self.received, total, item=self.item,
                            message=f"Downloading {self.item}")
            return super().update(n)

    return ForwardingTqdm
