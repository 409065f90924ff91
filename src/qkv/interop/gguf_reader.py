"""A GGUF file's header read straight from a memory map: the metadata as Python values, each tensor's type,
shape and place in the file, and its bytes as a view of the map, touched only when a loader asks.

Why not ``gguf.GGUFReader``: it makes a numpy view for every item of every metadata array, and a byte-level
BPE vocabulary is ~100,000 strings (tokens and merges), so opening SmolLM2-135M took 6 s before any weight
was read (twice that for `qkv info`, which opened it twice). llama.cpp reads the same header in
milliseconds; so does this, one ``struct`` read per item. The ``gguf`` package still names the types
(``GGMLQuantizationType``, ``GGML_QUANT_SIZES``) and dequantizes the formats qkv has no reader of its own
for. A test holds the fields and tensors equal to ``GGUFReader``'s on every fixture.

The layout (little-endian; GGUF versions 2 and 3, llama.cpp's ``gguf.md``):

    "GGUF"  u32 version  u64 n_tensors  u64 n_kv
    n_kv x      key (u64 length + UTF-8)  u32 value type  value      (an array: u32 item type, u64 n, items)
    n_tensors x name  u32 n_dims  u64 dims[n_dims] (ggml order: innermost first)  u32 ggml type  u64 offset
    padding to general.alignment (default 32), then the tensors' data, each at its offset from here
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
NUMPY_TYPES = {"F32": np.float32, "F16": np.float16}       # as GGUFReader: other types are rows of bytes
DEFAULT_ALIGNMENT = 32


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the file. ``shape`` is ggml's order (in, out); ``data`` is (out, in) as stored: floats
    for F32/F16, (out, bytes per row) uint8 for every other type."""
    name: str
    tensor_type: object                  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    n_elements: int
    n_bytes: int
    data_offset: int
    _map: mmap.mmap

    @property
    def data(self) -> np.ndarray:
        rows = tuple(reversed(self.shape))
        kind = NUMPY_TYPES.get(self.tensor_type.name)
        if kind is None:                                    # blocks: whole bytes per row
            rows = (*rows[:-1], self.n_bytes // max(1, int(np.prod(rows[:-1], dtype=np.int64))))
            kind = np.uint8
        return np.frombuffer(self._map, kind, int(np.prod(rows, dtype=np.int64)), self.data_offset).reshape(rows)


class Header:
    """``fields`` {key: value} (arrays as lists) and ``tensors`` {name: TensorInfo} of the file at ``path``.

    The map is private (copy-on-write): tensors built on it are writable for torch without copying the
    file, and nothing written to them ever reaches the file.
    """

    def __init__(self, path: Path, quant_types, quant_sizes):
        with open(path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY)
        self._pos = 0
        if self._read(4) != b"GGUF":
            raise ValueError("GGUF magic invalid")
        version = self._unpack("<I")
        if version not in (2, 3):
            raise ValueError(f"GGUF version {version} (qkv reads 2 and 3; a big-endian file reads as a huge one)")
        n_tensors, n_kv = self._unpack("<Q"), self._unpack("<Q")
        self.fields: dict[str, object] = {}
        for _ in range(n_kv):
            key = self._string()
            if key in self.fields:
                raise ValueError(f"duplicate key {key}")
            self.fields[key] = self._value(self._unpack("<I"))
        infos = []
        for _ in range(n_tensors):
            name = self._string()
            dims = tuple(self._unpack("<Q") for _ in range(self._unpack("<I")))
            infos.append((name, dims, self._unpack("<I"), self._unpack("<Q")))
        alignment = self.fields.get("general.alignment", DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment} is not a power of two")
        start = -(-self._pos // alignment) * alignment
        self.tensors: dict[str, TensorInfo] = {}
        for name, dims, raw_type, offset in infos:
            kind = quant_types(raw_type)                    # ValueError for a type id ggml does not define
            n = int(np.prod(dims, dtype=np.int64))
            block, size = quant_sizes[kind]
            t = TensorInfo(name, kind, dims, n, n * size // block, start + offset, self._map)
            if t.data_offset + t.n_bytes > len(self._map):
                raise ValueError(f"tensor {name} ends past the end of the file")
            if name in self.tensors:
                raise ValueError(f"duplicate tensor {name}")
            self.tensors[name] = t

    def _read(self, n: int) -> bytes:
        if self._pos + n > len(self._map):
            raise ValueError("the header ends past the end of the file")
        b = self._map[self._pos:self._pos + n]
        self._pos += n
        return b

    def _unpack(self, fmt: str):
        (value,) = struct.unpack(fmt, self._read(struct.calcsize(fmt)))
        return value

    def _string(self) -> str:
        return self._read(self._unpack("<Q")).decode("utf-8")

    def _strings(self, n: int) -> list[str]:
        m, pos, out = self._map, self._pos, []
        for _ in range(n):
            (length,) = struct.unpack_from("<Q", m, pos)     # struct.error past the end of the file
            out.append(m[pos + 8:pos + 8 + length].decode("utf-8"))
            pos += 8 + length
        if pos > len(m):
            raise ValueError("the header ends past the end of the file")
        self._pos = pos
        return out

    def _value(self, kind: int):
        if kind == STRING:
            return self._string()
        if kind == ARRAY:
            item, n = self._unpack("<I"), self._unpack("<Q")
            if item in SCALARS:                              # one read for the whole array
                fmt = SCALARS[item]
                return np.frombuffer(self._read(n * struct.calcsize(fmt)), np.dtype(fmt), n).tolist()
            if item == STRING:                               # a vocabulary: ~50,000 of them, so a tight loop
                return self._strings(n)
            return [self._value(item) for _ in range(n)]
        if kind not in SCALARS:
            raise ValueError(f"unknown metadata value type {kind}")
        return self._unpack(SCALARS[kind])
