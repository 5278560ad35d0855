"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST (raw or gzipped).

An IDX file is two zero bytes, a dtype code, the number of dimensions ``d``, then ``d`` big-endian uint32
sizes and the big-endian array data.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from amc.errors import AmcError

#: IDX dtype code -> numpy dtype (big-endian, as stored).
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dtype.newbyteorder("="): code for code, dtype in IDX_DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"
_MAX_DIMS = 8


def _bad(path: Path, problem: str) -> AmcError:
    return AmcError(f"{path} is not a valid IDX file ({problem}): delete it and download it again")


def read_idx_bytes(path: str | Path) -> bytes:
    """Return the uncompressed content of an IDX file; gzip is detected from the magic bytes.

    Args:
        path: the ``.idx``/``-ubyte`` file, gzipped or raw.

    Raises:
        AmcError: the file is missing, unreadable or a broken gzip stream.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise AmcError(f"{path} does not exist: check data.root or set data.download=true") from exc
    except OSError as exc:
        raise AmcError(f"cannot read {path} ({exc}): check the file's permissions") from exc
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise _bad(path, f"corrupt or truncated gzip data: {exc}") from exc


def parse_idx(data: bytes, path: str | Path = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes into a native-endian numpy array.

    Args:
        data: the uncompressed file content.
        path: file name used in error messages.

    Returns:
        A writable array with the file's shape and dtype (native byte order).

    Raises:
        AmcError: bad magic number, unknown dtype code, or a size that does not match the header.
    """
    path = Path(path)
    if len(data) < 4:
        raise _bad(path, f"only {len(data)} bytes, shorter than the 4-byte header")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0:
        raise _bad(path, f"magic number starts with 0x{zero:04x} instead of 0x0000")
    if code not in IDX_DTYPES:
        raise _bad(path, f"unknown dtype code 0x{code:02x}")
    if not 1 <= ndim <= _MAX_DIMS:
        raise _bad(path, f"{ndim} dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise _bad(path, f"truncated header: {len(data)} bytes for {ndim} dimensions")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_DTYPES[code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual < expected:
        raise _bad(path, f"truncated: {actual} data bytes for shape {shape}, expected {expected}")
    if actual > expected:
        raise _bad(path, f"{actual - expected} unexpected trailing bytes after shape {shape}")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def read_idx(path: str | Path) -> np.ndarray:
    """Read a gzipped or raw IDX file, validating its header against its size.

    Args:
        path: the file.

    Returns:
        The array (native byte order, writable).

    Raises:
        AmcError: naming the file and telling to delete and re-download it when it is corrupt or truncated.
    """
    return parse_idx(read_idx_bytes(path), path)


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file (for tests and tools).

    Args:
        path: destination file.
        array: array of a dtype IDX supports (uint8, int8, int16, int32, float32, float64).
        compress: gzip the file; ``None`` means "if the name ends with ``.gz``".

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        AmcError: the dtype or number of dimensions cannot be stored in IDX.
    """
    path = Path(path)
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        raise AmcError(f"IDX cannot store dtype {array.dtype}: convert to uint8, int8, int16, int32 or float")
    if not 1 <= array.ndim <= _MAX_DIMS:
        raise AmcError(f"IDX cannot store a {array.ndim}-dimensional array: use 1 to {_MAX_DIMS} dimensions")
    code = _CODES[native]
    payload = (
        struct.pack(">HBB", 0, code, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    )
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, compresslevel=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)
    return path
