"""Ingestion: read native dataset layouts (sources), standardise to MANO, align to the canonical camera, build the episode store."""
