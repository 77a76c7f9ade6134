"""`dpbench branches`: per layer, the time of the ghost norm and of instantiation, and which rule wins."""

from __future__ import annotations

from dpbench.cli import positive_int


def register(subparsers) -> None:
    p = subparsers.add_parser("branches", help="per layer: ghost norm vs instantiation time, against the "
                                               "paper's space rule")
    p.add_argument("--model", required=True, help="model name from the registry (dpbench.models)")
    p.add_argument("--batch-size", type=positive_int, required=True)
    p.add_argument("--image-size", type=positive_int, default=None, help="input height = width (default: the model's)")
    p.add_argument("--num-classes", type=positive_int, default=10)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--repeats", type=positive_int, default=3, help="runs of each branch; the best counts (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="result JSON file")
    p.add_argument("--out-md", default=None, help="also a Markdown table of the layers (optional)")
    p.set_defaults(func=run)


def markdown(result: dict, command: str) -> str:
    """The per-layer table of a branches result, with the command that measured it."""
    c = result["config"]
    lines = [f"# Ghost norm or instantiation, per layer: {c['model']} at {c['image_size']}², batch {c['batch_size']}",
             "", f"Measured by `{command}` ({c['device']}, {c['threads'] or 'default'} thread(s), best of "
             f"{c['repeats']} runs per branch on the whole batch; commit {result['environment'].get('git_commit')}).",
             "", f"The paper's space rule (ghost iff 2T² ≤ p·d) picks the faster branch in {result['rules_agree']} of "
             f"{result['layers_with_ghost']} layers.", "",
             "| layer | T | d | p | space rule | ghost ms | instantiate ms | faster |", "|---|---|---|---|---|---|---|---|"]
    for r in result["layers"]:
        lines.append(f"| {r['name']} | {r['T']} | {r['d']} | {r['p']} | {r['space_rule']} | {r['ghost_s'] * 1e3:.2f} "
                     f"| {r['instantiate_s'] * 1e3:.2f} | {r['faster']} |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    import torch

    from dpbench.device import select
    from dpbench.measure.branches import branch_times
    from dpbench.measure.child import build
    from dpbench.measure.config import BenchConfig
    from dpbench.models import default_image_size
    from dpbench.results import environment, write_json_atomic, write_text_atomic

    config = BenchConfig(algorithm="nonprivate", model=args.model, batch_size=args.batch_size,
                         image_size=args.image_size, num_classes=args.num_classes, device=args.device,
                         threads=args.threads, seed=args.seed).validate()
    size = config.image_size or default_image_size(config.model)  # also rejects an unknown model
    if args.threads:
        torch.set_num_threads(args.threads)
    # the bench's model and synthetic batch; a plain engine (no hooks) that branch_times replaces
    model, engine, _, x, y, _ = build(config, select(config.device))
    engine.detach()
    rows = branch_times(model, x, y, args.repeats)
    agree = sum(r["rules_agree"] for r in rows)
    result = {"kind": "branches", "config": {"model": args.model, "batch_size": args.batch_size, "image_size": size,
                                             "num_classes": args.num_classes, "device": args.device,
                                             "threads": args.threads, "repeats": args.repeats, "seed": args.seed},
              "layers": rows, "rules_agree": agree, "layers_with_ghost": len(rows),
              "environment": environment(args.device, "float32", args.seed)}
    write_json_atomic(args.out, result)
    if args.out_md:
        command = (f"dpbench branches --model {args.model} --image-size {size} --batch-size {args.batch_size}"
                   f" --device {args.device} --threads {args.threads} --repeats {args.repeats} --out {args.out}")
        write_text_atomic(args.out_md, markdown(result, command))
    for r in rows:
        print(f"{r['name']:32s} T={r['T']:<6} d={r['d']:<6} p={r['p']:<5} space rule {r['space_rule']:<11} "
              f"ghost {r['ghost_s'] * 1e3:8.2f} ms  instantiate {r['instantiate_s'] * 1e3:8.2f} ms  faster {r['faster']}")
    print(f"the space rule picks the faster branch in {agree} of {len(rows)} layers -> {args.out}")
    return 0
