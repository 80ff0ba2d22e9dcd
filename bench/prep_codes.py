#!/usr/bin/env python3
"""Prepared checkouts for the purchase path, as a Redis protocol stream.

    bench/prep_codes.py --sale 1 --items 10000 --codes 100000 \
        --checkout-sha SHA | redis-cli -p 6379 -n 7 --pipe

Writes (after SELECT <db> with --db) for code i in 0..codes-1 one EVALSHA of
lua/checkout.lua per item of its checkout, exactly as a core calls it with a
batch of one on a single node (KEYS meta, sold, users; ARGV fence ''
(none), then the user id, the item's bit (its number minus one) and a new
user's entry with the fresh code, '0:1:<code>:,<item id>,'), so the state is
the one real checkouts leave:

  user     1 followed by i as 12 digits (10^12 + i; one open checkout per user)
  code i   <sale>-<user>-<32 zeros>   (a valid code: its user, then 32 hex
           digits; unique through its user)
  items    K distinct random items of the sale, K random in 1..--max-items
           (mean 2 with the default 3)

A code's only varying part is the 12 digits of i inside its user part, so
redis-benchmark's `__rand_int__` (12 digits, 0..-r minus one) draws a
prepared code with `<sale>-1__rand_int__-<32 zeros>`, and the code names its
own user (bench/bench.sh's purchase leg); bench/purchase.lua draws the same.

The item draw is seeded (--seed), so every database prepared with the same
arguments holds the same mix. Python 3 standard library only.

With --purchase-call (e.g. "EVALSHA <sha of lua/purchase.lua>" or "FCALL
purchase"), it writes instead one purchase call per prepared code, each code
once, in a seeded random order, with the layout a core uses for a batch of one
(KEYS meta, sold, outbox, users, codes; ARGV first item id minus one, '0': no
WAIT, '': no fence, the code).
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


def user_of(i: int) -> str:
    return f"1{i:012d}"


def code_of(sale: int, i: int) -> str:
    return f"{sale}-{user_of(i)}-{'0' * 32}"


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
                 f"{tag}:users", f"{tag}:codes", s * 1_000_000, 0, "", code_of(s, i))
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
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--key-prefix", default="", help="the server's REDIS_KEY_PREFIX")
    ap.add_argument("--purchase-call", help='write purchase calls with this command and '
                    'script ("EVALSHA <sha>" or "FCALL <function>") instead of the checkouts')
    args = ap.parse_args()
    if not 0 < args.codes <= 10**12:
        ap.error("--codes must be in 1..10^12")  # i fits 12 digits

    rng = random.Random(args.seed)
    s = args.sale
    tag = f"{args.key_prefix}{{sale:{s}}}"
    meta, sold, users = f"{tag}:meta", f"{tag}:sold", f"{tag}:users"
    base = s * 1_000_000
    k_max = max(1, min(args.max_items, args.items))
    out = sys.stdout.buffer
    if args.db is not None:
        out.write(resp("SELECT", args.db))
    if args.purchase_call:
        write_purchases(args, out)
        return 0
    chunk = []
    for i in range(args.codes):
        user = user_of(i)
        code = code_of(s, i)
        for n in rng.sample(range(1, args.items + 1), rng.randint(1, k_max)):
            chunk.append(
                resp("EVALSHA", args.checkout_sha, 3, meta, sold, users, "", user, n - 1,
                     f"0:1:{code}:,{base + n},")
            )
        if len(chunk) >= 4096:
            out.write(b"".join(chunk))
            chunk.clear()
    out.write(b"".join(chunk))
    return 0


if __name__ == "__main__":
    sys.exit(main())
