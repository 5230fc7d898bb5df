"""Synthetic data: built-in hand motion and the HandWorld rendered-scene generator."""
