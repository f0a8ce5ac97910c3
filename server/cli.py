"""The command line: `python -m server [serve] [--config FILE] [--port N] [--address A]`, `version`.

Owns: argument parsing and turning flags into config overrides. May import: app, config.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError, load_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gust", description="Gust real-time push server")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default command)")
    for p in (parser, serve):
        p.add_argument("--config", "-c", type=Path, default=None,
                       help="JSON or TOML config file (default: $GUST_CONFIG, else a development setup)")
        p.add_argument("--port", type=int, default=None, help="http_server.port")
        p.add_argument("--address", default=None, help="http_server.address")
        p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    sub.add_parser("version", help="print the version")
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    http: dict[str, Any] = {}
    if args.port is not None:
        http["port"] = args.port
    if args.address is not None:
        http["address"] = args.address
    if http:
        out["http_server"] = http
    if args.log_level is not None:
        out["log_level"] = args.log_level
    return out


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    path = args.config
    if path is None and environ.get("GUST_CONFIG"):
        path = Path(environ["GUST_CONFIG"])
    return load_config(path, environ, flag_overrides(args))


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "version":
        print(f"gust {__version__}")
        return 0
    try:
        config = config_from_args(args, dict(os.environ))
    except ConfigError as exc:
        print(f"gust: config error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level)
    if config.development:
        logging.getLogger("gust").warning(
            "no config file given: development setup (anonymous clients, namespace 'chat'); not for production")
    from .app import serve

    try:
        asyncio.run(serve(config))
    except OSError as exc:
        print(f"gust: cannot listen on {config.http_server.address}:{config.http_server.port}: {exc.strerror}",
              file=sys.stderr)
        return 1
    return 0
