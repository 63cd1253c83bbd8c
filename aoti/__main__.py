"""``python -m aoti``: list, inspect, verify and clear the local artifact cache."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime

from .cache import Cache


def _list(cache: Cache, _: argparse.Namespace) -> int:
    entries = cache.entries()
    if not entries:
        print(f"{cache.root}: empty")
        return 0
    print(f"{'key':34} {'module':40} {'graphs':>6} {'bytes':>12} {'compile s':>9}  created")
    for e in entries:
        m = e.manifest
        created = datetime.fromtimestamp(m.get("created", 0), UTC).strftime("%Y-%m-%d %H:%M")
        module = str(m.get("module_class", "?")).rsplit(".", 1)[-1]
        print(f"{e.key:34} {module:40} {len(m.get('graphs', [])):>6} {cache.size_bytes(e.key):>12} {m.get('compile_s', 0):>9}  {created}")
    return 0


def _inspect(cache: Cache, args: argparse.Namespace) -> int:
    matches = [e for e in cache.entries() if e.key.startswith(args.key)]
    if len(matches) != 1:
        print(f"no single entry matches {args.key!r} ({len(matches)} found)", file=sys.stderr)
        return 1
    entry = matches[0]
    print(json.dumps({**entry.manifest, "probe": cache.read_json(entry.key, "probe.json")}, indent=2, default=str))
    return 0


def _verify(cache: Cache, args: argparse.Namespace) -> int:
    bad = 0
    for entry in cache.entries():
        issues = cache.problems(entry.key)
        print(f"{entry.key}  {'ok' if not issues else 'BAD: ' + '; '.join(issues)}")
        if issues:
            bad += 1
            if args.fix:
                cache.remove(entry.key)
    return 1 if bad and not args.fix else 0


def _clear(cache: Cache, _: argparse.Namespace) -> int:
    print(f"removed {cache.clear()} entries from {cache.root}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m aoti", description="Manage the AOTI artifact cache.")
    parser.add_argument("--cache-dir", help="cache root (default: $AOTI_CACHE_DIR or the user cache dir)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="list cached artifacts")
    p = sub.add_parser("inspect", help="print an artifact's manifest and probe verdict")
    p.add_argument("key", help="a key or unique key prefix")
    p = sub.add_parser("verify", help="check every artifact's manifest and checksum")
    p.add_argument("--fix", action="store_true", help="remove damaged artifacts")
    sub.add_parser("clear", help="remove every artifact")
    args = parser.parse_args(argv)
    cache = Cache(args.cache_dir)
    return {"list": _list, "inspect": _inspect, "verify": _verify, "clear": _clear}[args.command](cache, args)


if __name__ == "__main__":
    sys.exit(main())
