"""Event log transports: the embedded on-disk segment log, Kafka, CloudTrail log files."""
