"""The names of the HTTP table's servers: the results files key their runs by them."""

KEYTRAIL = "keytrail"  # everything on: Kafka shipping, consumer and detector children, MQTT alarms
EMBEDDED = "keytrail, default serve"  # `serve` as it starts by default: the embedded event log, no Kafka
NODE = "keytrail, scale-out node"  # audit trail + Kafka + consumer; the detector runs in its own process
AUDIT_OFF = "keytrail, audit off"
MOTO = "moto"
CEILING = "ceiling"

# The audit pair's second Encrypt run, with enough connections that both serving threads stay busy:
# under the table's 16, each audited answer waits on its group commit and the audited thread idles
# (busy ≈ 0.88 where audit off reaches 0.99), so the ratio there is partly one of latency.
SATURATED = "Encrypt, saturated"
SATURATING_CONNECTIONS = 64
