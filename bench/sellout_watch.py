#!/usr/bin/env python3
"""Run a load generator until the active sale is sold out, and time it.

    bench/sellout_watch.py --url http://127.0.0.1:18080 --timeout 30 \
        --out wrk.txt -- wrk -t1 -c64 -d30s --latency -s bench/sellout.lua URL

Starts the command (its stdout goes to --out), then polls GET /sales/active
every --poll-ms over one keep-alive connection. When items_sold reaches
items_total it sends the command SIGINT (wrk then stops and prints its
report, so its requests/s is the rate during the sellout) and prints one line:

    SELLOUT sellout_ms=T t50_ms=.. t90_ms=.. polls=N poll_ms=P sold=S total=T
            server_requests=N server_rps=R

sellout_ms is measured from just before the command is started (wrk's first
requests follow within a few ms) to the first poll that saw everything sold,
so it is late by up to one poll interval plus one poll's latency. With
--timeout reached first, sellout_ms=NA. server_requests is how many checkout
and purchase requests the server had answered by then (GET /metrics read
before the start and right after the sellout is seen), server_rps that
count over sellout_ms: the rate during the sellout, without the cheap
answers wrk gets between the sellout and its stop (wrk notices SIGINT
within 100 ms). Python 3 standard library only.
"""

import argparse
import http.client
import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--poll-ms", type=float, default=10.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--trace", help="also write one line per poll: ms since start, items sold")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        ap.error("no command given")

    url = urllib.parse.urlsplit(args.url)
    conn = None

    def get(path):
        nonlocal conn
        for _ in range(2):
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=5)
                conn.request("GET", path)
                res = conn.getresponse()
                body = res.read()
                return body if res.status == 200 else None
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
        return None

    def poll():
        body = get("/sales/active")
        try:
            d = json.loads(body)
            return int(d["items_sold"]), int(d["items_total"])
        except (TypeError, ValueError, KeyError):
            return None

    def served():
        """Checkout and purchase answers the server has counted so far."""
        body = get("/metrics")
        if body is None:
            return None
        n = 0
        for line in body.decode(errors="replace").splitlines():
            if re.match(r'flashsale_requests_total\{route="(checkout|purchase)",', line):
                n += int(float(line.rsplit(None, 1)[1]))
        return n

    marks = {}
    trace = []
    polls = 0
    served0 = served()
    served1 = None
    sold = total = 0
    with open(args.out, "wb") as out:
        t0 = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=out)
        try:
            deadline = t0 + args.timeout
            while time.monotonic() < deadline and proc.poll() is None:
                got = poll()
                polls += 1
                now = time.monotonic()
                if got:
                    sold, total = got
                    trace.append(f"{(now - t0) * 1000:.1f} {sold}\n")
                    for frac in (50, 90):
                        if frac not in marks and total and sold * 100 >= total * frac:
                            marks[frac] = now
                    if total and sold >= total:
                        marks[100] = now
                        served1 = served()
                        break
                time.sleep(args.poll_ms / 1000.0)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    if args.trace:
        with open(args.trace, "w") as f:
            f.writelines(trace)

    def ms(frac):
        return f"{(marks[frac] - t0) * 1000:.0f}" if frac in marks else "NA"

    n = served1 - served0 if served0 is not None and served1 is not None else None
    rate = f"{n / (marks[100] - t0):.0f}" if n is not None else "NA"
    line = (
        f"SELLOUT sellout_ms={ms(100)} t50_ms={ms(50)} t90_ms={ms(90)} polls={polls} "
        f"poll_ms={args.poll_ms:g} sold={sold} total={total} "
        f"server_requests={'NA' if n is None else n} server_rps={rate}"
    )
    print(line)
    return 0 if proc.returncode in (0, -signal.SIGINT) else proc.returncode


if __name__ == "__main__":
    sys.exit(main())
