"""Offline usage, cost and security reports (HTML, CSV, JSON lines, Parquet).

`keytrail.reports.collect` runs the pipeline's consumer over an event source into a scratch
state and queries it, so report figures equal `keytrail usage | cost | last-used`;
`keytrail.reports.output` writes them as one self-contained HTML page or as tables.
"""
