"""Offline usage and cost reports."""
