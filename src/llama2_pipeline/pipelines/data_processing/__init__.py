"""Pipeline ``data_processing``: raw crawl -> clean, deduplicated, PII-free Parquet shards + report."""

from .pipeline import create_pipeline

__all__ = ["create_pipeline"]
