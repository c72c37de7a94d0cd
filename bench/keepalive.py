#!/usr/bin/env python3
"""Holds N idle HTTP/1.1 keep-alive connections to a server, each after one request, and
prints the server's RSS before and after (KiB), as the publishers' connections of a chat load
are held between their requests.

    bench/keepalive.py --port 8080 --pid 1234 --connections 2000 --path /health
"""
import argparse
import asyncio


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def one(port, path, held, ready):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    await reader.readexactly(length)
    held.append(writer)
    ready.release()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, required=True)
    p.add_argument("--connections", type=int, default=2000)
    p.add_argument("--path", default="/health")
    a = p.parse_args()
    await asyncio.sleep(1)
    before = rss_kib(a.pid)
    held, ready = [], asyncio.Semaphore(0)
    sem = asyncio.Semaphore(100)

    async def bounded():
        async with sem:
            await one(a.port, a.path, held, ready)

    await asyncio.gather(*(bounded() for _ in range(a.connections)))
    await asyncio.sleep(3)
    after = rss_kib(a.pid)
    print(
        f"keepalive connections={len(held)} rss_before_kib={before} rss_after_kib={after} "
        f"kib_per_connection={(after - before) / len(held):.2f}"
    )
    for w in held:
        w.close()


asyncio.run(main())
