#!/usr/bin/env python3
"""Prepared checkouts for the purchase path, as a Redis protocol stream.

    bench/prep_codes.py --sale 1 --items 10000 --codes 100000 \
        --checkout-sha SHA --ends-at 1767225600 | redis-cli -p 6379 -n 7 --pipe

Writes (after SELECT <db> with --db) for code i in 0..codes-1 one EVALSHA of
lua/checkout.lua per item of its checkout, exactly as a core calls it with a
batch of one on a single node (KEYS meta, sold, user key, code key; ARGV
expire-at, first item id minus one, user key prefix, code key prefix, fence
'' (none), item number), so the state is the one real checkouts leave:

  code i   <sale>-<i + 1>-<20 zeros><i as 12 digits>   (a valid code: its
           user, then 32 hex digits)
  user     i + 1 (one open checkout per user)
  items    K distinct random items of the sale, K random in 1..--max-items
           (mean 2 with the default 3)

The item draw is seeded (--seed), so every database prepared with the same
arguments holds the same mix. Python 3 standard library only.

With --purchase-call (e.g. "EVALSHA <sha of lua/purchase.lua>" or "FCALL
purchase"), it writes instead one purchase call per prepared code, each code
once, in a seeded random order, with the layout a core uses for a batch of one
(KEYS meta, sold, outbox, the code key and the key of the code's own user;
ARGV user key prefix, first item id minus one, code key prefix, '0': no WAIT,
'': no fence).
Piped after the checkouts, those are the codes' first purchases; piped again,
their replays. --key-prefix puts the server's REDIS_KEY_PREFIX before every key.
"""

import argparse
import random
import sys


def resp(*args) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


def code_of(sale: int, i: int) -> str:
    return f"{sale}-{i + 1}-{'0' * 20}{i:012d}"


def write_purchases(args, out) -> None:
    s = args.sale
    tag = f"{args.key_prefix}{{sale:{s}}}"
    call = args.purchase_call.split()
    order = list(range(args.codes))
    random.Random(args.seed).shuffle(order)
    chunk = []
    for i in order:
        chunk.append(
            resp(*call, 5, f"{tag}:meta", f"{tag}:sold", f"{tag}:outbox",
                 f"{tag}:code:{code_of(s, i)}", f"{tag}:user:{i + 1}",
                 f"{tag}:user:", s * 1_000_000, f"{tag}:code:", 0, "")
        )
        if len(chunk) >= 4096:
            out.write(b"".join(chunk))
            chunk.clear()
    out.write(b"".join(chunk))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=int, help="start with SELECT db (or use redis-cli -n)")
    ap.add_argument("--sale", type=int, required=True)
    ap.add_argument("--items", type=int, required=True)
    ap.add_argument("--codes", type=int, required=True)
    ap.add_argument("--max-items", type=int, default=3)
    ap.add_argument("--checkout-sha", required=True)
    ap.add_argument("--ends-at", type=int, required=True, help="the sale's end, Unix s")
    ap.add_argument("--retention-ms", type=int, default=86_400_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--key-prefix", default="", help="the server's REDIS_KEY_PREFIX")
    ap.add_argument("--purchase-call", help='write purchase calls with this command and '
                    'script ("EVALSHA <sha>" or "FCALL <function>") instead of the checkouts')
    args = ap.parse_args()
    if not 0 < args.codes <= 10**12:
        ap.error("--codes must be in 1..10^12")

    rng = random.Random(args.seed)
    s = args.sale
    tag = f"{args.key_prefix}{{sale:{s}}}"
    meta, sold = f"{tag}:meta", f"{tag}:sold"
    base = s * 1_000_000
    expire = args.ends_at * 1000 + args.retention_ms
    k_max = max(1, min(args.max_items, args.items))
    out = sys.stdout.buffer
    if args.db is not None:
        out.write(resp("SELECT", args.db))
    if args.purchase_call:
        write_purchases(args, out)
        return 0
    chunk = []
    for i in range(args.codes):
        user = i + 1
        code = code_of(s, i)
        user_key = f"{tag}:user:{user}"
        code_key = f"{tag}:code:{code}"
        for n in rng.sample(range(1, args.items + 1), rng.randint(1, k_max)):
            chunk.append(
                resp("EVALSHA", args.checkout_sha, 4, meta, sold, user_key, code_key,
                     expire, base, f"{tag}:user:", f"{tag}:code:", "", n)
            )
        if len(chunk) >= 4096:
            out.write(b"".join(chunk))
            chunk.clear()
    out.write(b"".join(chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
