"""Feature spaces: compare the spaces a run's clusters can be measured in."""
