"""Embeddings stored in the database as int8, ranked in memory with numpy: exact search, on any database.

Why this design (measured on the 2-core machines, see README, Documents):
- No vector extension: pgvector is not in the PostgreSQL Jarvis installs, and Python's sqlite3 here cannot
  load extensions (sqlite-vec). A BLOB column works on both, the same way.
- Vectors are asked for at OPENAI_EMBEDDING_DIMENSIONS (512) where the model can shorten them
  (text-embedding-3-*), then unit-normalised and quantised to int8 with one scale per vector: 512 bytes a
  chunk, 51 MB for 100,000 chunks (float32 at 1536 would be 600 MB), at about 1% of recall.
- Ranking is a brute-force dot product over the documents in scope: exact, no index to build or tune,
  under 30 ms at 100,000 chunks. The int8 matrices of recently used documents stay in the process (up to
  VECTOR_CACHE_BYTES), keyed by the document's `version`, which re-indexing bumps.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from botapp.documents.models import DocumentChunk

logger = logging.getLogger(__name__)

# With the process itself (Django, the openai SDK, tokenizers: about 170 MB) this keeps it under 300 MB.
VECTOR_CACHE_BYTES = 96 * 1024 * 1024
# Rows converted to float32 at a time: small enough to stay in the CPU cache, large enough for BLAS.
BLOCK_ROWS = 1024
LOAD_BATCH = 2000


def quantize(vector: Sequence[float]) -> tuple[bytes, float]:
    """A vector as unit-length int8 components and the scale that turns them back into floats."""
    values = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(values)) or 1.0
    values = values / norm
    scale = (float(np.abs(values).max()) or 1.0) / 127.0
    return np.round(values / scale).astype(np.int8).tobytes(), scale


def query_vector(vector: Sequence[float]) -> np.ndarray:
    values = np.asarray(vector, dtype=np.float32)
    return values / (float(np.linalg.norm(values)) or 1.0)


@dataclass
class _Matrix:
    version: int
    ids: np.ndarray  # int64 chunk ids
    rows: np.ndarray  # int8, one row per chunk
    scales: np.ndarray  # float32

    @property
    def nbytes(self) -> int:
        return self.ids.nbytes + self.rows.nbytes + self.scales.nbytes


class VectorCache:
    """The int8 vectors of recently searched documents, least recently used dropped first."""

    def __init__(self, max_bytes: int = VECTOR_CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[int, _Matrix] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, document_id: int, version: int, dimensions: int) -> _Matrix:
        with self._lock:
            entry = self._entries.get(document_id)
            if entry is not None and entry.version == version:
                self._entries.move_to_end(document_id)
                return entry
        entry = _load(document_id, version, dimensions)
        with self._lock:
            old = self._entries.pop(document_id, None)
            if old is not None:
                self._bytes -= old.nbytes
            self._entries[document_id] = entry
            self._bytes += entry.nbytes
            while self._bytes > self.max_bytes and len(self._entries) > 1:
                _id, dropped = self._entries.popitem(last=False)
                self._bytes -= dropped.nbytes
        return entry

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes


cache = VectorCache()


def _load(document_id: int, version: int, dimensions: int) -> _Matrix:
    """Read a document's vectors in batches straight into preallocated arrays (no list of 100k tuples)."""
    rows = DocumentChunk.objects.filter(document_id=document_id, embedding__isnull=False).order_by("id")
    total = rows.count()
    ids = np.empty(total, dtype=np.int64)
    matrix = np.empty((total, dimensions), dtype=np.int8)
    scales = np.empty(total, dtype=np.float32)
    filled = 0
    for chunk_id, blob, scale in rows.values_list("id", "embedding", "embedding_scale").iterator(LOAD_BATCH):
        if filled >= total:
            break
        vector = np.frombuffer(bytes(blob), dtype=np.int8)
        if vector.shape[0] != dimensions:
            continue
        ids[filled], matrix[filled], scales[filled] = chunk_id, vector, scale
        filled += 1
    return _Matrix(version=version, ids=ids[:filled], rows=matrix[:filled], scales=scales[:filled])


def _scores(entry: _Matrix, query: np.ndarray, buffer: np.ndarray) -> np.ndarray:
    out = np.empty(entry.rows.shape[0], dtype=np.float32)
    for start in range(0, entry.rows.shape[0], BLOCK_ROWS):
        block = entry.rows[start : start + BLOCK_ROWS]
        converted = buffer[: block.shape[0]]
        np.copyto(converted, block, casting="unsafe")
        # einsum, not BLAS: a matrix-vector product this size gains nothing from BLAS threads, and on a
        # busy 2-core machine waiting for them doubled the slowest searches.
        np.einsum("ij,j->i", converted, query, out=out[start : start + block.shape[0]])
    return out * entry.scales


def search(documents: Iterable[tuple[int, int]], query: np.ndarray, *, limit: int = 50) -> list[tuple[int, float]]:
    """The `limit` chunks of `documents` ((id, version) pairs) closest to `query`, best first (cosine)."""
    found_ids: list[np.ndarray] = []
    found_scores: list[np.ndarray] = []
    buffer = np.empty((BLOCK_ROWS, query.shape[0]), dtype=np.float32)
    for document_id, version in documents:
        entry = cache.get(document_id, version, query.shape[0])
        if not entry.ids.shape[0]:
            continue
        scores = _scores(entry, query, buffer)
        if scores.shape[0] > limit:
            top = np.argpartition(-scores, limit)[:limit]
            found_ids.append(entry.ids[top])
            found_scores.append(scores[top])
        else:
            found_ids.append(entry.ids)
            found_scores.append(scores)
    if not found_ids:
        return []
    ids = np.concatenate(found_ids)
    scores = np.concatenate(found_scores)
    order = np.argsort(-scores)[:limit]
    return [(int(ids[i]), float(scores[i])) for i in order]
