"""`rlm view [LOG_DIR]`: browse trajectory logs in the web visualizer.

    rlm view logs/                 # opens http://127.0.0.1:8790/?token=... in your browser
    rlm view logs/ --port 9000 --no-browser

The server listens on 127.0.0.1 only, is read-only, serves only the `*.jsonl` files under
LOG_DIR, and wants the token in the printed URL. Exit status: 0 after Ctrl+C, 2 for a missing
directory or a port that is taken.
"""

from __future__ import annotations

import argparse
import errno
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "exit status: 0 stopped with Ctrl+C; 2 bad directory or port in use"
    parser.add_argument(
        "log_dir",
        metavar="LOG_DIR",
        nargs="?",
        default="logs",
        help="directory of trajectory logs (*.jsonl, subdirectories too; default: logs)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="port on 127.0.0.1 (default: 8790, or a free one if taken; 0: any free port)",
    )
    parser.add_argument(
        "--no-browser", action="store_true", help="print the URL without opening a browser"
    )


def main(args: argparse.Namespace) -> int:
    from rlm.viewer.server import serve

    if args.port is not None and not 0 <= args.port <= 65535:
        print(f"rlm view: error: --port must be 0..65535, got {args.port}", file=sys.stderr)
        return 2
    try:
        serve(args.log_dir, port=args.port, open_browser=not args.no_browser)
    except FileNotFoundError:
        print(f"rlm view: error: {args.log_dir} is not a directory", file=sys.stderr)
        return 2
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            print(f"rlm view: error: port {args.port} is in use", file=sys.stderr)
            return 2
        raise
    return 0
