"""The names of the HTTP table's servers: the results files key their runs by them."""

KEYTRAIL = "keytrail"  # everything on: Kafka shipping, consumer and detector children, MQTT alarms
EMBEDDED = "keytrail, default serve"  # `serve` as it starts by default: the embedded event log, no Kafka
NODE = "keytrail, scale-out node"  # audit trail + Kafka + consumer; the detector runs in its own process
AUDIT_OFF = "keytrail, audit off"
MOTO = "moto"
CEILING = "ceiling"
