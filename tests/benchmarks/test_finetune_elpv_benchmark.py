"""benchmarks/finetune_elpv.py --quick: pretrains, fine-tunes both backbones over seeds, and tabulates them."""


def test_quick_dry_run_compares_the_pretrained_and_random_backbones(load_benchmark, capsys):
    bench = load_benchmark("finetune_elpv")
    payload = bench.main(["--quick", "--device", "cpu"])
    rows = payload["rows"]
    assert [(r["checkpoint"], r["fraction"], r["seeds"]) for r in rows] == [
        ("pretrained", 0.1, 2),
        ("pretrained", 1.0, 2),
        ("random weights (resnet10t)", 0.1, 2),
        ("random weights (resnet10t)", 1.0, 2),
    ]
    assert payload["budget"]["pretrain_epochs"] == 1 and payload["budget"]["pretrain_s"] > 0
    assert "threads)" in payload["machine"]
    text = bench.markdown(payload)
    assert "| pretrained | 10% (8) |" in text and " +- " in text
