"""Robots: policy serving (protocol, server, light client), robot data and post-training.

``handvla.robot.protocol`` and ``handvla.robot.client`` import neither torch nor the rest of handvla, so
a robot computer can use them with only numpy, msgpack and websockets installed.
"""
