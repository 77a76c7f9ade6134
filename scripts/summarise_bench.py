"""Summarise a folder of `dpbench bench` JSON results as ratios to non-private of the same
(model, image size, batch): prints a Markdown table and writes PREFIX.csv and PREFIX.jsonl."""

import json
import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dpbench.report.load import bench_frame  # noqa: E402
from dpbench.report.ratios import ratio_to  # noqa: E402


def main(folder: str, prefix: str) -> None:
    paths = sorted(Path(folder).glob("*.json"))
    bench = bench_frame(paths)
    df = pd.DataFrame({"model": bench["model"], "image_size": bench["image_size"], "batch": bench["batch_size"],
                       "algorithm": bench["algorithm"], "oom": bench["oom"], "img_s": bench["throughput_img_s"],
                       "peak_mib": [(m or 0) / 2**20 or None for m in bench["peak_memory_bytes"]],
                       "device": [env["device_name"] for env in bench["environment"]]})
    df["speed_vs_nonprivate"] = ratio_to(df, "img_s", ["model", "image_size", "batch"])
    df["memory_vs_nonprivate"] = ratio_to(df, "peak_mib", ["model", "image_size", "batch"])
    Path(prefix).parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(f"{prefix}.csv", index=False)
    Path(f"{prefix}.jsonl").write_text("".join(json.dumps(json.loads(p.read_text())) + "\n" for p in paths))
    print(df.to_markdown(index=False, floatfmt=".3g"))


if __name__ == "__main__":
    main(*sys.argv[1:3])
