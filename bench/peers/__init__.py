"""Peer servers the fan-out benchmark compares Gust with (see common.py for what they share)."""
