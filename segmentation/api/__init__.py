"""The segmentation API, by topic: customers, events, segments."""
