"""Summarise a folder of `dpbench bench` JSON results as ratios to non-private of the same
(model, image size, batch): prints a Markdown table and writes PREFIX.csv and PREFIX.jsonl."""

import json
import sys
from pathlib import Path

import pandas as pd


def main(folder: str, prefix: str) -> None:
    rows, raw = [], []
    for path in sorted(Path(folder).glob("*.json")):
        r = json.loads(path.read_text())
        raw.append(r)
        c = r["config"]
        rows.append({"model": c["model"], "image_size": c["image_size"], "batch": c["batch_size"],
                     "algorithm": c["algorithm"], "oom": r["oom"],
                     "img_s": (r.get("throughput_img_s") or {}).get("median"),
                     "peak_mib": (r.get("peak_memory_bytes") or 0) / 2**20 or None,
                     "device": r["environment"]["device_name"]})
    df = pd.DataFrame(rows)
    base = df[df.algorithm == "nonprivate"].set_index(["model", "image_size", "batch"])
    key = list(zip(df.model, df.image_size, df.batch))
    df["speed_vs_nonprivate"] = [r / base.img_s.get(k, float("nan")) if r else None for r, k in zip(df.img_s, key)]
    df["memory_vs_nonprivate"] = [m / base.peak_mib.get(k, float("nan")) if m else None for m, k in zip(df.peak_mib, key)]
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{prefix}.csv", index=False)
    Path(f"{prefix}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in raw))
    print(df.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
