"""Reports of a run: what the engine records while it runs (observe.py, no plotting deps) and
the charts and HTML page of `autoif report` (charts.py, html.py; the `report` extra: matplotlib)."""
