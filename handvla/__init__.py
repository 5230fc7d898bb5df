"""handvla: physical instruction tuning from human hand motion.

Data flows one way: sources -> standardised episodes (``handvla.data``) -> motion features
(``handvla.hand.features``) -> motion ids (``handvla.tokenizer``) -> the VLA (``handvla.vla``) -> robots
(``handvla.robot``). See docs/architecture.md.
"""

__version__ = "0.1.0"
