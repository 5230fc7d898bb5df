"""The episode store and its schema, on the LeRobot v3 layout (``lerobot``) that human-hand and robot
data share."""
