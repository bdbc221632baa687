"""The fp32 ceiling of this machine: how fast any exact backend could possibly run the model.

A convolution backend computes the network's multiply-adds; it cannot beat the cores' fused
multiply-add rate. This measures that rate with a tiny C loop (independent FMA chains in the
widest vector registers the CPU has), one copy per core at once, so the bench can print
the fastest forward any fp32 direct-convolution runtime could reach, next to what ours does.
Needs a C compiler (``cc``); without one the ceiling is simply not printed.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

# 12 independent accumulators hide the FMA latency; -march=native picks AVX-512 or AVX2.
PROBE_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
#ifdef __AVX512F__
typedef __m512 vec; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#else
typedef __m256 vec; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#endif
int main(void) {
    vec acc[12], b = SET1(1.0000001f), c = SET1(1e-8f);
    for (int i = 0; i < 12; i++) acc[i] = SET1((float)i);
    const long rounds = 60000000;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long n = 0; n < rounds; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) acc[i] = FMA(acc[i], b, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    float sink = 0; float out[LANES];
    for (int i = 0; i < 12; i++) { *(vec *)out = acc[i]; sink += out[0]; }
    double s = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("%f %g\n", rounds * 12.0 * LANES * 2 / s / 1e9, sink);
    return 0;
}
"""


def fma_peak_gflops(cores: int) -> list[float] | None:
    """GFLOP/s of the probe on 1..``cores`` cores at once (best of 3 each), or None."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        source, binary = Path(tmp) / "probe.c", Path(tmp) / "probe"
        source.write_text(PROBE_C)
        built = subprocess.run([compiler, "-O3", "-march=native", "-o", str(binary), str(source)],
                               capture_output=True)
        if built.returncode != 0:
            return None
        return [max(_run_together(binary, count) for _ in range(3)) for count in range(1, cores + 1)]


def _run_together(binary: Path, count: int) -> float:
    processes = [subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True)
                 for _ in range(count)]
    return sum(float(p.communicate()[0].split()[0]) for p in processes)
