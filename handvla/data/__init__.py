"""The episode store and its schema: the on-disk LeRobot v3 layout shared by human-hand and robot data."""
