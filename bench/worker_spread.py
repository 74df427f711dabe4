"""How connections that arrive together spread over ``baton serve --workers 2``,
with uvicorn's one shared socket and with ``BATON_REUSE_PORT=true`` (a socket
per worker): rounds of N keep-alive connections opened at once, as a load
generator or a proxy filling its pool opens them, each answered once; then
which worker holds each connection (Linux ``/proc``), tallied per round as the
split between the workers, e.g. ``4+0`` (all on one) or ``2+2``.

    .venv/bin/python bench/worker_spread.py [--quick] [--connections 4,16] [--rounds 30]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from collections import Counter
from pathlib import Path

import harness

MODES = {"shared socket": "false", "BATON_REUSE_PORT": "true"}


def _sockets_of(pid: int) -> set[int]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _server_ends(port: int) -> dict[int, int]:
    """Established connections to ``port``: the client's port -> the server end's inode."""
    ends = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[1].split(":")[1], 16) == port:
            ends[int(fields[2].split(":")[1], 16)] = int(fields[9])
    return ends


async def _round(port: int, count: int, workers: list[int]) -> str:
    connections = await asyncio.gather(
        *(asyncio.open_connection("127.0.0.1", port) for _ in range(count))
    )
    try:
        for _, writer in connections:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: baton\r\n\r\n")
        for reader, _ in connections:
            await reader.readuntil(b"\r\n\r\n")
        ends = _server_ends(port)
        held = {worker: _sockets_of(worker) for worker in workers}
        split = Counter(
            next(
                w
                for w, inodes in held.items()
                if ends[writer.get_extra_info("sockname")[1]] in inodes
            )
            for _, writer in connections
        )
    finally:
        for _, writer in connections:
            writer.close()
    await asyncio.sleep(0.05)
    return "+".join(str(n) for n in sorted([split[w] for w in workers], reverse=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--connections", default="4,16")
    parser.add_argument("--rounds", type=int, default=30)
    harness.add_run_options(parser)
    args = parser.parse_args()
    rounds = 5 if args.quick else args.rounds
    report = harness.Report("Worker spread: connections opened at once over 2 workers (issue 7)")
    report.line(f"{rounds} rounds per row; split = connections per worker, most first")
    report.line()
    report.line(f"{'mode':<18} {'conns':>5} {'all on one':>10}  splits (rounds)")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for mode, reuse in MODES.items():
            env = {**harness.env_pairs(args.env), "BATON_REUSE_PORT": reuse}
            with (
                harness.fresh_database("sqlite", workdir) as url,
                harness.baton_server(url, workdir, workers=2, env=env) as server,
            ):
                port = int(server.url.rsplit(":", 1)[1])
                workers = _listening_workers(server.pid, port, expected=2)
                for count in (int(c) for c in harness.csv(args.connections)):
                    splits = Counter(
                        asyncio.run(_round(port, count, workers)) for _ in range(rounds)
                    )
                    on_one = splits.get(f"{count}+0", 0)
                    shown = ", ".join(f"{s} ({n})" for s, n in splits.most_common())
                    report.line(f"{mode:<18} {count:>5} {on_one:>4} of {rounds:<3}  {shown}")
    if not args.quick or args.results:
        report.record(args.results or harness.RESULTS)


def _listening_workers(parent: int, port: int, expected: int) -> list[int]:
    """The processes under ``parent`` that listen on ``port`` (through a shared
    socket or their own), once ``expected`` of them do."""
    deadline = time.monotonic() + 60
    while True:
        listening = {
            int(fields[9])
            for fields in (line.split() for line in Path("/proc/net/tcp").read_text().splitlines())
            if fields[3] == "0A" and int(fields[1].split(":")[1], 16) == port
        }
        workers = [
            pid
            for pid in harness.process_tree(parent)
            if pid != parent and _sockets_of(pid) & listening
        ]
        if len(workers) == expected:
            return workers
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(workers)} workers listen on {port}, not {expected}")
        time.sleep(0.1)


if __name__ == "__main__":
    main()
