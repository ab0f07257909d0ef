"""Studies and benchmarks, one command each: ``python -m analyses.<name> --help`` from the repository's root.

Each writes figures and markdown/JSON tables under ``analyses/results/``; ``_studies`` holds what the studies share.
"""
