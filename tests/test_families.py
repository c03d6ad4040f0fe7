"""The family adapter: a user-defined family added without editing the core (the docs' worked example),
a two-stage family through the budget, the methods and the artifact, the pluggable budget measure
and width steps, the artifact format, one metadata attribute, one resolver, the prune config."""

import json
import random
from pathlib import Path

import pytest
import torch
from helpers import tiny
from timm.layers import Mlp
from torch import nn

import vitcompress
from vitcompress.budget import Budget, select
from vitcompress.counting import count, measured_macs
from vitcompress.errors import VitCompressError
from vitcompress.families import (
    Family,
    build_groups,
    family_of,
    identity_plan,
    register,
    spec_from_model,
    unregister,
)
from vitcompress.families.base import BlockParts, take
from vitcompress.groups import Group, Member
from vitcompress.layers import KeptChannelLayerNorm, PrunedAttention, attention_dims
from vitcompress.meta import source_indices
from vitcompress.models import create_source_model
from vitcompress.plan import LayerPlan, Plan, compose
from vitcompress.pruner import PruneConfig
from vitcompress.reference import mask_model
from vitcompress.resolve import resolve_model
from vitcompress.scorers import SCORERS
from vitcompress.slicers import slice_model
from vitcompress.spec import BlockSpec, Spec
from vitcompress.tokens import apply_tokens, schedule_of, set_keep

DOCS = Path(__file__).resolve().parents[1] / "docs" / "pruning.md"
X8 = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
FAST = {"ihp": {"steps": 2}, "gohsp": {"rounds": 1, "steps_per_round": 2}, "amap": {"steps": 2}}


# ------------------------------------------------------------------ the docs' worked example
@pytest.fixture(scope="module")
def toy():
    """The code block of docs/pruning.md's worked example, executed (it registers its family)."""
    text = DOCS.read_text()
    code = text.split("<!-- family example -->", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    ns: dict = {"__name__": "docs_family_example"}
    exec(compile(code, str(DOCS), "exec"), ns)
    yield ns
    unregister("toy")


def test_docs_example_family_is_exact_and_counted(toy):
    torch.manual_seed(0)
    model = create_source_model("toynet")
    fam = family_of(model)
    assert fam.name == "toy" and "toynet" in vitcompress.models.list_models("toy*")
    c = count(model)
    assert c.macs == measured_macs(model) and c.params == sum(p.numel() for p in model.parameters())
    rng = random.Random(0)
    plan = identity_plan(model)
    plan.embed = sorted(rng.sample(plan.embed, 21))
    plan.blocks = [1]
    lp = plan.layers[1]
    lp.heads, lp.qk, lp.v = [0, 2], lp.qk[:2], lp.v[:2]
    lp.mlp = sorted(rng.sample(lp.mlp, 30))
    sliced, ref = slice_model(model, plan), mask_model(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(X8), ref(X8), atol=1e-5, rtol=0)
        assert (ref(X8) - model(X8)).abs().max() > 1e-3
    assert count(sliced).macs == measured_macs(sliced)
    assert count(sliced).params == sum(p.numel() for p in sliced.parameters())
    assert spec_from_model(sliced).blocks[0].source_index == 1


def test_docs_example_family_prunes_to_a_budget_and_reloads(toy, tmp_path):
    res = vitcompress.prune(
        "toynet",
        flops_reduction=0.3,
        importance="taylor",
        granularity=("heads", "mlp", "embed"),
        round_to=4,
        calib_images=16,
        batch_size=8,
        output=tmp_path / "t",
    )
    assert abs(res.achieved - 0.3) <= 0.015
    loaded = vitcompress.load(tmp_path / "t")
    assert type(loaded).__name__ == "ToyNet"
    with torch.no_grad():
        assert torch.equal(loaded(X8), res.model(X8))
    with pytest.raises(VitCompressError, match="the toy family cannot prune qk") as e:
        vitcompress.prune("toynet", flops_reduction=0.3, granularity=("qk",), importance="l1")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("method", sorted(FAST))
def test_docs_example_family_runs_the_seed_methods(toy, method):
    torch.manual_seed(0)
    model = create_source_model("toynet")
    res = vitcompress.prune(
        model,
        flops_reduction=0.3,
        method=method,
        method_options=FAST[method],
        granularity=("heads", "mlp"),
        round_to=4,
        calib_images=16,
        batch_size=8,
    )
    assert abs(res.achieved - 0.3) <= 0.015
    assert res.meta.history[-1]["method"] == method


# ------------------------------------------------------------------ a two-stage family (Swin-like shapes)
class GainBlock(nn.Module):
    """Pre-norm block whose attention branch is scaled by ``gain``: a per-block setting that is not a
    width and must follow the block through depth pruning (``BlockSpec.extra``)."""

    def __init__(self, dim, heads, qk, v, hidden, scale, gain):
        super().__init__()
        self.gain = gain
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = PrunedAttention(dim, heads, qk, v, scale)
        self.mlp = Mlp(dim, hidden)

    def forward(self, x):
        x = x + self.gain * self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


S = 8**-0.5
STAGES = ((1.0, 0.5), (2.0, 1.5, 3.0))  # gains of the blocks of stage 0 and stage 1


class TwoStage(nn.Module):
    """Patches at width d0 -> stage 0 -> merge (LayerNorm(d0), Linear(d0, d1)) -> stage 1 at d1 -> norm ->
    mean -> head. ``blocks[s]`` lists (heads, qk, v, hidden, scale, gain) of stage s's blocks."""

    def __init__(self, dims=(16, 24), blocks=None, num_classes=10):
        super().__init__()
        blocks = blocks or [[(2, 8, 8, 32, S, g) for g in STAGES[0]], [(3, 8, 8, 48, S, g) for g in STAGES[1]]]
        self.num_classes = num_classes
        self.patch = nn.Conv2d(1, dims[0], 4, 4)
        self.stages = nn.ModuleList(nn.Sequential(*(GainBlock(d, *b) for b in bs)) for d, bs in zip(dims, blocks))
        self.merge_norm, self.merge = nn.LayerNorm(dims[0]), nn.Linear(dims[0], dims[1])
        self.norm, self.head = nn.LayerNorm(dims[1]), nn.Linear(dims[1], num_classes)

    def forward(self, x):
        x = self.stages[0](self.patch(x).flatten(2).transpose(1, 2))
        x = self.stages[1](self.merge(self.merge_norm(x)))
        return self.head(self.norm(x).mean(1))


BLOCK_AXES = {
    "norm1.weight": 0,
    "norm1.bias": 0,
    "attn.qkv.weight": 1,
    "attn.proj.weight": 0,
    "attn.proj.bias": 0,
    "norm2.weight": 0,
    "norm2.bias": 0,
    "mlp.fc1.weight": 1,
    "mlp.fc2.weight": 0,
    "mlp.fc2.bias": 0,
}
STEM_AXES = [
    {"patch.weight": 0, "patch.bias": 0, "merge_norm.weight": 0, "merge_norm.bias": 0, "merge.weight": 1},
    {"merge.weight": 0, "merge.bias": 0, "norm.weight": 0, "norm.bias": 0, "head.weight": 1},
]


def block_paths(model):
    """Global block index -> (stage, path)."""
    return [(s, f"stages.{s}.{j}") for s, st in enumerate(model.stages) for j in range(len(st))]


class TwoStageFamily(Family):
    name = "twostage"
    title = "TwoStage (test model with two residual widths)"
    kinds = ("heads", "mlp", "embed", "depth")

    def owns_name(self, name):
        return name == "twostage"

    def list_models(self, pattern="*"):
        return []

    def recognises(self, model):
        return isinstance(model, TwoStage)

    def create(self, name, *, pretrained=False, **kwargs):
        return TwoStage(**kwargs)

    def input_size(self, model):
        return 1, 8, 8

    def image_stride(self, model):
        return 4

    def spec(self, model):
        paths = block_paths(model)
        src = source_indices(model, len(paths))
        blocks = []
        for i, (s, p) in enumerate(paths):
            b = model.get_submodule(p)
            h, qk, v, scale = attention_dims(b.attn)
            blocks.append(BlockSpec(src[i], h, qk, v, b.mlp.fc1.out_features, scale, s, {"gain": b.gain}))
        return Spec([model.patch.out_channels, model.merge.out_features], blocks)

    def build(self, source, spec, device="meta"):
        per = [
            [
                (b.num_heads, b.qk_dim, b.v_dim, b.mlp_hidden, b.scale, b.extra["gain"])
                for b in spec.blocks
                if b.stage == s
            ]
            for s in (0, 1)
        ]
        with torch.device(device):
            return TwoStage(tuple(spec.stage_dims), per, **source.kwargs)

    def groups(self, model, kinds):
        out = []
        paths = block_paths(model)
        for i, (_, p) in enumerate(paths):
            b = model.get_submodule(p)
            h, qk, v, _ = attention_dims(b.attn)
            heads = torch.arange(h)[:, None]
            if "heads" in kinds:
                rows = torch.cat(
                    [
                        heads * qk + torch.arange(qk),
                        (h + heads) * qk + torch.arange(qk),
                        2 * h * qk + heads * v + torch.arange(v),
                    ],
                    1,
                )
                mem = [Member(f"{p}.attn.qkv.{t}", 0, rows) for t in ("weight", "bias")]
                out.append(
                    Group("heads", i, (h,), [*mem, Member(f"{p}.attn.proj.weight", 1, heads * v + torch.arange(v))])
                )
            if "mlp" in kinds:
                m = torch.arange(b.mlp.fc1.out_features)[:, None]
                mem = [
                    Member(f"{p}.mlp.fc1.weight", 0, m),
                    Member(f"{p}.mlp.fc1.bias", 0, m),
                    Member(f"{p}.mlp.fc2.weight", 1, m),
                ]
                out.append(Group("mlp", i, (len(m),), mem))
        if "embed" in kinds:
            for s, d in enumerate(self.spec(model).stage_dims):
                c = torch.arange(d)[:, None]
                axes = dict(STEM_AXES[s])
                axes.update({f"{p}.{n}": a for st, p in paths if st == s for n, a in BLOCK_AXES.items()})
                out.append(Group("embed", s, (d,), [Member(n, a, c) for n, a in axes.items()]))
        if "depth" in kinds:
            mem = [
                Member(f"{p}.{n}", None, element=i)
                for i, (_, p) in enumerate(paths)
                for n, _ in model.get_submodule(p).named_parameters()
            ]
            out.append(Group("depth", None, (len(paths),), mem))
        return out

    def can_remove_block(self, spec, index):
        return sum(b.stage == spec.blocks[index].stage for b in spec.blocks) > 1

    def slice_state(self, model, plan):
        e = plan.embeds
        state = {n: take(model.get_parameter(n), a, e[0]) for n, a in STEM_AXES[0].items()}
        state.update({n: take(model.get_parameter(n), a, e[1]) for n, a in STEM_AXES[1].items()})
        state["merge.weight"] = take(take(model.merge.weight, 1, e[0]), 0, e[1])
        state["head.bias"] = model.head.bias.detach().clone()
        paths = block_paths(model)
        count_in = [0, 0]
        for i in plan.blocks:
            s, p = paths[i]
            b, lp = model.get_submodule(p), plan.layers[i]
            h, qk, v, _ = attention_dims(b.attn)
            q = [hd * qk + d for hd, ds in zip(lp.heads, lp.qk) for d in ds]
            rows = q + [h * qk + r for r in q] + [2 * h * qk + hd * v + d for hd, ds in zip(lp.heads, lp.v) for d in ds]
            t = {n: take(b.get_parameter(n), a, e[s]) for n, a in BLOCK_AXES.items()}
            t["attn.qkv.weight"] = take(t["attn.qkv.weight"], 0, rows)
            t["attn.qkv.bias"] = take(b.attn.qkv.bias, 0, rows)
            t["attn.proj.weight"] = take(
                t["attn.proj.weight"], 1, [hd * v + d for hd, ds in zip(lp.heads, lp.v) for d in ds]
            )
            t["mlp.fc1.weight"] = take(t["mlp.fc1.weight"], 0, lp.mlp)
            t["mlp.fc1.bias"] = take(b.mlp.fc1.bias, 0, lp.mlp)
            t["mlp.fc2.weight"] = take(t["mlp.fc2.weight"], 1, lp.mlp)
            state.update({f"stages.{s}.{count_in[s]}.{n}": x for n, x in t.items()})
            count_in[s] += 1
        return state

    def reference_norms(self, model, plan):
        spec = self.spec(model)
        norms = {}
        for s, kept in enumerate(plan.embeds):
            if len(kept) == spec.stage_dims[s]:
                continue
            paths = [f"{p}.{n}" for st, p in block_paths(model) if st == s for n in ("norm1", "norm2")]
            paths.append("merge_norm" if s == 0 else "norm")
            norms.update({p: KeptChannelLayerNorm(model.get_submodule(p), kept) for p in paths})
        return norms

    def arch_info(self, model, img_size=None):
        return {"tokens": 4, "classes": model.num_classes}

    def block_macs(self, spec, info, tokens=None):
        t = info["tokens"]
        return [
            t * spec.dim_of(b) * b.num_heads * (2 * b.qk_dim + b.v_dim)
            + b.num_heads * t * t * (b.qk_dim + b.v_dim)
            + t * b.num_heads * b.v_dim * spec.dim_of(b)
            + 2 * t * spec.dim_of(b) * b.mlp_hidden
            for b in spec.blocks
        ]

    def macs(self, spec, info, tokens=None):
        d0, d1 = spec.stage_dims
        return info["tokens"] * (16 * d0 + d0 * d1) + sum(self.block_macs(spec, info)) + d1 * info["classes"]

    def params(self, spec, info):
        d0, d1 = spec.stage_dims
        n = 17 * d0 + 2 * d0 + d0 * d1 + d1 + 2 * d1 + d1 * info["classes"] + info["classes"]
        for b in spec.blocks:
            d, qkv = spec.dim_of(b), b.num_heads * (2 * b.qk_dim + b.v_dim)
            n += 4 * d + (d + 1) * qkv + (b.num_heads * b.v_dim + 1) * d + (2 * d + 1) * b.mlp_hidden + d
        return n

    def parts(self, model):
        return [
            BlockParts(
                p,
                f"{p}.attn",
                f"{p}.attn.qkv",
                f"{p}.attn.proj",
                f"{p}.mlp",
                f"{p}.mlp.fc1",
                f"{p}.mlp.act",
                f"{p}.mlp.fc2",
                f"{p}.norm1",
                f"{p}.norm2",
            )
            for _, p in block_paths(model)
        ]

    def residual_norm_paths(self, model):
        return [n for p in self.parts(model) for n in (p.norm1, p.norm2)] + ["merge_norm", "norm"]


@pytest.fixture(scope="module")
def two_stage():
    register(TwoStageFamily())
    yield
    unregister("twostage")


def _two_stage(seed=0):
    torch.manual_seed(seed)
    model = create_source_model("twostage")
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.2)
    return model.eval()


@pytest.mark.usefixtures("two_stage")
def test_two_stage_sliced_equals_masked_and_counts_are_exact():
    model = _two_stage()
    assert count(model).macs == measured_macs(model) and count(model).params == sum(
        p.numel() for p in model.parameters()
    )
    rng = random.Random(0)
    plan = identity_plan(model)
    assert [len(e) for e in plan.embeds] == [16, 24]
    plan.embed, plan.stage_embeds = sorted(rng.sample(range(16), 11)), [sorted(rng.sample(range(24), 13))]
    plan.blocks = [1, 2, 4]  # block 0 of stage 0 and block 1 of stage 1 go: gains 0.5, 2.0, 3.0 stay
    plan.layers = {b: plan.layers[b] for b in plan.blocks}
    plan.layers[2].mlp = sorted(rng.sample(range(48), 17))
    lp = plan.layers[4]
    lp.heads, lp.qk, lp.v = [0, 2], lp.qk[:2], lp.v[:2]
    sliced = slice_model(model, plan)
    assert [b.extra["gain"] for b in spec_from_model(sliced).blocks] == [0.5, 2.0, 3.0]
    assert [b.source_index for b in spec_from_model(sliced).blocks] == [1, 2, 4]
    ref = mask_model(model, plan)
    with torch.no_grad():
        torch.testing.assert_close(sliced(X8), ref(X8), atol=1e-5, rtol=0)
        assert (ref(X8) - model(X8)).abs().max() > 1e-3
    assert count(sliced).macs == measured_macs(sliced)
    assert count(sliced).params == sum(p.numel() for p in sliced.parameters())


@pytest.mark.usefixtures("two_stage")
def test_two_stage_budget_prunes_per_stage_and_keeps_a_block_in_each(tmp_path):
    model = _two_stage()
    res = vitcompress.prune(
        model,
        flops_reduction=0.5,
        importance="l1",
        granularity=("embed", "depth", "mlp"),
        round_to=4,
        output=tmp_path / "a",
    )
    assert abs(res.achieved - 0.5) <= 0.015
    spec = spec_from_model(res.model)
    assert {b.stage for b in spec.blocks} == {0, 1}  # depth rule of the family: a block per stage stays
    assert all(d % 4 == 0 for d in spec.stage_dims) and spec.stage_dims != [16, 24]
    d = json.loads((tmp_path / "a" / "vitcompress.json").read_text())
    assert d["spec"]["stage_dims"] == spec.stage_dims and "stage_embeds" in d["plan"]
    loaded = vitcompress.load(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(loaded(X8), res.model(X8))
        torch.testing.assert_close(loaded(X8), mask_model(model, res.meta.plan)(X8), atol=1e-5, rtol=0)
    # pruning again composes the plans back to the source numbering, stage by stage
    again = vitcompress.prune(
        loaded, flops_reduction=0.2, importance="l1", granularity=("embed", "heads", "mlp"), round_to=1
    )
    with torch.no_grad():
        torch.testing.assert_close(again.model(X8), mask_model(model, again.meta.plan)(X8), atol=1e-5, rtol=0)


@pytest.mark.usefixtures("two_stage")
@pytest.mark.parametrize("method", sorted(FAST))
def test_two_stage_runs_the_seed_methods(method):
    granularity = ("heads", "mlp", "embed") if method != "amap" else ("heads", "mlp")
    res = vitcompress.prune(
        _two_stage(),
        flops_reduction=0.3,
        method=method,
        method_options=FAST[method],
        granularity=granularity,
        round_to=2,
        calib_images=16,
        batch_size=8,
    )
    assert abs(res.achieved - 0.3) <= 0.015


# ------------------------------------------------------------------ budget: any cost, allowed widths
def test_budget_selects_under_any_cost_function():
    model = tiny("vit")
    groups = build_groups(model, ("heads", "mlp"))
    scores = SCORERS.get("l1")(model, groups)

    def fake_latency(spec):  # MLP width costs 10x more in the last block than elsewhere
        return sum(
            b.mlp_hidden * (10 if i == spec.depth - 1 else 1) + 50 * b.num_heads for i, b in enumerate(spec.blocks)
        )

    plan, achieved = select(model, groups, scores, Budget("latency", 0.3, round_to=8, cost=fake_latency))
    after = Plan(plan.embed, plan.blocks, plan.layers)
    spec = family_of(model).spec_after(spec_from_model(model), after)
    assert achieved == pytest.approx(1 - fake_latency(spec) / fake_latency(spec_from_model(model)))
    assert abs(achieved - 0.3) <= 0.015
    macs_plan, _ = select(model, groups, scores, Budget("macs", 0.3, round_to=8))
    assert plan.to_dict() != macs_plan.to_dict()


def test_budget_snaps_widths_to_the_allowed_steps():
    model = tiny("vit")  # MLP width 256, heads 4 x 16
    groups = build_groups(model, ("qk", "mlp"))
    scores = SCORERS.get("l1")(model, groups)
    steps = {"mlp": {256, 200, 136, 72}, "qk": {16, 12, 6}}
    plan, achieved = select(
        model, groups, scores, Budget("macs", 0.35, allowed=lambda kind, layer, original: steps.get(kind))
    )
    assert abs(achieved - 0.35) <= 0.015
    assert all(len(lp.mlp) in steps["mlp"] and len(lp.qk[0]) in steps["qk"] for lp in plan.layers.values())
    assert any(len(lp.mlp) < 256 for lp in plan.layers.values())


# ------------------------------------------------------------------ artifact format and records
OLD_SPEC_KEYS = {"source_index", "num_heads", "qk_dim", "v_dim", "mlp_hidden", "scale"}


def test_single_stream_json_is_the_format_of_version_1(tmp_path):
    res = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1", output=tmp_path / "a")
    d = json.loads((tmp_path / "a" / "vitcompress.json").read_text())
    assert d["format_version"] == 1
    assert set(d) == {
        "format",
        "format_version",
        "source",
        "spec",
        "plan",
        "counts_source",
        "counts",
        "history",
        "tokens",
        "extra",
    }
    assert set(d["spec"]) == {"embed_dim", "blocks"} and all(set(b) == OLD_SPEC_KEYS for b in d["spec"]["blocks"])
    assert set(d["plan"]) == {"embed", "blocks", "layers"}
    # a record with only the version-1 fields (as written before families existed) loads
    old = {
        k: d[k] for k in ("format", "format_version", "source", "spec", "plan", "counts_source", "counts", "history")
    }
    (tmp_path / "a" / "vitcompress.json").write_text(json.dumps(old))
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert torch.equal(vitcompress.load(tmp_path / "a")(x), res.model(x))


def test_multi_stage_spec_and_plan_round_trip():
    spec = Spec([16, 24], [BlockSpec(0, 2, 8, 8, 32, 0.3), BlockSpec(3, 3, 8, 6, 48, 0.3, 1, {"shift": 2})])
    d = spec.to_dict()
    assert d["stage_dims"] == [16, 24] and "embed_dim" not in d and "stage" not in d["blocks"][0]
    assert d["blocks"][1]["extra"] == {"shift": 2} and Spec.from_dict(json.loads(json.dumps(d))) == spec
    lp = LayerPlan([0], [[0, 1]], [[1]], [3, 4])
    outer = Plan([0, 2, 5], [0, 3], {0: lp, 3: lp}, [[1, 4, 7, 9]])
    inner = Plan([1, 2], [1], {1: LayerPlan([0], [[1]], [[0]], [1])}, [[0, 3]])
    assert Plan.from_dict(json.loads(json.dumps(outer.to_dict()))) == outer
    c = compose(outer, inner)
    assert c.embeds == [[2, 5], [1, 9]] and c.blocks == [3] and c.layers[3].mlp == [4]


def test_a_model_carries_one_metadata_attribute_and_one_schedule(tmp_path):
    model = tiny("vit")
    res = vitcompress.prune(model, flops_reduction=0.3, importance="l1")
    loaded_attrs = [a for a in vars(res.model) if a.startswith("vitcompress")]
    assert loaded_attrs == ["vitcompress_meta"] and [a for a in vars(model) if a.startswith("vitcompress")] == [
        "vitcompress_meta"
    ]
    net = apply_tokens(res.model, "rate=0.1", method="topk-vpa")
    set_keep(net, 0.8)  # the schedule lives with the reducers; the artifact is written from it
    vitcompress.save(net, tmp_path / "t")
    d = json.loads((tmp_path / "t" / "vitcompress.json").read_text())
    assert d["tokens"]["rate"] == pytest.approx(0.2) == schedule_of(vitcompress.load(tmp_path / "t")).rate
    assert d["spec"] == spec_from_model(net).to_dict() and d["counts"]["macs"] == count(net).macs


# ------------------------------------------------------------------ one resolver, one config
def test_resolver_rules_for_names_artifacts_and_checkpoints(tmp_path):
    from safetensors.torch import save_file

    res = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1", output=tmp_path / "a")
    other = {k: torch.randn_like(v) for k, v in res.model.state_dict().items()}
    save_file(other, str(tmp_path / "w.safetensors"))
    net = resolve_model(tmp_path / "a", checkpoint=str(tmp_path / "w.safetensors"))  # same rule everywhere
    assert all(torch.equal(net.state_dict()[k], v) for k, v in other.items())
    with pytest.raises(VitCompressError, match="is an artifact; num_classes apply to model names only"):
        resolve_model(tmp_path / "a", num_classes=3)
    named = resolve_model("vit_tiny_patch16_224", img_size=32, patch_size=8, num_classes=3, depth=1)
    assert named.num_classes == 3 and named.vitcompress_meta.source.kwargs["patch_size"] == 8


def test_prune_takes_a_config_or_its_fields():
    cfg = PruneConfig(flops_reduction=0.3, importance="l1", granularity=("heads", "mlp"), round_to=4)
    a = vitcompress.prune(tiny("vit"), cfg)
    b = vitcompress.prune(tiny("vit"), flops_reduction=0.3, importance="l1", granularity=["heads", "mlp"], round_to=4)
    c = vitcompress.prune(tiny("vit"), cfg, round_to=8)  # keywords replace the config's fields
    assert a.meta.plan.to_dict() == b.meta.plan.to_dict() != c.meta.plan.to_dict()
    assert a.meta.history[-1]["config"] == cfg.to_dict()
    with pytest.raises(VitCompressError, match="unknown prune option 'flops'"):
        vitcompress.prune(tiny("vit"), flops=0.3)
