#!/usr/bin/env python3
"""A WAN-like link on loopback for bench/delta.sh: a TCP relay whose
connections share one token bucket per direction, RATE bytes/s in all.

nginx's limit_rate is per request, and it lets every response send its
first second's worth (RATE bytes) at once (ngx_http_write_filter: limit =
rate * (now - start + 1) - sent). A delta pull made of ranges smaller than
RATE would never be slowed, and four parallel connections would get four
times the rate. A link is shared by everything crossing it.

usage: delta_link.py RATE LISTEN_PORT:TARGET_PORT...   (127.0.0.1 only)
"""
import asyncio
import sys
import time


class Bucket:
    """FIFO token bucket; at most 20 ms of burst."""

    def __init__(self, rate):
        self.rate, self.tokens, self.t = rate, 0.0, time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n):
        async with self.lock:
            now = time.monotonic()
            self.tokens = min(self.tokens + (now - self.t) * self.rate, self.rate * 0.02)
            self.t = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


async def pipe(r, w, bucket):
    try:
        while True:
            b = await r.read(65536)
            if not b:
                break
            await bucket.take(len(b))
            w.write(b)
            await w.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        w.close()


async def main():
    rate = float(sys.argv[1])
    servers = []
    for spec in sys.argv[2:]:
        lport, tport = (int(x) for x in spec.split(":"))
        up, down = Bucket(rate), Bucket(rate)

        async def handle(cr, cw, tport=tport, up=up, down=down):
            try:
                sr, sw = await asyncio.open_connection("127.0.0.1", tport)
            except OSError:
                cw.close()
                return
            await asyncio.gather(pipe(cr, sw, up), pipe(sr, cw, down))

        servers.append(await asyncio.start_server(handle, "127.0.0.1", lport))
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
