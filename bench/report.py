"""The bench's printed table: every measurement, its ratio to the baseline, and the targets."""

from __future__ import annotations

from typing import Any

PATH_NAMES = {"baseline": "(a) official run.py loop", "predict": "(b) depthfleet predict",
              "system": "(c) depthfleet run (system)"}
WORKLOAD_TITLES = {"small": "small photos", "12mp": "12 MP photos (4032x3024)"}
# Acceptance targets of the speed-and-memory issue.
FORWARD_SPEEDUP, SMALL_SPEEDUP, BIG_SPEEDUP, SYSTEM_SHARE = 2.5, 3.0, 4.0, 0.9
RSS_STEADY_MB, RSS_PEAK_MB, FIRST_RESULT_S = 350, 600, 3.0
PARITY_TOLERANCE = 1e-4


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} MB"


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
             "        vs eager (1T / 2T)   parity (depth)"]
    for row in rows:
        if "error" in row:
            lines.append(f"  {row['variant']:<42} unavailable: {row['error']}")
            continue
        times = [row[f"{t}_threads"] for t in (1, 2)]
        cells = "  ".join(f"{t['best_ms']:6.1f} ({t['median_ms']:5.1f}) ms" for t in times)
        ratios = (" / ".join(f"{_speedup(eager, _best_ms(row, t), t):.2f}x" for t in (1, 2))
                  if eager else "-")
        lines.append(f"  {row['variant']:<42} {cells}   {ratios:<20} {row['parity']['depth']:.1e}")
    return lines


def ceiling_lines(rows: list[dict[str, Any]], peaks: list[float] | None) -> list[str]:
    """What no exact direct-convolution backend can beat here: the forward at the FMA peak."""
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
             f"{_speedup(eager, floor_ms[2], 2):.2f}x eager for any fp32 backend"]
    for row in _exact_fast_rows(rows):
        shares = " / ".join(f"{floor_ms[t] / _best_ms(row, t):.0%}" for t in threads)
        lines.append(f"  {row['variant']} runs at {shares} of that peak")
    return lines


def workload_lines(name: str, result: dict[str, Any]) -> list[str]:
    base = result["baseline"]["images_per_s"]
    lines = [f"{WORKLOAD_TITLES[name]}, {result['images']} images, best of {result['rounds']}"
             "     img/s   vs (a)   wall s   start-up s   worker RSS steady / peak"]
    for key, title in PATH_NAMES.items():
        path = result[key]
        memory = (f"{_mb(path['worker_rss_steady_mb'])} / {_mb(path['worker_rss_peak_mb'])}"
                  if key == "system" else "")
        lines.append(f"  {title:<44} {path['images_per_s']:6.2f}  {path['images_per_s'] / base:5.2f}x"
                     f"  {path['wall_s']:7.1f}  {path['startup_s']:10.1f}   {memory}")
    share = result["system"]["images_per_s"] / result["predict"]["images_per_s"]
    lines.append(f"  system / predict: {share:.2f}")
    return lines


def _verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def acceptance_lines(record: dict[str, Any]) -> list[str]:
    small, big = record["workloads"]["small"], record["workloads"]["12mp"]
    lines = ["Targets (2-core machine)"]
    exact, eager = _exact_fast_rows(record["model"]), _eager(record["model"])
    if eager and exact:
        best = max((_speedup(eager, _best_ms(r, t), t), t, r["variant"])
                   for r in exact for t in (1, 2))
        lines.append(f"  1. forward >= {FORWARD_SPEEDUP}x eager at parity: best {best[0]:.2f}x "
                     f"({best[2]}, {best[1]} thread(s)): {_verdict(best[0] >= FORWARD_SPEEDUP)}")
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
    lines.append(f"Worker start to first result (warm cache): {record['first_result_s']:.2f} s")
    lines += [""] + acceptance_lines(record)
    return "\n".join(lines)
