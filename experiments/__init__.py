"""Assignment, statistics and experiment results."""
