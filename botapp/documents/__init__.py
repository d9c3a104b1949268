"""Documents and knowledge bases: extract, chunk, index and retrieve what a person or an admin uploads.

Submodules, imported by name (this package imports nothing, so `botapp.models` can load its models):
`models` (the data), `extract` (bytes to text), `chunk` (text to chunks), `vectors` (embeddings in the
database and their ranking), `ingest` (the pipeline a worker runs), `services` (uploads, re-index, removal),
`context` (what a question gets from its documents) and `progress` (how far a file is, in words).
"""
