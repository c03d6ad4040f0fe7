"""The documented examples' check (benchmarks/doc_examples.py): extraction, scaling, and that every path an
example reads is made by another example (the check itself runs every command in CI: .ci/run)."""

from vitcompress.benchmarks.doc_examples import ROOT, commands, expected_error, pages, scale

PAGE = """
Some text.

```console
$ vitcompress train vit_tiny_patch16_224 --img-size 28 --data mnist10k --epochs 80 \\
    -o runs/teacher   # about 10 minutes
epoch 1/80  loss 2.3
vitcompress prune MODEL -o OUT [--flops-reduction R]
OMP_NUM_THREADS=1 vitcompress prune runs/teacher --flops-reduction 0.5 --method ihp --method-opt steps=200 -o runs/p
vitcompress tokens runs/teacher --method etps --schedule rate=0.1 --search --tolerance 0.03 -o runs/s
pip install 'vitcompress[cct]'   # without it: error: CCT models need the vit-pytorch package; install it
```

```python
vitcompress.prune("x")
```
"""


def test_commands_are_extracted_joined_and_scaled():
    found = [scale(ex, "table.json") for ex in commands("p.md", PAGE)]
    assert [ex.line for ex in found] == [5, 8, 9, 10, 11]
    train, synopsis, ihp, search, pip = found
    assert train.text.endswith("--epochs 80 -o runs/teacher") and train.comment == "about 10 minutes"
    assert train.argv == [
        "train", "vit_tiny_patch16_224", "--img-size", "28", "--data", "mnist10k", "--epochs", "1",
        "-o", "runs/teacher", "--max-steps-per-epoch", "2",
    ]  # fmt: skip
    assert train.output == "runs/teacher" and not train.skip
    assert synopsis.skip == "synopsis (placeholders)"
    assert ihp.env == {"OMP_NUM_THREADS": "1"} and ihp.reads == ["runs/teacher"]
    assert ihp.argv[-2:] == ["--method-opt", "steps=2"] and "steps=200" not in ihp.argv
    assert ["--calib-images", "8"] == ihp.argv[ihp.argv.index("--calib-images") :][:2]
    assert search.argv[search.argv.index("--tolerance") + 1] == "1"
    assert pip.skip.startswith("pip install") and expected_error(pip) == "CCT models need the vit-pytorch package"


def test_an_int8_compress_reads_an_int8_table():
    page = """```console
vitcompress compress runs/teacher --latency-reduction 0.4 --backend ort-cpu --data mnist10k --precision int8 -o runs/c8
vitcompress compress runs/teacher --latency-reduction 0.4 --backend ort-cpu --data mnist10k -o runs/c
```
"""
    int8, fp32 = (scale(ex, "t.json") for ex in commands("p.md", page))
    assert int8.argv[int8.argv.index("--latency-table") + 1] == "t.int8.json"
    assert fp32.argv[fp32.argv.index("--latency-table") + 1] == "t.json"


def test_every_path_an_example_reads_is_made_by_an_example():
    """What a newcomer meets first: an example that reads an artifact no page creates (docs/bench.md's
    former out/deit-s-p46) or a page that skips its prerequisite (docs/recovery.md's runs/pruned)."""
    examples = [
        scale(ex, "t.json") for p in pages(ROOT, None) for ex in commands(str(p.relative_to(ROOT)), p.read_text())
    ]
    run = [ex for ex in examples if not ex.skip]
    assert len(run) >= 30
    made = {ex.output for ex in run}
    orphans = [f"{ex.page}:{ex.line} reads {path}" for ex in run for path in ex.reads if path not in made]
    assert orphans == []
    for ex in run:
        if ex.argv[0] in ("train", "finetune", "pipeline", "compress"):
            assert ex.argv[ex.argv.index("--epochs") + 1] == "1" and "--max-steps-per-epoch" in ex.argv


def test_an_error_line_shown_after_a_command_is_its_expected_outcome():
    page = """
```console
$ vitcompress prune runs/a -o runs/a --force --flops-reduction 0.3
error: output 'runs/a' is the input 'runs/a'; no run writes over what it reads
$ vitcompress info runs/a
```
"""
    bad, info = commands("p.md", page)
    assert expected_error(bad) == "output 'runs/a' is the input 'runs/a'"
    assert expected_error(info) is None and info.comment == ""
