"""The promptdex search API (FastAPI): keyword, semantic, similar, upload and hybrid search; files; jobs."""
