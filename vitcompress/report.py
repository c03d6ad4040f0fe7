"""Human-readable tables of an artifact: the per-block widths and the totals."""

from __future__ import annotations

from .artifact import ArtifactMeta
from .families import BlockTokens, build_model, family_for_source
from .methods import ONESHOT
from .tokens.counting import block_tokens
from .tokens.schedule import TokenSchedule


def _g(x: float) -> str:
    return f"{x / 1e9:.3f} G"


def _m(x: float) -> str:
    return f"{x / 1e6:.2f} M"


def format_totals(meta: ArtifactMeta) -> str:
    src, now = meta.counts_source, meta.counts
    lines = [
        "MACs are multiply-accumulates per image (what pruning papers call FLOPs); FLOPs = 2 x MACs.",
        f"{'':10s}{'source':>14s}{'pruned':>14s}{'removed':>10s}",
    ]
    for key, fmt in (("macs", _g), ("flops", _g), ("params", _m)):
        a, b = src.get(key), now.get(key)
        if a and b is not None:
            lines.append(
                f"{key.upper() if key != 'params' else 'params':10s}{fmt(a):>14s}{fmt(b):>14s}{1 - b / a:>10.1%}"
            )
    return "\n".join(lines)


def _method(step: dict) -> str | None:
    """The step's method; older artifacts spell the one-shot prune ``one-shot``."""
    method = step.get("method", ONESHOT)
    return ONESHOT if method == "one-shot" else method


def _how(step: dict) -> str:
    """'taylor (true labels)' for a one-shot step, 'ihp (steps=100, ...)' for a method step."""
    if _method(step) == ONESHOT:
        name = step.get("config", {}).get("importance", "")
        used = step.get("labels_used")
        return f"{name} ({used} labels)" if used else name
    opts = ", ".join(f"{k}={v}" for k, v in step.get("method_options", {}).items())
    return f"{step['method']} ({opts})"


def format_prune_summary(meta: ArtifactMeta) -> str:
    """What one prune step asked for and what it achieved."""
    step = meta.history[-1]
    t, a = step["target"], step["achieved"]
    cfg = step["config"]
    lat = step.get("latency")
    if t["metric"] == "latency" and lat:
        got = lat["predicted_reduction"]
        what = f"predicted latency on {lat['backend']} (batch {lat['batch']}, {lat['precision']})"
        widths = "widths at the measured steps " + ", ".join(f"{k} {v}" for k, v in lat["steps"].items())
        ms = f"predicted {lat['predicted_ms_before']:.2f} -> {lat['predicted_ms_after']:.2f} ms per batch"
    else:
        got = a["macs_reduction"] if t["metric"] == "macs" else a["params_reduction"]
        what, widths, ms = t["metric"], f"round-to {cfg['round_to']}", ""
    lines = [
        f"pruned {meta.source.name} with {_how(step)} on {','.join(cfg['granularity'])} "
        f"({'uniform' if cfg['uniform'] else 'global'} ranking, {widths})",
        f"target: remove {t['reduction']:.1%} of {what}; achieved {got:.2%} "
        f"({(got - t['reduction']) * 100:+.2f} points, tolerance 1.5)" + (f"; {ms}" if ms else ""),
        format_totals(meta),
    ]
    return "\n".join(lines)


def format_info(meta: ArtifactMeta) -> str:
    """Per-block table (heads, q/k dim, v dim, MLP width, tokens, MACs) and totals of an artifact."""
    fam = family_for_source(meta.source)
    spec = meta.require_spec()
    model = build_model(meta.source, spec)  # meta device: shapes only
    info = fam.arch_info(model)
    sched = None
    try:
        layout: tuple[int, int, bool] | None = fam.token_layout(info)
    except NotImplementedError:  # no single token count (a Swin: each stage has its own grid)
        layout = None
    if layout is not None:
        tokens = layout[0] + layout[1]
        per_block: list[BlockTokens] | None = [BlockTokens(tokens, tokens)] * spec.depth
        if meta.tokens:
            sched = TokenSchedule.from_dict(meta.tokens)
            per_block = block_tokens(spec, layout, sched)
        title = f"{meta.source.name}  embed dim {spec.embed_dim}  depth {spec.depth}  tokens {tokens}"
    else:
        per_block = None
        dims = ",".join(str(d) for d in spec.stage_dims)
        title = f"{meta.source.name}  {'embed dim' if len(spec.stage_dims) == 1 else 'stage dims'} {dims}  depth {spec.depth}"
    block_macs = fam.block_macs(spec, info, per_block)
    head = (
        f"{'block':>5s} {'src':>4s} {'heads':>5s} {'qk dim':>6s} {'v dim':>5s} {'MLP':>6s} {'tokens':>9s} {'MACs':>10s}"
    )
    rows = [title + (f"  token reduction {sched.describe()}" if sched else ""), head, "-" * len(head)]
    for i, (b, mac) in enumerate(zip(spec.blocks, block_macs)):
        h, qk, v, m = b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden
        tok = "-"
        if per_block is not None:
            t_in, t_out = per_block[i].t_in, per_block[i].t_out
            tok = f"{t_in}" if t_in == t_out else f"{t_in}>{t_out}"
        rows.append(f"{i:>5d} {b.source_index:>4d} {h:>5d} {qk:>6d} {v:>5d} {m:>6d} {tok:>9s} {mac / 1e6:>8.1f} M")
    if fam.cost_note:
        rows.append(f"MACs: {fam.cost_note}")
    rows.append("")
    rows.append(format_totals(meta))
    for step in meta.history:
        if step.get("method") == "tokens":
            rows.append(
                f"step: tokens {TokenSchedule.from_dict(step['schedule']).describe()} removes "
                f"{step['achieved']['macs_reduction']:.1%} of the MACs of its widths"
            )
            continue
        if step.get("method") == "quantize":
            cfg = step.get("config", {})
            rows.append(f"step: quantize {step.get('precision')} ({cfg.get('calibration')} calibration)")
            continue
        cfg = step.get("config", {})
        how = _how(step) if "config" in step else ""
        rows.append(
            f"step: {_method(step)} {how} "
            f"{','.join(cfg.get('granularity', []))} target {step['target']['reduction']:.1%} "
            f"{step['target']['metric']}"
        )
    return "\n".join(rows)
