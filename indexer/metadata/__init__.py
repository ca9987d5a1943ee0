"""Metadata readers: image containers and every front end's generation-parameter formats."""

from indexer.metadata.reader import parse_raw, read_metadata
from indexer.metadata.result import ReadResult, SamplerInfo, source_for

__all__ = ["ReadResult", "SamplerInfo", "parse_raw", "read_metadata", "source_for"]
