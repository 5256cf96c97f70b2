"""The detector: rules, policy analyzer, alarms and their delivery hooks."""
