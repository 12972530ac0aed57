"""CPU time of Grad-CAM's shared forward and backward, the whole graph against the graph from the CAM layer on.

    python benchmarks/cam_graph_time.py --arch resnet50 --batch-size 16 --rounds 5

Both paths run in one process, taking turns, so the allocator and the machine's load are the same for both
(benchmarks/cam_memory.py runs each tree in a fresh process: right for the peak memory, noisy for the time).
"The old graph" is what the shared forward did before a361148: the input and every weight requiring grad. Prints
each path's CPU seconds a batch (min / median over the rounds after the first), its user and system seconds and
its minor page faults, with a forward without grad for scale.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time

import timm
import torch

from xaibatch.model.layers import capture, find_target_layer, forward_from_layer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False).eval()
    layer = find_target_layer(model, args.size)
    x = torch.randn(args.batch_size, 3, args.size, args.size)

    def grad_of_top_class(logits: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        return torch.autograd.grad(logits.max(dim=1).values.sum(), acts)[0]

    def old_graph() -> None:
        with torch.enable_grad(), capture(layer) as store:
            logits = model(x.clone().requires_grad_(True))
        grad_of_top_class(logits, store["activations"])

    def from_layer() -> None:
        grad_of_top_class(*forward_from_layer(model, x, layer))

    def no_grad() -> None:
        with torch.no_grad():
            model(x)

    paths = {"the old graph": old_graph, "from the CAM layer on": from_layer, "forward without grad": no_grad}
    rows: dict[str, list[tuple[float, float, float, int]]] = {k: [] for k in paths}
    for _ in range(args.rounds):
        for name, run in paths.items():
            r0, c0 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            run()
            r1, c1 = resource.getrusage(resource.RUSAGE_SELF), time.process_time()
            rows[name].append(
                (c1 - c0, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt)
            )
    print(f"{args.arch}, {args.batch_size} images of {args.size} px, {torch.get_num_threads()} threads")
    print("| path | CPU s a batch, min / median | user s | system s | minor page faults |")
    print("|---|---:|---:|---:|---:|")
    for name, got in rows.items():
        got = got[1:] if len(got) > 1 else got
        cpu = [g[0] for g in got]
        print(
            f"| {name} | {min(cpu):.2f} / {statistics.median(cpu):.2f} | {statistics.median(g[1] for g in got):.2f} "
            f"| {statistics.median(g[2] for g in got):.2f} | {int(statistics.median(g[3] for g in got)):,} |"
        )


if __name__ == "__main__":
    main()
