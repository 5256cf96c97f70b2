"""Event log transports: the embedded on-disk log, Kafka, MQTT, webhooks."""
