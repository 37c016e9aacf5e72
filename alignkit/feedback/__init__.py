"""Preference-data tooling: quality report (`inspect`), implicit signals, AI feedback (`judge`), human annotation (`annotate`)."""
