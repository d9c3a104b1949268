"""Benchmark 5: documents. Ingestion rate (pages per second, the model's time left out) and retrieval time with
100,000 chunks in a knowledge base (p50, p99), with the peak memory of the process that retrieves.

`--databases sqlite postgres` (the default) runs on a scratch SQLite file and a scratch PostgreSQL database.
Ingestion indexes a generated PDF through the real pipeline (pypdf, chunking, full-text index, embeddings
from the fake OpenAI server); the time spent waiting for the fake's embeddings is measured and subtracted.
Retrieval seeds 100,000 chunks of synthetic English and Chinese text (Zipf-distributed words, so common
terms are common) with 512-dimension int8 embeddings, then a fresh process answers queries with the same
hybrid ranking the funnel uses (full-text + vectors, fused), after one cold query that loads the vectors.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import uuid

from harness import ROOT, scratch_database

from tests.documents_support import make_pdf
from tests.fakes.openai_server import FakeOpenAI

INGEST = """
import json, sys, time
import django
django.setup()
from botapp import llm
from botapp.documents import ingest
from botapp.documents.models import Document, DocumentFile, KnowledgeBase
from django.contrib.auth import get_user_model

waited = 0.0
real_embed = llm.embed
async def timed_embed(**kwargs):
    global waited
    started = time.perf_counter()
    try:
        return await real_embed(**kwargs)
    finally:
        waited += time.perf_counter() - started
llm.embed = timed_embed

owner, _ = get_user_model().objects.get_or_create(username="bench-owner")
base, _ = KnowledgeBase.objects.get_or_create(name="bench-ingest", defaults={"owner": owner})
data = open(sys.argv[1], "rb").read()
document = Document.objects.create(knowledge_base=base, file_name="bench.pdf", size_bytes=len(data))
DocumentFile.objects.create(document=document, data=data)
started = time.perf_counter()
ingest.document_ingest(document.pk)
total = time.perf_counter() - started
document.refresh_from_db()
assert document.state == "ready", document.reason
print(json.dumps({"pages": document.pages, "chunks": document.chunk_count, "seconds": total, "model_seconds": waited}))
"""

SEED = """
import json, sys, time
import numpy as np
import django
django.setup()
from django.db import connection, transaction
from botapp import fulltext
from botapp.documents import vectors
from botapp.documents.models import CHUNKS, Document, DocumentChunk, DocumentState, KnowledgeBase

chunks, per_document, dimensions = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(7)
# Zipf-distributed vocabularies: 20,000 English-like words and 3,000 Chinese characters.
letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
english = ["".join(rng.choice(letters, size=rng.integers(3, 10))) for _ in range(20_000)]
chinese = [chr(0x4E00 + i) for i in rng.permutation(3_000)]
def zipf_words(vocabulary, count):
    ranks = rng.zipf(1.2, size=count)
    return [vocabulary[(r - 1) % len(vocabulary)] for r in ranks]
base = KnowledgeBase.objects.create(name="bench-100k")
started = time.perf_counter()
for start in range(0, chunks, per_document):
    with transaction.atomic():
        document = Document.objects.create(
            knowledge_base=base, file_name=f"file-{start // per_document}.pdf", state=DocumentState.READY,
            embedding_model="text-embedding-3-small", embedding_dimensions=dimensions, chunk_count=per_document,
        )
        rows = []
        for ordinal in range(per_document):
            if ordinal % 3 == 0:
                text = "".join(zipf_words(chinese, 400))
            else:
                text = " ".join(zipf_words(english, 220))
            blob, scale = vectors.quantize(rng.standard_normal(dimensions))
            page = ordinal // 3 + 1
            rows.append(DocumentChunk(document=document, ordinal=ordinal, text=text, page_start=page, page_end=page,
                                      token_count=300, embedding=blob, embedding_scale=scale))
        created = DocumentChunk.objects.bulk_create(rows, batch_size=500)
        fulltext.index_add(CHUNKS, ((row.pk, document.pk, row.text) for row in created))
if connection.vendor == "postgresql":
    # Where autovacuum brings a table after bulk inserts (visibility map, statistics); measured as it runs.
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
print(json.dumps({"seconds": time.perf_counter() - started, "english": english[:5]}))
"""

RETRIEVE = """
import json, resource, sys, time
import numpy as np
import django
django.setup()
from botapp.documents import context, vectors
from botapp.documents.models import Document, DocumentChunk

queries, dimensions = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(11)
documents = list(Document.objects.filter(knowledge_base__name="bench-100k").defer("summary"))
texts = DocumentChunk.objects.filter(document__in=documents).order_by("?").values_list("text", flat=True)
sample = list(texts[: queries + 1])

def question(text):
    if " " in text:
        words = text.split()
        return " ".join(words[i] for i in rng.integers(0, len(words), size=5))
    start = int(rng.integers(0, len(text) - 8))
    return text[start : start + 8]

def retrieve(text):
    vector = ("text-embedding-3-small", vectors.query_vector(rng.standard_normal(dimensions)))
    ranked = context.rank(text, documents, query_vector=vector)
    rows = DocumentChunk.objects.defer("embedding").in_bulk(ranked[: context.CANDIDATES])
    assert ranked and rows
    return ranked

started = time.perf_counter()
retrieve(question(sample[0]))
cold = time.perf_counter() - started
times = []
for text in sample[1:]:
    started = time.perf_counter()
    retrieve(question(text))
    times.append(time.perf_counter() - started)
times.sort()
def pct(q):
    return times[min(len(times) - 1, round(q / 100 * (len(times) - 1)))] * 1000
print(json.dumps({
    "cold_ms": cold * 1000, "p50_ms": pct(50), "p99_ms": pct(99), "queries": len(times),
    "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "vector_cache_mb": vectors.cache.nbytes / 1024 / 1024,
}))
"""


def child(script: str, env: dict[str, str], *args: str) -> dict[str, object]:
    output = subprocess.run([sys.executable, "-c", script, *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(f"The benchmark step failed:\n{output.stderr[-3000:]}")
    return json.loads(output.stdout.strip().splitlines()[-1])


def run(database_url: str | None, *, pages: int, chunks: int, queries: int, openai: FakeOpenAI) -> dict[str, object]:
    with scratch_database(database_url) as scratch:
        env = scratch.env(
            DJANGO_SETTINGS_MODULE="jarvis_site.settings",
            OPENAI_API_KEY="sk-bench",
            OPENAI_BASE_URL=openai.base_url,
            OPENAI_MAX_RETRIES="0",
        )
        pdf = scratch.directory / "bench.pdf"
        text = "The quarterly review covered sales, hiring, travel and the office move. " * 12
        pdf.write_bytes(make_pdf([f"Page {n}. {text}" for n in range(1, pages + 1)]))
        ingestion = child(INGEST, env, str(pdf))
        seeded = child(SEED, env, str(chunks), "1000", "512")
        retrieval = child(RETRIEVE, env, str(queries), "512")
    return {"ingestion": ingestion, "seed": seeded, "retrieval": retrieval}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", nargs="+", choices=["sqlite", "postgres"], default=["sqlite", "postgres"])
    parser.add_argument("--pages", type=int, default=200, help="pages of the PDF ingested")
    parser.add_argument("--chunks", type=int, default=100_000, help="chunks in the knowledge base searched")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    runs = []
    if "sqlite" in args.databases:
        runs.append(("SQLite", None))
    database = f"jarvis_bench_documents_{uuid.uuid4().hex[:8]}"
    if "postgres" in args.databases:
        runs.append(("PostgreSQL", f"postgres://postgres@127.0.0.1:5432/{database}"))
        subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", database], check=True)
    openai = FakeOpenAI().start()
    results = {}
    try:
        for label, url in runs:
            started = time.monotonic()
            results[label] = run(url, pages=args.pages, chunks=args.chunks, queries=args.queries, openai=openai)
            print(f"{label}: done in {time.monotonic() - started:.0f} s", file=sys.stderr)
    finally:
        openai.stop()
        if "postgres" in args.databases:
            subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", database], check=False)
    print(f"\nDocuments: ingestion of a {args.pages}-page PDF and retrieval among {args.chunks:,} chunks\n")
    print("| figure | " + " | ".join(results) + " | target |")
    print("|---|" + "---:|" * len(results) + "---|")
    rows = [
        (
            "ingestion, pages per second (model time excluded)",
            lambda r: r["ingestion"]["pages"] / max(r["ingestion"]["seconds"] - r["ingestion"]["model_seconds"], 1e-9),
            "{:.1f}",
            "",
        ),
        ("ingestion, embeddings wait (s, fake model)", lambda r: r["ingestion"]["model_seconds"], "{:.2f}", ""),
        ("retrieval p50 ms", lambda r: r["retrieval"]["p50_ms"], "{:.1f}", ""),
        ("retrieval p99 ms", lambda r: r["retrieval"]["p99_ms"], "{:.1f}", "< 150"),
        ("first retrieval (loads the vectors) ms", lambda r: r["retrieval"]["cold_ms"], "{:.0f}", ""),
        ("retrieving process peak RSS MB", lambda r: r["retrieval"]["rss_mb"], "{:.0f}", "< 300"),
        ("vectors held in memory MB", lambda r: r["retrieval"]["vector_cache_mb"], "{:.0f}", ""),
        ("seeding 100k chunks (s)", lambda r: r["seed"]["seconds"], "{:.0f}", ""),
    ]
    for name, value, fmt, target in rows:
        print(f"| {name} | " + " | ".join(fmt.format(value(r)) for r in results.values()) + f" | {target} |")
    print()
    print(json.dumps(results, indent=1, default=str), file=sys.stderr)


if __name__ == "__main__":
    main()
