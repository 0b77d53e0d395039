"""Tasks: data sources (built-in generators, local files, hub datasets), prompt formats, scorers."""
