"""Turns one bench_train.py CSV into the markdown tables for bench/RESULTS.md: forward + backward
time of each MoBA configuration next to SDPA flash and cuDNN at the same length (same run, same
tensors), the ratios, peak memory against SDPA flash's plus the selection, and the issue's
targets.

    python3 bench/report_train.py BENCH_TRAIN_CSV
"""
import argparse
import csv
import math

# (L, block_size, top_k, peer, wanted ratio peer / mobagen)
TARGETS = [(131072, 128, 8, "flash", 20), (131072, 128, 8, "cudnn", 12), (32768, 128, 8, "flash", 6),
           (131072, 64, 16, "flash", 15), (131072, 32, 32, "flash", 10)]


def length(L):
    return "%dK" % (L // 1024) if L % 1024 == 0 else str(L)


def number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def ratio(peer, ours):
    return "-" if not (peer > 0 and ours > 0) else "%.2f" % (peer / ours)


def gib(n):
    return "%.2f" % (int(n) / 2 ** 30) if int(n or 0) else "-"


def load(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    peers = {(int(r["L"]), r["system"]): r for r in rows if r["system"] != "mobagen"}
    ours = [r for r in rows if r["system"] == "mobagen"]
    return ours, peers


def time_of(row):
    return number(row["median_ms"]) if row and row["status"] == "ok" else math.nan


def tables(ours, peers):
    out = ["| config | L | mobagen fwd+bwd ms | of which fwd | SDPA flash ms | SDPA cuDNN ms | "
           "flash / mobagen | cuDNN / mobagen | peak GiB mobagen | flash | cuDNN | selection GiB | "
           "mobagen <= flash + selection |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in ours:
        L = int(r["L"])
        flash, cudnn = peers.get((L, "flash")), peers.get((L, "cudnn"))
        t, tf, tc = time_of(r), time_of(flash), time_of(cudnn)
        status = "%.3f" % t if r["status"] == "ok" else r["status"]
        peer_text = ["%.3f" % x if not math.isnan(x) else (p["status"] if p else "-")
                     for x, p in ((tf, flash), (tc, cudnn))]
        fits = "-"
        if r["status"] == "ok" and flash and flash["status"] == "ok":
            fits = "yes" if int(r["peak_bytes"]) <= int(flash["peak_bytes"]) + int(r["selection_bytes"]) else "no"
        out.append("| B%s k%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            r["block_size"], r["top_k"], length(L), status, r["fwd_ms"] if r["status"] == "ok" else "-",
            peer_text[0], peer_text[1], ratio(tf, t), ratio(tc, t), gib(r["peak_bytes"]),
            gib(flash["peak_bytes"]) if flash else "-", gib(cudnn["peak_bytes"]) if cudnn else "-",
            gib(r["selection_bytes"]), fits))
    out += ["", "| target | wanted | measured |", "|---|---|---|"]
    by_key = {(int(r["L"]), int(r["block_size"]), int(r["top_k"])): r for r in ours}
    for L, block, top_k, peer, wanted in TARGETS:
        r = by_key.get((L, block, top_k))
        got = ratio(time_of(peers.get((L, peer))), time_of(r)) if r else "not run"
        out.append("| %s B%d k%d, %s / mobagen (fwd+bwd) | >= %d | %s |" % (length(L), block, top_k,
                                                                            peer, wanted, got))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    args = ap.parse_args()
    print(tables(*load(args.csv)))


if __name__ == "__main__":
    main()
