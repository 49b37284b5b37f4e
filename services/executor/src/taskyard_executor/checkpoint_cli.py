"""Checkpoints for `shell` and `python` jobs: scripts are not second-class.

In a job script::

    "$TASKYARD_PYTHON" -m taskyard_executor.checkpoint_cli apply-migration \\
        --message "Apply the migration?" --data '{"tables": 3}' || exit 1

Undecided: prints one protocol line on stdout and waits; the executor sees the line, parks the
job (no slot held) and stops the script. Once someone decides, the job runs again from the top
and this command answers at once from TASKYARD_DECISIONS: exit 0 when approved (printing
`approved`, or the answer for --question), 3 when rejected (only reached with --on-reject return;
otherwise a rejection fails the job). Make scripts safe to run again up to their checkpoints.

A stdout line `::taskyard::say TEXT` posts TEXT to the job's thread (ctx.say): a run after a
decision skips the lines it said before (the n-th such line is the n-th message).
"""

import argparse
import json
import os
import sys
import time

from taskyard_executor.checkpoints import PROTOCOL

REJECTED_EXIT = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m taskyard_executor.checkpoint_cli")
    parser.add_argument("name")
    parser.add_argument("--message", default="")
    parser.add_argument("--data", default="null", help="JSON shown to the approver")
    parser.add_argument("--question", action="store_true", help="ask for an answer instead of approval")
    parser.add_argument("--choices", default="", help="comma-separated answers allowed (questions)")
    parser.add_argument("--approvers", default="admin", help="comma-separated roles or key names")
    parser.add_argument("--timeout", default="24h")
    parser.add_argument("--on-reject", default="fail", choices=["fail", "return"])
    args = parser.parse_args(argv)
    decisions = json.loads(os.environ.get("TASKYARD_DECISIONS") or "{}")
    if args.name in decisions:
        decision = decisions[args.name]
        if decision["status"] in ("approved", "answered"):
            print(decision["answer"] if args.question else "approved")
            return 0
        print(f"{decision['status']}: {decision.get('reason') or ''}".strip())
        return REJECTED_EXIT
    request = {
        "name": args.name,
        "kind": "question" if args.question else "approval",
        "message": args.message,
        "data": json.loads(args.data),
        "choices": [c for c in args.choices.split(",") if c] or None,
        "approvers": [a for a in args.approvers.split(",") if a],
        "timeout": args.timeout,
        "on_reject": args.on_reject,
    }
    print(PROTOCOL + json.dumps(request), flush=True)
    while True:  # the executor stops this process once it has parked the job
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
