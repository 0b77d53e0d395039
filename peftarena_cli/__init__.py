"""peftarena: stability–plasticity analysis of parameter-efficient fine-tuning.

The package is a core library (everything except :mod:`peftarena_cli.cli`) under a thin
typer CLI. Core modules never print and never import typer or rich.
"""

__version__ = "0.1.0"
