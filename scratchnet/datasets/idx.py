"""Reader for the IDX file format used by MNIST and Fashion-MNIST.

Layout: two zero bytes, a type code byte, a byte giving the number of
dimensions, then each dimension as a big-endian uint32, then the values
(big-endian for multi-byte types) in C order.
"""

import gzip
import math
import os
import struct
import zlib

import numpy as np

# IDX type code -> big-endian numpy dtype of the payload.
_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path):
    """Read an IDX file, raw or gzip-compressed, into a numpy array.

    Compression is detected from the gzip magic bytes, not the file name.
    Returns a new, writable array with the header's shape and the header's
    dtype in native byte order (uint8, int8, int16, int32, float32 or
    float64); e.g. MNIST training images give uint8 of shape (60000, 28, 28).

    Raises FileNotFoundError if the file is missing and ValueError, naming
    the file, if it is not a valid IDX file.
    """
    name = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == _GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{name}: corrupt gzip data ({e})") from None

    if len(data) < 4:
        raise ValueError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0] != 0 or data[1] != 0:
        raise ValueError(f"{name}: bad magic: first two bytes are "
                         f"{data[:2].hex()}, expected 0000")
    code, ndim = data[2], data[3]
    if code not in _TYPES:
        raise ValueError(f"{name}: unknown type code 0x{code:02X}, expected one of "
                         + ", ".join(f"0x{c:02X}" for c in _TYPES))
    if not 1 <= ndim <= 8:
        raise ValueError(f"{name}: number of dimensions is {ndim}, expected 1..8")

    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise ValueError(f"{name}: header truncated: {ndim} dimensions need "
                         f"{offset} header bytes, file has {len(data)}")
    shape = struct.unpack(f">{ndim}I", data[4:offset])
    dtype = _TYPES[code]
    expected = dtype.itemsize * math.prod(shape)
    got = len(data) - offset
    if got != expected:
        raise ValueError(f"{name}: payload has {got} bytes, header says {expected}")

    # astype copies, which also makes the result writable and native-endian.
    arr = np.frombuffer(data, dtype=dtype, offset=offset)
    return arr.astype(dtype.newbyteorder("=")).reshape(shape)
