"""Turns one device run's CSVs (bench_fwd --csv, peers.py --csv) into the markdown table for
bench/RESULTS.md and the chart the README shows: forward time against sequence length, one line
per system and configuration, all from the same run on the same card.

    python3 bench/report.py BENCH_CSV PEERS_CSV [--png bench/forward.png] [--title TEXT]
"""
import argparse
import csv
import math


def load(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def short(spec):
    """moba_d128_b32_k32_kconv3 -> B32 k32 kconv3 (d64 named where it is not 128)."""
    parts = spec.replace("moba_", "").split("_")
    name = " ".join(p.upper() if p.startswith("b") and p[1:].isdigit() else p
                    for p in parts if p != "d128")
    return name or spec


def length(L):
    L = int(L)
    return f"{L // 1024}K" if L % 1024 == 0 else str(L)


def ratio(peer, ours):
    return "-" if not (peer > 0 and ours > 0) or math.isnan(peer) else f"{peer / ours:.2f}"


def table(rows, peers):
    out = ["| config | L | workspace GiB | device GiB (SDPA flash) | route | attention | total "
           "(default) | total (best) | attention TFLOP/s (default) | route share | flash / mobagen | "
           "cuDNN / mobagen | default variants |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        L, d = int(r["L"]), int(r["d"])
        p = peers.get((L, d))
        if r["status"] != "ok":
            out.append(f"| {short(r['spec'])} | {length(L)} | "
                       f"{int(r['workspace_bytes']) / 2**30:.2f} | - | {r['status']} |||||||||")
            continue
        total, best = float(r["def_total_ms"]), float(r["best_total_ms"])
        flash = float(p["flash_ms"]) if p else float("nan")
        cudnn = float(p["cudnn_ms"]) if p else float("nan")
        peer_mem = f"{int(p['flash_peak_bytes']) / 2**30:.2f}" if p else "-"
        out.append(
            f"| {short(r['spec'])} | {length(L)} | {int(r['workspace_bytes']) / 2**30:.2f} | "
            f"{int(r['device_bytes']) / 2**30:.2f} ({peer_mem}) | {float(r['def_route_ms']):.3f} | "
            f"{float(r['def_attn_ms']):.3f} | {total:.3f} | {best:.3f} | "
            f"{float(r['def_attn_tflops']):.0f} | "
            f"{100 * float(r['def_route_ms']) / total:.0f}% | {ratio(flash, total)} | "
            f"{ratio(cudnn, total)} | {r['def_variants'].replace('|', ' · ')} |")
    out.append("")
    out.append("| L | d | SDPA flash ms | SDPA cuDNN ms | Flex (causal) ms |")
    out.append("|---|---|---|---|---|")
    for (L, d), p in sorted(peers.items()):
        out.append(f"| {length(L)} | {d} | {float(p['flash_ms']):.3f} | {float(p['cudnn_ms']):.3f} | "
                   f"{float(p['flex_ms']):.3f} |")
    return "\n".join(out)


def chart(rows, peers, png, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    d128 = sorted((L, p) for (L, d), p in peers.items() if d == 128)
    for key, label, style in (("flash_ms", "SDPA flash (FA2 class)", "k--"),
                              ("cudnn_ms", "SDPA cuDNN", "k-."),
                              ("flex_ms", "FlexAttention (causal, dense)", "k:")):
        pts = [(L, float(p[key])) for L, p in d128 if not math.isnan(float(p[key]))]
        if pts:
            ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=label, linewidth=1.5)
    series = {}
    for r in rows:
        if r["status"] == "ok" and int(r["d"]) == 128 and int(r["conv"]) == 0 \
                and r["spec"].startswith("moba_"):
            series.setdefault(short(r["spec"]), []).append((int(r["L"]), float(r["def_total_ms"])))
    for name, pts in sorted(series.items(), key=lambda kv: -int(kv[0].split()[0][1:])):
        pts.sort()
        if len(pts) > 1:
            ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", label=f"mobagen MoBA {name}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("forward time, ms (log)")
    ticks = sorted({L for L, _ in d128} | {L for pts in series.values() for L, _ in pts})
    ax.set_xticks(ticks)
    ax.set_xticklabels([length(t) for t in ticks])
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bench_csv")
    ap.add_argument("peers_csv")
    ap.add_argument("--png")
    ap.add_argument("--title", default="MoBA forward vs dense attention (batch 2, 16 heads, "
                                        "d 128, causal, bf16)")
    args = ap.parse_args()
    rows = load(args.bench_csv)
    peers = {(int(p["L"]), int(p["d"])): p for p in load(args.peers_csv)}
    print(table(rows, peers))
    if args.png:
        chart(rows, peers, args.png, args.title)


if __name__ == "__main__":
    main()
