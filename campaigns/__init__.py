"""Email campaigns, delivery and tracking."""
