#!/usr/bin/env python3
"""W8: memory under thousands of slow readers.

Opens COUNT connections that each ask for the whole of one large file and then read a few
hundred bytes a second; while they hang on, one full-speed download of the same file runs
with curl. Prints one JSON line: the server's RSS before, its peak while the slow readers were
attached, the fast download's MB/s, and how many slow readers were still being served at the
end (a server may cut a reader that stops; these do not stop).

  slow_readers.py URL TOKEN SERVER_PID SIZE [COUNT] [SECONDS]
Only loopback addresses are used.
"""
import asyncio
import json
import resource
import socket
import subprocess
import sys
import time
import urllib.parse

url, token, pid, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
count = int(sys.argv[5]) if len(sys.argv) > 5 else 2000
seconds = float(sys.argv[6]) if len(sys.argv) > 6 else 20
parts = urllib.parse.urlsplit(url)
assert parts.hostname in ("127.0.0.1", "localhost", "::1"), "loopback only"


def status(field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    return float("nan")


async def slow_reader(stop, alive):
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    # A small receive buffer, so the server, not the kernel, is what holds the bytes back.
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    head = (f"GET {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n")
    writer.write(head.encode())
    await writer.drain()
    got = 0
    alive[0] += 1
    try:
        while not stop.is_set():
            chunk = await reader.read(256)
            if not chunk:
                break
            got += len(chunk)
            await asyncio.sleep(1)
    finally:
        alive[0] -= 1
        writer.close()
    return got


async def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 256)), hard))
    before = status("VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # reset the peak, so it is this workload's
    stop, alive = asyncio.Event(), [0]
    tasks = []
    for _ in range(count):
        tasks.append(asyncio.create_task(slow_reader(stop, alive)))
        await asyncio.sleep(0.001)
    await asyncio.sleep(2)
    attached = alive[0]
    started = time.perf_counter()
    fast = await asyncio.create_subprocess_exec(
        "curl", "-sSf", "-H", f"Authorization: Bearer {token}", "-o", "/dev/null",
        "-w", "%{size_download}", url, stdout=subprocess.PIPE)
    out, _ = await fast.communicate()
    fast_s = time.perf_counter() - started
    assert int(out) == size, f"fast download got {out!r} bytes"
    await asyncio.sleep(max(0.0, seconds - fast_s))
    peak, during = status("VmHWM"), status("VmRSS")
    still = alive[0]
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps({"readers": count, "attached": attached, "still_served": still,
                      "rss_before_mib": round(before, 1), "rss_during_mib": round(during, 1),
                      "peak_rss_mib": round(peak, 1),
                      "fast_download_mbps": round(size / fast_s / 1e6, 1)}))


asyncio.run(main())
