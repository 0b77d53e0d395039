"""The thin CLI layer: typer commands that parse arguments, call the core, show progress on stderr
and write artifacts. Heavy imports (torch, transformers, pandas) happen inside command bodies."""
