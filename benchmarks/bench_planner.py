"""Time planning every linear layer of a LLaMA-2-7B-sized model by shapes alone.

    python benchmarks/bench_planner.py [--budget 0.01] [--layout split] [--repeat 3]

Two figures: ``plan_model`` over the 225 linear layers (identical shapes are planned once,
as ``plan_model`` does), and one ``plan()`` call per layer with nothing shared, which is
the cost a user pays when looping over layers themselves. No weights are read.
"""

from __future__ import annotations

import argparse
import time

from ttdecomp.planner import plan, plan_model

HIDDEN, FFN, VOCAB, N_LAYERS = 4096, 11008, 32000, 32


def llama2_7b_linear_layers() -> dict[str, tuple[int, int]]:
    """``name -> (out_features, in_features)`` of every nn.Linear in LLaMA-2-7B."""
    layers = {}
    for i in range(N_LAYERS):
        p = f"model.layers.{i}"
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            layers[f"{p}.self_attn.{proj}"] = (HIDDEN, HIDDEN)
        layers[f"{p}.mlp.gate_proj"] = (FFN, HIDDEN)
        layers[f"{p}.mlp.up_proj"] = (FFN, HIDDEN)
        layers[f"{p}.mlp.down_proj"] = (HIDDEN, FFN)
    layers["lm_head"] = (VOCAB, HIDDEN)
    return layers


def best_of(repeat: int, fn) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=0.01, help="fraction of dense size")
    parser.add_argument("--layout", default="split", choices=["split", "interleaved"])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    layers = llama2_7b_linear_layers()
    dense = sum(m * n for m, n in layers.values())
    t_model, mp = best_of(args.repeat, lambda: plan_model(layers, args.budget, layout=args.layout))
    t_each, plans = best_of(
        args.repeat,
        lambda: [plan(shape, args.budget, layout=args.layout) for shape in layers.values()],
    )
    print(f"LLaMA-2-7B: {len(layers)} linear layers, {dense:,} dense parameters")
    print(f"budget {args.budget:.2%}, {args.layout} layout, best of {args.repeat}")
    print(f"  plan_model (shapes only):       {t_model * 1e3:8.1f} ms  -> {mp.n_params:,} params")
    print(
        f"  plan() per layer, nothing shared: {t_each * 1e3:6.1f} ms "
        f"({t_each / len(layers) * 1e3:.2f} ms/layer) -> {sum(p.n_params for p in plans):,} params"
    )
    for name in ("model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj", "lm_head"):
        p = mp.plans[name]
        print(f"  {name}: tt_shape {list(p.tt_shape)}, ranks {list(p.ranks)}")


if __name__ == "__main__":
    main()
