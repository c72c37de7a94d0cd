#!/usr/bin/env python3
"""Prints the Markdown table of PERFORMANCE.md from bench/results/*.json (stdlib only).

    python3 bench/table.py [bench/results]
"""
import glob
import json
import os
import sys

d = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results")
reports = {}
for path in sorted(glob.glob(os.path.join(d, "*.json"))):
    with open(path) as f:
        r = json.load(f)
    reports[r["label"]] = r


def ratio(a, b):
    return f"{a / b:.3g}×" if b else "–"


print("| run | subs | connected | msgs | deliveries/s | × floor | × Node | p50 ms | p99 ms | max ms "
      "| lost | dup | KiB/conn | server CPU % | gen CPU % |")
print("|" + "---|" * 15)
for label, r in reports.items():
    parts = label.split("-")
    floor = node = None
    if len(parts) == 3 and parts[0] in ("fanout", "latency", "idle"):
        floor = reports.get(f"{parts[0]}-floor-{parts[2]}")
        node = reports.get(f"{parts[0]}-node-{parts[2]}")
    dps = r.get("deliveries_per_second", 0)
    lat = r.get("latency", {})
    if parts[0] == "idle":
        key = "server_rss_per_connection_kib"
        xf = ratio(r[key], floor[key]) if floor else "–"
        xn = ratio(r[key], node[key]) if node else "–"
    else:
        xf = ratio(dps, floor["deliveries_per_second"]) if floor else "–"
        xn = ratio(dps, node["deliveries_per_second"]) if node else "–"
    print(f"| {label} | {r['subscribers']} | {r['connected']} | {r.get('published', 0)} "
          f"| {dps:,.0f} | {xf} | {xn} | {lat.get('p50_ms', 0):.1f} | {lat.get('p99_ms', 0):.1f} "
          f"| {lat.get('max_ms', 0):.1f} | {r.get('lost', 0)} | {r.get('duplicated', 0)} "
          f"| {r.get('server_rss_per_connection_kib', 0):.1f} | {r.get('server_cpu_percent', 0):.0f} "
          f"| {r.get('generator_cpu_percent', 0):.0f} |")
