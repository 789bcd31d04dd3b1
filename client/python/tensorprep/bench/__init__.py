"""The comparison benchmark (run it as ``python -m tensorprep.bench``; see __main__.py)."""
