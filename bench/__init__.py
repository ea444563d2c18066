"""Benchmarks (run as scripts; a package only so uvicorn can import the baseline app)."""
