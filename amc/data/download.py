"""Checksummed downloads with atomic writes, and tar extraction that refuses to write outside its folder."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from amc.errors import AmcError
from amc.utils import give_umask_mode

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def md5_file(path: str | Path, chunk_size: int = _CHUNK) -> str:
    """Return the hex MD5 digest of a file, read in chunks.

    Args:
        path: the file.
        chunk_size: bytes read at a time.

    Returns:
        The 32-character lowercase hex digest.
    """
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def check_md5(path: str | Path, md5: str) -> bool:
    """Whether ``path`` exists and its MD5 digest equals ``md5`` (case-insensitive).

    Args:
        path: the file.
        md5: the expected hex digest.
    """
    path = Path(path)
    return path.is_file() and md5_file(path) == md5.lower()


def verify_md5(path: str | Path, md5: str) -> None:
    """Raise :class:`AmcError` unless ``path`` has the MD5 digest ``md5``.

    Args:
        path: the file.
        md5: the expected hex digest.

    Raises:
        AmcError: the file is missing or its digest differs.
    """
    path = Path(path)
    if not path.is_file():
        raise AmcError(f"{path} does not exist: download it again or set data.download=true")
    got = md5_file(path)
    if got != md5.lower():
        raise AmcError(
            f"{path} has MD5 {got} but the official file has {md5.lower()}: "
            "delete it and download it again (data.download=true)"
        )


def download_file(urls: Sequence[str], dest: str | Path, md5: str | None, timeout: float = 60.0) -> Path:
    """Download a file from the first mirror that works, check its MD5, and move it into place atomically.

    The bytes are streamed into a temporary file next to ``dest`` and renamed over ``dest`` only once the
    checksum matches, so an interrupted or corrupted download never leaves a file at ``dest``. An existing
    ``dest`` with the right checksum is kept without downloading. ``file://`` URLs work too.

    Args:
        urls: mirrors to try in order.
        dest: where the file goes.
        md5: expected hex MD5 of the file, or ``None`` to skip the check.
        timeout: socket timeout in seconds for each mirror.

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        AmcError: no mirror gave a file with the right checksum.
    """
    dest = Path(dest)
    if dest.is_file() and (md5 is None or check_md5(dest, md5)):
        return dest
    if not urls:
        raise AmcError(f"no download address known for {dest.name}: put the file into {dest.parent} by hand")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise AmcError(f"cannot create {dest.parent} ({exc}): set data.root to a writable folder") from exc
    errors: list[str] = []
    for url in urls:
        log.info("downloading %s from %s", dest.name, url)
        try:
            got = _fetch(url, dest, md5, timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", None) or exc
            errors.append(f"{url}: {reason}")
            continue
        if got is not None:
            errors.append(f"{url}: MD5 {got} differs from the official {md5}")
            continue
        log.info("saved %s", dest)
        return dest
    raise AmcError(
        f"could not download {dest.name} ({'; '.join(errors)}): check the network connection or proxy, "
        f"or copy the official file into {dest.parent} by hand"
    )


def _fetch(url: str, dest: Path, md5: str | None, timeout: float) -> str | None:
    """Stream ``url`` into a temporary file and rename it to ``dest``; return the bad digest on mismatch."""
    request = urllib.request.Request(url, headers={"User-Agent": "amc-data/0.1"})
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as response:
            while chunk := response.read(_CHUNK):
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if md5 is not None and digest.hexdigest() != md5.lower():
            return digest.hexdigest()
        give_umask_mode(tmp)
        os.replace(tmp, dest)
        return None
    finally:
        Path(tmp).unlink(missing_ok=True)


def _check_member(member: tarfile.TarInfo, archive: Path) -> None:
    """Refuse tar members that could write outside the extraction folder."""
    name = member.name
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or ".." in parts:
        raise AmcError(
            f"{archive} contains the unsafe path {name!r}: refusing to extract; "
            "delete the archive and download the official one"
        )
    if not (member.isfile() or member.isdir()):
        raise AmcError(
            f"{archive} contains {name!r}, which is a link or special file: refusing to extract; "
            "delete the archive and download the official one"
        )


def safe_extract_tar(archive: str | Path, dest: str | Path) -> list[str]:
    """Extract a (gzipped) tar archive into ``dest``, refusing unsafe members.

    Every member is checked before anything is written: absolute paths, ``..`` components, links and
    device files are rejected. The archive is unpacked into a temporary folder inside ``dest`` and each
    top-level entry is then renamed into place, so a failed extraction leaves no half-written folder.

    Args:
        archive: the ``.tar``/``.tar.gz`` file.
        dest: folder to extract into (created if missing).

    Returns:
        The names of the top-level entries extracted.

    Raises:
        AmcError: the archive is unreadable or contains an unsafe member.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                _check_member(member, archive)
            tmp = Path(tempfile.mkdtemp(dir=dest, prefix=".extract-"))
            try:
                if hasattr(tarfile, "data_filter"):
                    tar.extractall(tmp, members=members, filter="data")
                else:  # pragma: no cover - Python < 3.11.4
                    tar.extractall(tmp, members=members)
                tops = sorted(p.name for p in tmp.iterdir())
                for top in tops:
                    target = dest / top
                    if target.is_dir():
                        shutil.rmtree(target)
                    elif target.exists():
                        target.unlink()
                    os.replace(tmp / top, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise AmcError(f"{archive} is not a readable tar archive ({exc}): delete it and download it again") from exc
    return tops
