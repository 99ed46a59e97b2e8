"""`python -m pipelines models ...`: the registry (pipelines/core/registry.py) from the command line.

  list                     versions, aliases, gate outcome and key test metrics
  history                  every alias move: when, alias, from, to, reason, by what
  promote VERSION          champion <- VERSION (the old champion keeps the alias `previous`)
  rollback                 champion <- the champion before the current one
  lineage VERSION          version -> run -> data and feature hashes -> git commit -> params
  reproduce VERSION        rebuild VERSION from its logged dvc.lock and params (a fresh workspace of
                           its commit: pull what the DVC remote holds, recompute the rest) and check
                           that the model's sha256 is the registered one (exit 1 when it is not)
"""
from __future__ import annotations

import argparse
import json

from pipelines.core.registry import (
    client,
    history,
    lineage,
    promote,
    rollback,
    versions,
)


def main(argv: list[str]) -> int:
    from pipelines.core.config import load_params

    ap = argparse.ArgumentParser(prog="python -m pipelines models", description=__doc__.split("\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--json", action="store_true", help="print JSON")
    sub = ap.add_subparsers(dest="action", required=True)
    sub.add_parser("list")
    sub.add_parser("history")
    pr = sub.add_parser("promote")
    pr.add_argument("version")
    rb = sub.add_parser("rollback")
    for p in (pr, rb):
        p.add_argument("--reason", default="manual")
        p.add_argument("--dry-run", action="store_true")
    ln = sub.add_parser("lineage")
    ln.add_argument("version")
    rp = sub.add_parser("reproduce")
    rp.add_argument("version")
    rp.add_argument("--keep", action="store_true", help="keep the workspace")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    from pipelines.core import services

    services.configure(params.services.timeout_s)
    name = params.register.model_name
    c = client()
    if args.action == "list":
        out = versions(c, name)
        if not args.json:
            print(f"{'ver':>4} {'aliases':22s} {'gate':8s} {'test AP':>8} {'recall':>7} {'ROC AUC':>8}  range")
            for v in out:
                f = lambda x: "—" if x is None else f"{x:.4f}"  # noqa: E731
                print(f"{v['version']:>4} {','.join(v['aliases']):22s} {str(v['gate']):8s} {f(v['test_ap']):>8} "
                      f"{f(v['test_recall']):>7} {f(v['test_roc_auc']):>8}  {v['range']}")
            return 0
    elif args.action == "history":
        out = history(c, name)
        if not args.json:
            for r in out:
                print(f"{r['at']}  {r['alias']:10s} {str(r['from']):>4} -> {str(r['to']):4s} by {r['by']}: {r['reason']}")
            return 0
    elif args.action == "promote":
        out = promote(c, name, args.version, args.reason, args.dry_run)
    elif args.action == "rollback":
        out = rollback(c, name, args.reason, args.dry_run)
    elif args.action == "reproduce":
        from pipelines.ops import workspace

        out = workspace.reproduce(name, args.version, args.keep)
        print(json.dumps(out, indent=2, sort_keys=True))
        print(f"{name} v{args.version}: " + ("rebuilt byte-identical (sha256 " + str(out["sha256"])[:12] + ")"
              if out["identical"] else f"NOT identical: {out['sha256']} != registered {out['expected_sha256']}"))
        return 0 if out["identical"] else 1
    else:
        out = lineage(c, name, args.version)
    print(json.dumps(out, indent=2, sort_keys=True))
    return 0
