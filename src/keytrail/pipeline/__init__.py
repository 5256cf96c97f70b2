"""Stream consumers: usage, cost and last-used metrics from the audit events (polars).

Layers: `frame` (CloudTrail records → one fixed-schema frame), pure aggregations (`usage`,
`lastused`, `cost`), checkpointed per-partition `state`, the `runner` and its sources
(`segment_source`, `kafka_source`, `sources`), and the outputs (`query`, `prometheus`,
`parquet`). `consumer.MetricsConsumer` puts them together; see docs/metrics.md.
"""
