"""Gust: a real-time push server on Tornado, wire-compatible with Centrifugo's client protocol v2 (JSON).

This module holds the version string only and has no side effects.
"""

__version__ = "0.1.0"
