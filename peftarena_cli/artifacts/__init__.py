"""Artifact I/O: model references, lazy safetensors access, adapters, Parquet tables, atomic writes.

Nothing here imports typer or rich, and nothing prints.
"""
