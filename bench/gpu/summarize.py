"""The summary `make bench-gpu` ends with: every figure its sections wrote, read back from JSON.

Run: python bench/gpu/summarize.py OUT_DIR [SECTIONS...]
Prints ours / torchvision per precision, variant and kernel policy, the kernel-choice
counts, the CLI against the step benchmark, and the data-wait share a real-JPEG run implies
at 2,200 and 10,000 img/s. Exits 1 when the JSON of a section that ran (all of them, or
the SECTIONS named) is missing: that section failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TRAIN = ("train_bf16", "train_fp32", "train_bf16_measure", "train_fp32_measure")
RATES = (2_200, 10_000)


def wait_share_at(rate: float, fps: float, measured_share: float) -> float:
    """Data-wait share at training rate ``rate`` (img/s of compute alone), from a run at
    FPS@all ``fps`` that waited ``measured_share`` of its time: the wait per image
    (share / fps) stays, the compute per image becomes 1 / rate."""
    wait_per_image = measured_share / fps
    return wait_per_image / (wait_per_image + 1.0 / rate)


def main(out: Path, sections: list[str] | None = None) -> int:
    missing = []

    def load(name: str) -> dict | None:
        path = out / f"{name}.json"
        if not path.exists():
            if sections is None or name in sections:
                missing.append(name)
            return None
        return json.loads(path.read_text())

    print(f"{'run':<22}{'variant':<15}{'ours':>10}{'torchvision':>13}{'ours-ref':>10}{'ratio':>8}")
    for name in TRAIN:
        data = load(name)
        for row in (data or {}).get("rows", []):
            ref = row.get("ours-reference_images_per_s")
            print(
                f"{name:<22}{row['variant']:<15}{row['ours_images_per_s']:>10.0f}"
                f"{row['torchvision_images_per_s']:>13.0f}"
                f"{'' if ref is None else f'{ref:.0f}':>10}{row['ratio']:>7.2f}x"
            )
    kernels = load("kernels")
    if kernels:
        counts: dict[str, int] = {}
        for line in kernels["choices"]:
            chosen = line.split(": ", 1)[1].split(" ")[0]
            counts[chosen] = counts.get(chosen, 0) + 1
        print("kernel choice (measure):", ", ".join(f"{k} x{n}" for k, n in sorted(counts.items())))
    for name in ("cli_dummy", "cli_jpeg"):
        cli = load(name)
        if cli:
            print(
                f"{name}: FPS@all {cli['fps_all']:.0f}, step {cli['step_images_per_s']:.0f} img/s,"
                f" CLI / step {cli['ratio']:.2f}x, data-wait {100 * cli['data_wait_share']:.1f}%"
            )
            if name == "cli_jpeg":
                shares = [wait_share_at(r, cli["fps_all"], cli["data_wait_share"]) for r in RATES]
                print(
                    "  data-wait share implied at "
                    + ", ".join(
                        f"{r:,} img/s: {100 * s:.0f}%" for r, s in zip(RATES, shares, strict=True)
                    )
                )
    if missing:
        print("MISSING (the section failed or did not run):", ", ".join(missing))
        return 1
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: summarize.py OUT_DIR [SECTIONS...]")
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:] or None))
