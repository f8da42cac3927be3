"""benchmarks/init_elpv.py --quick: a source run, its export, continued runs from random and from the export."""


def test_quick_dry_run_continues_from_random_and_from_the_export(load_benchmark):
    bench = load_benchmark("init_elpv")
    payload = bench.main(["--quick", "--equal-compute"])
    assert [r["epochs_in_all"] for r in payload["rows"]] == [1, 1, 2, 2]
    assert all(0 <= score <= 100 for r in payload["rows"] for score in r["knn_top1"].values())
    assert len(payload["export_sha256"]) == 64 and "threads)" in payload["machine"]
    assert "| continued from the export, 1 epochs | 2 |" in bench.markdown(payload)
