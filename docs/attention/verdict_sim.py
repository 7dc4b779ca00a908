"""Pass rates of the scale check's finite-width verdict (umup::scale_check::finite_width_verdict)
on simulated tensors: RMS(width) times (1 + noise * z), z unit normal, per width.

A tensor passes when RMS^2 = a + b/width fits every width within 10% (least squares in RMS^2
against 1/width) and the limit a carries at least half of the widest width's RMS^2. The column
`a > 0` is the rule without that share: with seed noise it passes a 1/sqrt(width) power law
about half the time. Plain Python (no numpy): `python3 docs/attention/verdict_sim.py`.
"""
import math
import random

random.seed(0)
TRIALS = 3000


def fit(ws, v):
    x = [1 / w for w in ws]
    y = [t * t for t in v]
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxx = sum((a - mx) ** 2 for a in x)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    b = sxy / sxx
    a = my - b * mx
    res = max(abs(math.sqrt(max(a + b * xx, 0)) / math.sqrt(yy) - 1) for xx, yy in zip(x, y))
    return a, res, y[-1]


LAWS = [
    ("power width^-1 (muP's gradients)", lambda w: 64 / w),
    ("power width^-1/2 (SP's gradients)", lambda w: math.sqrt(64 / w)),
    ("power width^+1/2", lambda w: math.sqrt(w / 64)),
    ("power width^-1/4", lambda w: (64 / w) ** 0.25),
    ("1/width term, width 64 at 1.22x the limit", lambda w: math.sqrt(1 + 0.5 * 64 / w)),
    ("1/width term, width 64 at 1.41x the limit", lambda w: math.sqrt(1 + 64 / w)),
    ("1/width term, width 64 at 1.73x the limit", lambda w: math.sqrt(1 + 2 * 64 / w)),
    ("1/width term, width 64 at 2.24x the limit", lambda w: math.sqrt(1 + 4 * 64 / w)),
]
WIDTHS = [[64, 128, 256], [64, 128, 256, 512], [64, 128, 256, 512, 1024]]

print("| tensor | widths | noise | passes (a > 0) | passes (the verdict) |")
print("|---|---|---:|---:|---:|")
for name, law in LAWS:
    for ws in WIDTHS:
        for noise in (0.03, 0.06):
            pos = ver = 0
            for _ in range(TRIALS):
                v = [law(w) * (1 + noise * random.gauss(0, 1)) for w in ws]
                a, res, y_wide = fit(ws, v)
                pos += a > 0 and res <= 0.1
                ver += a >= 0.5 * y_wide and res <= 0.1
            print(f"| {name} | {ws[0]}-{ws[-1]} ({len(ws)}) | {noise:.0%} | {pos / TRIALS:.2f} | {ver / TRIALS:.2f} |")
