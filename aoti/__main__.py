"""``python -m aoti``: list, inspect, verify and clear the local artifact cache; push to and pull from the Hub."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from .cache import Cache
from .hub import ENV_ALLOW, HUB_ROOT, HubRefused, HubSource, check_trust, pull, push


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


def _push(cache: Cache, args: argparse.Namespace) -> int:
    keys = args.keys or [e.key for e in cache.entries()]
    print(f"pushed {len(keys)} artifacts; pin this revision: {push(cache, keys, args.repo, token=args.token)}")
    return 0


def _pull(cache: Cache, args: argparse.Namespace) -> int:
    from huggingface_hub import snapshot_download

    source = HubSource(args.repo, args.revision)
    check_trust(source, [args.repo] if args.trust else None)
    keys = args.keys
    if not keys:  # every key the revision holds
        snapshot = Path(snapshot_download(args.repo, revision=args.revision, allow_patterns=[f"{HUB_ROOT}/*/manifest.json"]))
        keys = sorted(p.name for p in (snapshot / HUB_ROOT).iterdir())
    failed = 0
    for key in keys:
        manifest = json.loads(Path(snapshot_download(args.repo, revision=args.revision, allow_patterns=[f"{HUB_ROOT}/{key}/manifest.json"]))
                              .joinpath(HUB_ROOT, key, "manifest.json").read_text())
        env = fingerprint_for(manifest)
        try:
            pull(source, key, cache, env, allow=[args.repo] if args.trust else None)
            print(f"{key}  pulled")
        except HubRefused as exc:
            failed += 1
            print(f"{key}  REFUSED: {exc}")
    return 1 if failed else 0


def fingerprint_for(manifest: dict) -> dict:
    """This machine's environment for the device the manifest was built for."""
    import torch

    from .env import fingerprint

    return fingerprint(torch.device(manifest.get("device", "cpu")))


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
    p = sub.add_parser("push", help="upload artifacts to a Hub repository (huggingface_hub commit)")
    p.add_argument("--repo", required=True)
    p.add_argument("--token", default=os.environ.get("HF_TOKEN"))
    p.add_argument("keys", nargs="*", help="keys to push (default: all)")
    p = sub.add_parser("pull", help="download artifacts from an allow-listed repository pinned to a commit")
    p.add_argument("--repo", required=True)
    p.add_argument("--revision", required=True, help="the full 40-character commit hash")
    p.add_argument("--trust", action="store_true", help=f"allow this repository for this call (else {ENV_ALLOW})")
    p.add_argument("keys", nargs="*", help="keys to pull (default: all the revision holds)")
    args = parser.parse_args(argv)
    cache = Cache(args.cache_dir)
    commands = {"list": _list, "inspect": _inspect, "verify": _verify, "clear": _clear, "push": _push, "pull": _pull}
    try:
        return commands[args.command](cache, args)
    except HubRefused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
