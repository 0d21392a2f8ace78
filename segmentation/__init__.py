"""Customers, engagement events, metrics and segments."""
