"""Tasks: what an evaluation asks. Data sources (built-in generators, local files, hub datasets),
the Item/Task records (``spec.py``), prompt rendering (``prompting.py``), gold answers
(``answers.py``) and per-part limits (``limits.py``). Scoring lives in ``evaluation/scorers/``."""
