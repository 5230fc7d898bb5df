"""Robots: robot data, post-training (the training job), policy serving (protocol, server, light client),
simulation and evaluation. The policy itself (config, model, processing) is ``handvla.policy``.

``handvla.robot.protocol`` and ``handvla.robot.client`` import neither torch nor the rest of handvla, so
a robot computer can use them with only numpy, msgpack and websockets installed.
"""
