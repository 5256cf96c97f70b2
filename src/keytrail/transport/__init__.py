"""Event log transports: the embedded on-disk log, Kafka and CloudTrail log files, and the broker
and receiver addresses operators give (the MQTT and webhook alarm hooks are in detect/sinks)."""
