"""Artifact helpers shared by the steps: URI-safe storage, output directories, record counts."""
