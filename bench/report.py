"""The bench's printed table: every measurement, its ratio to the baseline, and the targets."""

from __future__ import annotations

from typing import Any

from bench.model import WINOGRAD
from depthfleet.shared.artifacts import ARTIFACTS

PATH_NAMES = {"baseline": "(a) official run.py loop", "predict": "(b) depthfleet predict",
              "system": "(c) depthfleet run (system, full-size)",
              "compact": "(d) run --outputs depth_raw (compact)"}
SYSTEM_PATHS = ("system", "compact")  # the paths with worker memory and a storage folder
WORKLOAD_TITLES = {"small": "small photos", "12mp": "12 MP photos (4032x3024)"}
# Acceptance targets of the speed-and-memory issue.
FORWARD_SPEEDUP, SMALL_SPEEDUP, BIG_SPEEDUP, SYSTEM_SHARE = 2.5, 3.0, 4.0, 0.9
RSS_STEADY_MB, RSS_PEAK_MB, FIRST_RESULT_S = 350, 600, 3.0
PARITY_TOLERANCE = 1e-4
# Issue #13 (compact storage): 12 MP photos through the system storing the compact set.
COMPACT_OVER_FULL, COMPACT_OVER_OFFICIAL = 1.8, 6.0
EXACT_VARIANTS = ("torch", "onnxruntime")  # the backends that must stay at parity


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


def _bytes(value: float | None) -> str:
    """Bytes in MB, KB or B, to one decimal."""
    if value is None:
        return "-"
    for unit, size in (("MB", 1e6), ("KB", 1e3)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{value:.0f} B"


def _eager(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The torch row every forward ratio is against, if it was measured."""
    return next((r for r in rows if r["variant"] == "torch" and "error" not in r), None)


def _exact_fast_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured backends other than torch whose results stay within the parity tolerance."""
    return [r for r in rows if "error" not in r and r["variant"] != "torch"
            and r["parity"]["depth"] <= PARITY_TOLERANCE]


def _speedup(eager: dict[str, Any], best_ms: float, threads: int) -> float:
    """Eager's best time at ``threads`` over ``best_ms``: interference only adds time."""
    return eager[f"{threads}_threads"]["best_ms"] / best_ms


def _best_ms(row: dict[str, Any], threads: int) -> float:
    return row[f"{threads}_threads"]["best_ms"]


def model_lines(rows: list[dict[str, Any]]) -> list[str]:
    """Forward time per backend and thread count, ratio to eager at equal threads, parity."""
    eager = _eager(rows)
    lines = ["Model forward, 256x256: best of 15 (median)   1 thread         2 threads"
             "        vs eager (1T / 2T)   parity (depth)   RSS"]
    for row in rows:
        if "error" in row:
            lines.append(f"  {row['variant']:<42} unavailable: {row['error']}")
            continue
        times = [row[f"{t}_threads"] for t in (1, 2)]
        cells = "  ".join(f"{t['best_ms']:6.1f} ({t['median_ms']:5.1f}) ms" for t in times)
        ratios = (" / ".join(f"{_speedup(eager, _best_ms(row, t), t):.2f}x" for t in (1, 2))
                  if eager else "-")
        rss = f"{row['rss_mb']:.0f} MB" if row.get("rss_mb") else "-"
        lines.append(f"  {row['variant']:<42} {cells}   {ratios:<20} "
                     f"{row['parity']['depth']:.1e}          {rss}")
    return lines


def ceiling_lines(rows: list[dict[str, Any]], peaks: list[float] | None) -> list[str]:
    """What no exact direct-convolution backend can beat here: the forward at the FMA peak.

    Winograd convolutions (ncnn) compute the same function with fewer multiplications, so
    the bound does not apply to them."""
    eager = _eager(rows)
    if eager is None or not peaks:
        return []
    threads = (1, 2)
    floor_ms = {t: eager["gflop"] / peaks[min(t, len(peaks)) - 1] * 1000 for t in threads}
    lines = [f"fp32 ceiling: FMA peak {' / '.join(f'{p:.0f}' for p in peaks)} GFLOP/s on "
             f"{' / '.join(str(i + 1) for i in range(len(peaks)))} core(s) (bench/ceiling.py); "
             f"one forward is {eager['gflop']:.2f} GFLOP",
             f"  at that peak a forward takes {floor_ms[1]:.1f} / {floor_ms[2]:.1f} ms (1T / 2T): "
             f"at most {_speedup(eager, floor_ms[1], 1):.2f}x / "
             f"{_speedup(eager, floor_ms[2], 2):.2f}x eager for any fp32 direct-convolution "
             "backend (Winograd, as ncnn's, does fewer multiplications)"]
    for row in _exact_fast_rows(rows):
        if row["variant"] in WINOGRAD:
            continue
        shares = " / ".join(f"{floor_ms[t] / _best_ms(row, t):.0%}" for t in threads)
        lines.append(f"  {row['variant']} runs at {shares} of that peak")
    return lines


def _stored_cells(path: dict[str, Any], photo_bytes: float | None) -> str:
    """Bytes left per item, and as a multiple of the photo's bytes."""
    stored = path.get("stored_bytes_per_item")
    if stored is None:
        return f"{'-':>10} {'-':>8}"
    relative = f"{stored / photo_bytes:.2f}x" if photo_bytes else "-"
    return f"{_bytes(stored):>10} {relative:>8}"


def workload_lines(name: str, result: dict[str, Any]) -> list[str]:
    base, photo = result["baseline"]["images_per_s"], result.get("photo_bytes_per_item")
    lines = [f"{WORKLOAD_TITLES[name]}, {result['images']} images ({_bytes(photo)} per photo), "
             f"best of {result['rounds']}",
             f"  {'':<44}  img/s   vs (a)   wall s   start-up s   stored/item  x photo   "
             "worker RSS steady / peak"]
    for key, title in PATH_NAMES.items():
        if key not in result:
            continue
        path = result[key]
        memory = (f"{_mb(path['worker_rss_steady_mb'])} / {_mb(path['worker_rss_peak_mb'])}"
                  if key in SYSTEM_PATHS else "")
        lines.append(f"  {title:<44} {path['images_per_s']:6.2f}  {path['images_per_s'] / base:5.2f}x"
                     f"  {path['wall_s']:7.1f}  {path['startup_s']:10.1f}   "
                     f"{_stored_cells(path, photo)}   {memory}")
    share = result["system"]["images_per_s"] / result["predict"]["images_per_s"]
    shares = f"  system / predict: {share:.2f}"
    if "compact" in result:
        gain = result["compact"]["images_per_s"] / result["system"]["images_per_s"]
        shares += f"; compact / full-size storage: {gain:.2f}x"
    lines.append(shares)
    lines += _pace_lines(result) + _round_lines(result)
    for key in SYSTEM_PATHS:
        files = (result.get(key) or {}).get("stored_files")
        if files:
            lines.append(f"  stored per item, {key}: " + ", ".join(
                f"{filename} {_bytes(size)}" for filename, size in sorted(files.items())))
    return lines


def _pace_lines(result: dict[str, Any]) -> list[str]:
    """The system's rate read from when results reached storage: no start-up to subtract."""
    paces = {key: result[key].get("steady_images_per_s") for key in SYSTEM_PATHS if key in result}
    if not paces or not all(paces.values()):
        return []
    line = ("  results into storage after the 2nd (meta.json times), img/s: "
            + ", ".join(f"{PATH_NAMES[key][:3]} {pace:.2f}" for key, pace in paces.items()))
    if len(paces) == 2:
        line += f"; compact / full-size: {paces['compact'] / paces['system']:.2f}x"
    return [line]


def _round_lines(result: dict[str, Any]) -> list[str]:
    """Every round's wall time (start-up run in brackets), to see the noise."""
    cells = []
    for key, title in PATH_NAMES.items():
        path = result.get(key) or {}
        rounds = list(zip(path.get("round_wall_s", []), path.get("round_startup_s", [])))
        if rounds:
            cells.append(f"{title[:3]} " + " ".join(f"{w:.1f} ({s:.1f})" for w, s in rounds))
    return ["  wall s per round (start-up s): " + "; ".join(cells)] if cells else []


def read_lines(costs: dict[str, Any] | None) -> list[str]:
    """The cost of one full-size render on read: in process, and through the API."""
    if not costs:
        return []
    net_w, net_h = costs["net_size"]
    lines = [f"Full-size render on read, {costs['width']}x{costs['height']} from a stored "
             f"depth_raw ({net_w}x{net_h}, {_bytes(costs['raw_bytes'])}); in process, 1 thread, "
             f"best of {costs['runs']}; HTTP GET ?inline=1 through a local API",
             f"  {'':<32} in process      bytes   HTTP first read   cached read",
             f"  {'decode depth_raw.tiff':<32} {costs['decode_ms']:7.1f} ms",
             f"  {'upsample to full size':<32} {costs['upsample_ms']:7.1f} ms"]
    for name, ms in costs["render_ms"].items():
        http = costs["http"].get(name, {})
        size = _bytes(costs["artifact_bytes"][name])
        lines.append(f"  {ARTIFACTS[name].filename:<32} {ms:7.1f} ms {size:>10}   "
                     f"{http.get('first_ms', 0):10.0f} ms   {http.get('cached_ms', 0):8.0f} ms")
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def acceptance_lines(record: dict[str, Any]) -> list[str]:
    lines = ["Targets (2-core machine)"]
    exact, eager = _exact_fast_rows(record["model"]), _eager(record["model"])
    if eager and exact:
        best = max((_speedup(eager, _best_ms(r, t), t), t, r["variant"])
                   for r in exact for t in (1, 2))
        lines.append(f"  1. forward >= {FORWARD_SPEEDUP}x eager at parity: best {best[0]:.2f}x "
                     f"({best[2]}, {best[1]} thread(s)): {_verdict(best[0] >= FORWARD_SPEEDUP)}")
    if set(record["workloads"]) != {"small", "12mp"}:
        return lines + ["  2.-5. need both workloads"]
    small, big = record["workloads"]["small"], record["workloads"]["12mp"]
    for number, (result, target) in enumerate(((small, SMALL_SPEEDUP), (big, BIG_SPEEDUP)), 2):
        ratio = result["system"]["images_per_s"] / result["baseline"]["images_per_s"]
        lines.append(f"  {number}. system >= {target}x baseline ({'small' if number == 2 else '12 MP'}): "
                     f"{ratio:.2f}x: {_verdict(ratio >= target)}")
    shares = [r["system"]["images_per_s"] / r["predict"]["images_per_s"] for r in (small, big)]
    lines.append(f"  4. system >= {SYSTEM_SHARE:.0%} of predict: small {shares[0]:.0%}, 12 MP "
                 f"{shares[1]:.0%}: {_verdict(min(shares) >= SYSTEM_SHARE)}")
    steady, peak = small["system"]["worker_rss_steady_mb"], big["system"]["worker_rss_peak_mb"]
    memory_ok = steady is not None and peak is not None and steady <= RSS_STEADY_MB and peak <= RSS_PEAK_MB
    lines.append(f"  5. worker RSS steady (small) <= {RSS_STEADY_MB} MB: {_mb(steady)}; peak (12 MP) "
                 f"<= {RSS_PEAK_MB} MB: {_mb(peak)}; first result <= {FIRST_RESULT_S:.0f} s: "
                 f"{record['first_result_s']:.2f} s: "
                 f"{_verdict(memory_ok and record['first_result_s'] <= FIRST_RESULT_S)}")
    return lines


def _ratio_line(label: str, ratio: float, pace_ratio: float | None, target: float) -> str:
    """A target's verdict on the bench's rate, with the ratio of the results' pace beside it."""
    pace = f" (results' pace: {pace_ratio:.2f}x)" if pace_ratio else ""
    return f"  {label}: {ratio:.2f}x{pace}: {_verdict(ratio >= target)}"


def compact_lines(record: dict[str, Any]) -> list[str]:
    """Issue #13's targets: compact storage's speed on 12 MP photos, parity unchanged."""
    big = record["workloads"].get("12mp", {})
    if "compact" not in big:
        return []
    compact, full, official = (big[key]["images_per_s"] for key in ("compact", "system", "baseline"))
    pace = big["compact"].get("steady_images_per_s")
    full_pace = big["system"].get("steady_images_per_s")
    lines = ["Targets of compact storage (issue #13, 12 MP photos)",
             _ratio_line(f"compact >= {COMPACT_OVER_FULL}x full-size storage (12 MP)",
                         compact / full, pace / full_pace if pace and full_pace else None,
                         COMPACT_OVER_FULL),
             _ratio_line(f"compact >= {COMPACT_OVER_OFFICIAL:.0f}x official (12 MP)",
                         compact / official, pace / official if pace else None,
                         COMPACT_OVER_OFFICIAL)]
    exact = [r for r in record["model"] if r["variant"] in EXACT_VARIANTS and "error" not in r]
    if exact:
        worst = max(r["parity"]["depth"] for r in exact)
        parities = ", ".join(f"{r['variant']} {r['parity']['depth']:.1e}" for r in exact)
        lines.append(f"  parity unchanged (exact backends <= {PARITY_TOLERANCE:.0e} of the range): "
                     f"{parities}: {_verdict(worst <= PARITY_TOLERANCE)}")
    else:
        lines.append("  parity: not measured (no model rows)")
    return lines


def table(record: dict[str, Any]) -> str:
    machine, options = record["machine"], record["options"]
    lines = [f"DepthFleet bench {record['started']}, {record['duration_s']:.0f} s; "
             f"{machine['cores']} cores; load average {machine['load_before']:.2f} before, "
             f"{machine['load_after']:.2f} after; precision {options['precision']}, "
             f"fast decode {'on' if options['fast_decode'] else 'off'}", ""]
    if record["model"]:
        lines += model_lines(record["model"]) + [""]
        ceiling = ceiling_lines(record["model"], record.get("fma_peak_gflops"))
        lines += ceiling + [""] * bool(ceiling)
    for name, result in record["workloads"].items():
        lines += workload_lines(name, result) + [""]
    reads = read_lines(record.get("read_costs"))
    lines += reads + [""] * bool(reads)
    lines.append(f"Worker start to first result (warm cache): {record['first_result_s']:.2f} s")
    lines += [""] + acceptance_lines(record)
    compact = compact_lines(record)
    lines += [""] * bool(compact) + compact
    return "\n".join(lines)
