"""The command line: `python -m server [serve|genconfig|checkconfig|gentoken|checktoken|version]`.

Exit codes: 0 ok; 1 the command failed (token invalid, cannot listen, file exists, workers keep dying at start,
a worker did not stop cleanly); 2 bad usage or config (also `workers` > 1 with port 0).
Every failure prints one line on stderr (a worker's own line comes before its supervisor's). `serve` with
`http_server.workers` > 1 runs `supervisor.supervise`, which starts `python -m server <the same arguments>` per
worker with GUST_WORKER set; a worker serves alone and binds with SO_REUSEPORT.
May import: app, config, auth, logs, supervisor.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import logging
import os
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .auth import KeysUnavailable, TokenError, TokenExpired, TokenVerifier, build_verifiers, make_connection_token
from .chat_setup import ChatSetupError
from .config import Config, ConfigError
from .config_load import load_config
from .engines import EngineError
from .logs import configure_logging
from .supervisor import WORKER_ENV, SupervisorError, supervise, watch_supervisor

STARTER_NAMESPACE: dict[str, Any] = {
    "name": "chat", "presence": True, "join_leave": True, "force_push_join_leave": True,
    "history_size": 100, "history_ttl": "24h", "force_recovery": True,
    "allow_subscribe_for_client": True, "allow_publish_for_subscriber": True,
    "allow_history_for_subscriber": True, "allow_presence_for_subscriber": True,
}


class CommandError(Exception):
    """A one-line failure for stderr, with its exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def _config_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", "-c", type=Path, default=None,
                   help="JSON or TOML config file (default: $GUST_CONFIG, else the development setup)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gust", description="Gust real-time push server")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the server (the default command)")
    for p in (parser, serve):
        _config_options(p)
        p.add_argument("--port", type=int, default=None, help="http_server.port")
        p.add_argument("--address", default=None, help="http_server.address")
        p.add_argument("--workers", type=int, default=None,
                       help="http_server.workers: processes sharing the port (more than 1 needs the redis engine)")
        p.add_argument("--log-level", default=None, choices=["debug", "info", "warning", "error"])
    gen = sub.add_parser("genconfig", help="write a starter config with fresh random secrets")
    gen.add_argument("--config", "-c", type=Path, default=Path("config.json"), help="where (default config.json)")
    gen.add_argument("--force", action="store_true", help="overwrite an existing file")
    check = sub.add_parser("checkconfig", help="validate a config and explain errors by key")
    _config_options(check)
    token = sub.add_parser("gentoken", help="print an HS256 connection token from the configured secret")
    _config_options(token)
    token.add_argument("-u", "--user", required=True, help="the token's sub (user id)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until expiry (0 = never; default 3600)")
    token.add_argument("--info", default=None, help="connection info as JSON")
    verify = sub.add_parser("checktoken", help="verify a connection token and print its claims")
    _config_options(verify)
    verify.add_argument("token")
    sub.add_parser("version", help="print the version")
    return parser


def flag_overrides(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    http = {k: v for k in ("port", "address", "workers") if (v := getattr(args, k, None)) is not None}
    if http:
        out["http_server"] = http
    if getattr(args, "log_level", None) is not None:
        out["log_level"] = args.log_level
    return out


def config_from_args(args: argparse.Namespace, environ: dict[str, str]) -> Config:
    path = args.config
    if path is None and environ.get("GUST_CONFIG"):
        path = Path(environ["GUST_CONFIG"])
    try:
        return load_config(path, environ, flag_overrides(args))
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}", 2) from None


def cmd_genconfig(args: argparse.Namespace) -> None:
    path: Path = args.config
    if path.exists() and not args.force:
        raise CommandError(f"{path} exists; use --force to overwrite it")
    starter = {
        "http_server": {"address": "127.0.0.1", "port": 8000},
        "client": {"token": {"hmac_secret_key": secrets.token_urlsafe(32)}, "allowed_origins": []},
        "http_api": {"key": secrets.token_urlsafe(32)},
        "channel": {"namespaces": [STARTER_NAMESPACE]},
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(starter, f, indent=2)
        f.write("\n")
    print(f"wrote {path} (secrets inside: keep it private)")


def cmd_checkconfig(args: argparse.Namespace, environ: dict[str, str]) -> None:
    config = config_from_args(args, environ)
    try:
        build_verifiers(config)
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}", 2) from None
    source = args.config or environ.get("GUST_CONFIG") or "no file: the development setup"
    print(f"config ok ({source}): {len(config.channel.namespaces)} namespace(s), engine {config.engine.type}, "
          f"listening on {config.http_server.address}:{config.http_server.port}")


def cmd_gentoken(args: argparse.Namespace, environ: dict[str, str]) -> None:
    config = config_from_args(args, environ)
    secret = config.client.token.hmac_secret_key
    if not secret:
        raise CommandError("client.token.hmac_secret_key is not set in the config", 2)
    info = None
    if args.info is not None:
        try:
            info = json.loads(args.info)
        except json.JSONDecodeError as exc:
            raise CommandError(f"--info is not valid JSON: {exc}", 2) from None
    if args.ttl < 0:
        raise CommandError("--ttl must not be negative", 2)
    print(make_connection_token(secret, args.user, args.ttl, info))


def cmd_checktoken(args: argparse.Namespace, environ: dict[str, str]) -> None:
    config = config_from_args(args, environ)
    try:
        verifier = TokenVerifier(config.client.token)
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}", 2) from None

    async def check() -> dict[str, Any]:
        claims = await verifier.decode(args.token)
        await verifier.verify_connection(args.token)
        return claims

    try:
        claims = asyncio.run(check())
    except TokenExpired:
        raise CommandError("token expired") from None
    except TokenError as exc:
        raise CommandError(f"token invalid: {exc}") from None
    except KeysUnavailable as exc:
        raise CommandError(f"cannot check the token: {exc}") from None
    user = claims.get("sub", "") or "(anonymous)"
    exp = claims.get("exp")
    expires = datetime.datetime.fromtimestamp(exp, datetime.UTC).isoformat() if exp else "never"
    print(f"token valid: user {user}, expires {expires}")
    print(json.dumps(claims, indent=2, sort_keys=True))


def cmd_supervise(config: Config, argv: Sequence[str], environ: dict[str, str]) -> None:
    try:
        clean = supervise(config, argv, environ)
    except SupervisorError as exc:
        raise CommandError(str(exc), exc.code) from None
    except ConfigError as exc:
        raise CommandError(f"config error: {exc}", 2) from None
    except ChatSetupError as exc:
        raise CommandError(f"cannot start: {exc}") from None
    if not clean:
        raise CommandError("not every worker stopped cleanly (see above)")


def cmd_serve(args: argparse.Namespace, environ: dict[str, str], argv: Sequence[str]) -> None:
    config = config_from_args(args, environ)
    configure_logging(config.log_level, config.log_format)
    if config.development:
        logging.getLogger("gust").warning(
            "no config file given: development setup (chat pages at /, anonymous clients, namespace 'chat'); "
            "not for production")
    worker = WORKER_ENV in environ
    if config.http_server.workers > 1 and not worker:
        cmd_supervise(config, argv, environ)
        return
    if worker:
        watch_supervisor(environ)
    from .app import serve

    try:
        clean = asyncio.run(serve(config, reuse_port=worker))
    except ConfigError as exc:  # keys that cannot be loaded: found while building the app, before listening
        raise CommandError(f"config error: {exc}", 2) from None
    except OSError as exc:
        http = config.http_server
        where = f"{http.address}:{http.port}" + (f" or port {http.internal_port}" if http.internal_port else "")
        raise CommandError(f"cannot listen on {where}: {exc.strerror}") from None
    except (EngineError, ChatSetupError) as exc:
        raise CommandError(f"cannot start: {exc}") from None
    if not clean:
        raise CommandError(f"shutdown took longer than shutdown.timeout ({config.shutdown.timeout:g} s)")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    environ = dict(os.environ)
    try:
        match args.command:
            case "version":
                print(f"gust {__version__}")
            case "genconfig":
                cmd_genconfig(args)
            case "checkconfig":
                cmd_checkconfig(args, environ)
            case "gentoken":
                cmd_gentoken(args, environ)
            case "checktoken":
                cmd_checktoken(args, environ)
            case _:
                cmd_serve(args, environ, argv)
    except CommandError as exc:
        print(f"gust: {exc}", file=sys.stderr)
        return exc.code
    return 0
