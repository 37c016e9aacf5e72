"""`alignkit annotate`: the human pairwise-comparison web app (FastAPI + SQLite) and its store."""
