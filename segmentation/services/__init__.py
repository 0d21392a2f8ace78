"""Writes for customers, events, metrics and segments, split by topic."""
