"""End-to-end tests: real boto3 against a real `keytrail serve`, real Kafka and MQTT brokers."""
