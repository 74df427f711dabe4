"""The hot spots of py-spy recordings (``--format raw``: collapsed stacks, one
``frame;frame;... count`` per line), such as ``token_endpoints.py --py-spy DIR``
writes, in percent of all samples of the files given: where the token
endpoints' time goes (``--breakdown``: each sample in the first part of the
request it belongs to), then the functions with the most samples on top of
the stack (self) and anywhere in it (total).

    .venv/bin/python bench/profiles.py DIR/sqlite-w1-introspect-c4-*.txt
        [--top 25] [--match app/] [--no-breakdown]

Recorded with ``--gil`` (as ``token_endpoints.py`` does), a sample is the
thread holding the GIL: Python's CPU time. C code that releases the GIL
(SQLite running a statement, the kernel sending on a socket from a thread)
is not in it.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

# "function (path/to/module.py:123)" -> "function (module path)"; the line goes,
# so that one function's samples add up whatever line they were on.
_FRAME = re.compile(r"^(?P<name>.*) \((?P<path>[^():]*)(?::\d+)?\)$")
_PREFIX = re.compile(r"^.*?(site-packages/|/lib/python3\.\d+/|/work/main/)")

Frames = Sequence[str]


def function_of(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if match is None:
        return frame.strip()
    return f"{match['name']} ({_PREFIX.sub('', match['path'])})"


def package_of(function: str) -> str:
    """The top-level package of a function's module: ``sqlalchemy``, ``app``, ``json``."""
    if function.startswith("<sqlalchemy generated"):
        return "sqlalchemy"
    path = function.rpartition(" (")[2].rstrip(")")
    first = path.split("/")[0]
    return first.split(".")[0] if first.endswith(".py") else first


def _calls(*names: str) -> Callable[[Frames], bool]:
    """Any frame is one of these functions (``name (`` prefixes)."""
    return lambda frames: any(f.startswith(names) for f in frames)


def _in(*packages: str) -> Callable[[Frames], bool]:
    return lambda frames: any(package_of(f) in packages for f in frames)


def _leaf_in(*modules: str) -> Callable[[Frames], bool]:
    return lambda frames: any(m in frames[-1] for m in modules)


def _in_thread(frames: Frames) -> bool:
    return any(f.startswith("WorkerThread.run (anyio") for f in frames)


# The parts of a request to the token endpoints, in the order a sample is
# assigned: the first that matches takes it.
PARTS: list[tuple[str, Callable[[Frames], bool]]] = [
    (
        "thread: introspection's read-ahead (SELECT client and token)",
        _calls("find_caller_and_token ("),
    ),
    ("thread: client authentication (SELECT client)", _calls("ClientAuthentication.__call__ (")),
    (
        "thread: refresh token check (SELECT token, UPDATE spent, grant)",
        _calls("RefreshTokenGrant.authenticate_refresh_token (", "_grant_is_live ("),
    ),
    ("thread: find_token (SELECT token by hash)", _calls("find_token (")),
    (
        "thread: introspect_token (the answer, from what was read)",
        _calls("IntrospectionEndpoint.introspect_token ("),
    ),
    ("thread: authenticate_user (SELECT user)", _calls("RefreshTokenGrant.authenticate_user (")),
    ("thread: audit.record (INSERT audit event)", _calls("record (app/audit.py")),
    ("thread: save_token (new tokens, INSERT)", _calls("BatonAuthorizationServer.save_token (")),
    (
        "thread: transaction begin/commit/rollback",
        _calls(
            "Session.commit (",
            "Session.close (",
            "Session.rollback (",
            "SessionTransaction.",
            "Database.transaction (",
            "Database.reading (",
        ),
    ),
    ("thread: other authlib", lambda frames: _in_thread(frames) and _in("authlib")(frames)),
    (
        "thread: waiting for / handing back work (anyio, threading)",
        lambda frames: _in_thread(frames) and not _in("app")(frames),
    ),
    ("thread: other", _in_thread),
    ("loop: logging", _in("logging")),
    (
        "loop: HTTP (uvicorn's h11 protocol, h11)",
        lambda frames: (
            _in("h11")(frames)
            or _leaf_in("uvicorn/protocols/http/")(frames)
            or _calls("H11Protocol.")(frames)
        ),
    ),
    (
        "loop: thread hop (anyio.to_thread)",
        _calls(
            "AsyncIOBackend.run_sync_in_worker_thread (", "run_sync (anyio", "Condition.notify ("
        ),
    ),
    ("loop: middleware (own code)", _leaf_in("app/middleware.py", "app/metrics.py")),
    ("loop: prometheus_client", _in("prometheus_client")),
    ("loop: starlette (routing, request, response)", _leaf_in("starlette/")),
    ("loop: form parsing, request and response building", _leaf_in("app/oauth/routes.py")),
    # Mostly stacks that py-spy (non-blocking) read cut short: SQL in a thread.
    ("other (the event loop, stacks read cut short)", lambda frames: True),
]


def read(paths: Iterable[Path]) -> tuple[Counter[str], Counter[str], Counter[str], int]:
    """Samples by function on top of the stack, by function anywhere in it,
    by part of the request (``PARTS``); and all samples."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    parts: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if not stack or not count_text.isdigit():
                continue
            count = int(count_text)
            samples += count
            functions = [function_of(frame) for frame in stack.split(";")]
            own[functions[-1]] += count
            for function in set(functions):
                total[function] += count
            parts[next(label for label, matches in PARTS if matches(functions))] += count
    return own, total, parts, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument(
        "--match", default="", help="only functions whose name or module contains this"
    )
    parser.add_argument("--no-breakdown", action="store_true")
    args = parser.parse_args()
    own, total, parts, samples = read(args.files)
    print(f"{samples} samples in {len(args.files)} files")
    if not samples:
        return
    if not args.no_breakdown:
        print("\nby part of the request:")
        for label, _ in PARTS:
            if parts[label]:
                print(f"  {parts[label] * 100 / samples:5.1f}%  {label}")
    for title, counter in (("self", own), ("total (self + callees)", total)):
        print(f"\n{title}:")
        shown = (item for item in counter.most_common() if args.match in item[0])
        for function, count in list(shown)[: args.top]:
            print(f"  {count * 100 / samples:5.1f}%  {function}")


if __name__ == "__main__":
    main()
