"""The benchmark's outputs: README table generation between markers, and the chart PNG."""
import platform
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.chart import save_chart  # noqa: E402
from bench.published import ANOMALIB  # noqa: E402
from bench.readme import (  # noqa: E402
    ANOMALIB_END, ANOMALIB_START, END, START, anomalib_markdown, results_markdown, update_readme)
from tests.tables import read_csv_rows  # noqa: E402

ROWS = [
    {"method": "padim-lite0", "category": "a/x", "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7, "infer_img_s": 10.0},
    {"method": "padim-lite0", "category": "b/y", "image_auroc": 0.7, "pixel_auroc": None, "aupro": None, "infer_img_s": 20.0},
    {"method": "mvtecCAE-l2", "category": "a/x", "image_auroc": 0.6, "pixel_auroc": 0.5, "aupro": 0.4, "infer_img_s": 30.0},
]


def test_results_markdown_has_one_row_per_method_with_means_and_gaps():
    lines = results_markdown(ROWS).splitlines()
    padim = next(line for line in lines if line.startswith("| padim-lite0"))
    cae = next(line for line in lines if line.startswith("| mvtecCAE-l2"))
    assert "| 0.900 / 0.800 / 0.700 | 0.700 / - / - | 0.800 (2/2) | 15.0 |" in padim
    assert "| 0.600 / 0.500 / 0.400 | - | 0.600 (1/2) | 30.0 |" in cae


def test_anomalib_table_puts_our_variants_beside_its_figures_and_averages_complete_categories():
    bottle, cookie = "mvtec_ad/bottle", "lookout_cookies/cookie"
    rows = [{"method": "padim-lite0", "category": bottle, "image_auroc": 0.9, "pixel_auroc": 0.8, "aupro": 0.7},
            {"method": "padim-lite0-crop", "category": bottle, "image_auroc": 1.0, "pixel_auroc": 0.9, "aupro": 0.6},
            {"method": "padim-lite0", "category": cookie, "image_auroc": 0.5, "pixel_auroc": 0.6, "aupro": 0.3}]
    lines = anomalib_markdown(rows).splitlines()
    header = lines[0].split(" | ")
    assert header[1:6] == ["anomalib patchcore", "patchcore-lite0-crop", "patchcore-lite0",
                           "patchcore-lite0-score-st245", "patchcore-lite0-st124-k3"]
    assert header[6:13] == ["anomalib padim", "padim-lite0-crop", "padim-lite0", "padim-lite0-st124",
                            "padim-lite0-st124-s384", "padim-lite0-st124-deep6x30-s384",
                            "padim-lite0-st124-deep6x30-s384-pca-subset-subset0 |"]
    bottle_cells = next(line for line in lines if line.startswith(f"| {bottle}")).split(" | ")
    anomalib_bottle = " / ".join(f"{v:.3f}" for v in ANOMALIB["padim"][bottle])
    assert bottle_cells[6:13] == [anomalib_bottle, "1.000 / 0.900 / 0.600", "0.900 / 0.800 / 0.700", "-", "-", "-",
                                  "- |"]
    cookie_cells = next(line for line in lines if line.startswith(f"| {cookie}")).split(" | ")
    assert cookie_cells[7:13] == ["-", "0.500 / 0.600 / 0.300", "-", "-", "-", "- |"]
    assert lines[-1].startswith("| mean of 0 | -")  # no category has every column yet


def test_update_readme_replaces_only_the_marked_sections(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold table\n{END}\nmiddle\n{ANOMALIB_START}\nold\n{ANOMALIB_END}\noutro\n")
    update_readme(readme, ROWS)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{ANOMALIB_END}\noutro\n") and f"{END}\nmiddle\n" in text
    assert "old table" not in text and "\nold\n" not in text and "padim-lite0" in text
    assert "| anomalib patchcore |" in text


def test_update_readme_without_markers_is_an_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, ROWS)
    assert readme.read_text() == "no markers\n"


def test_chart_is_a_png(tmp_path):
    save_chart(ROWS, tmp_path / "chart.png")
    with Image.open(tmp_path / "chart.png") as image:
        assert image.format == "PNG" and image.width > 300


def test_one_row_in_its_own_process_from_a_relative_data_root(small_synthetic, tmp_path, monkeypatch):
    """A row runs in a spawned process and its own folder: a --data-root relative to where the bench
    started must still resolve, the model file can be left out, and a user error comes back as UserError."""
    from bench.run import run_in_own_process
    from processing import runs
    from processing.errors import UserError

    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "synthetic").symlink_to(small_synthetic)
    monkeypatch.chdir(tmp_path)
    row = run_in_own_process("mvtecCAE", "synthetic", "root", tmp_path / "work", ["--size", "64", "-e", "1", "-b", "16"],
                             False)
    assert row["category"] == "synthetic" and 0 <= row["image_auroc"] <= 1 and row["train_s"] > 0
    # keep_model=False: the measured run keeps its records, not its model.keras
    assert len(list(tmp_path.glob("work/saved_models/synthetic/mvtecCAE/*/run.json"))) == 1
    assert not list(tmp_path.glob("work/saved_models/**/model.keras"))
    assert row["infer_img_s"] > 0 and row["peak_mem_mb"] > 100  # TensorFlow alone takes a few hundred MB
    assert row["cpu"] == runs.cpu_model()
    with pytest.raises(UserError, match="dataset folder not found"):
        run_in_own_process("mvtecCAE", "missing", "root", tmp_path / "work", [])


def test_leave_one_out_bench_tables_every_embedder_and_detector(two_product_root, tmp_path, monkeypatch):
    """Backbone and trained (MAE) embedders over a root of two products: one row per embedder and detector,
    one AUROC column per held-out category; the backbone tells the products apart."""
    import shutil

    from bench import leave_one_out

    root = tmp_path / "root"
    shutil.copytree(two_product_root, root / "shop")  # copied: a symlink would name the categories by their target
    out = tmp_path / "loco"
    monkeypatch.chdir(tmp_path)  # a relative --data-root must survive the trained embedder's own folder
    leave_one_out.main(["--data-root", "root", "--embedders", "backbone-lite0", "mae-128", "--detectors", "knn",
                        "cosine", "--size", "64", "--train-args", "--size 64 -e 1", "--out", str(out),
                        "--workdir", str(tmp_path / "runs")])
    rows = read_csv_rows(out.with_suffix(".csv"))
    assert [(row["embedder"], row["detector"]) for row in rows] == [
        ("backbone-lite0", "knn"), ("backbone-lite0", "cosine"), ("mae-128", "knn"), ("mae-128", "cosine")]
    held_out = ("shop/gradients", "shop/flanges")  # fewest training images first
    for row in rows:
        aurocs = [float(row[name]) for name in held_out]
        assert float(row["mean_auroc"]) == pytest.approx(sum(aurocs) / 2)
        assert float(row["embed_img_s"]) > 0
    assert all(float(row[name]) > 0.95 for row in rows[:2] for name in held_out)
    assert rows[2]["train_category"] == "shop/gradients" and float(rows[2]["train_s"]) > 0
    assert rows[0]["train_s"] == "" and rows[2]["size"] == "64"
    assert "Machine:" in out.with_suffix(".md").read_text()
    # Measuring one embedder again replaces its rows and keeps the others.
    leave_one_out.main(["--data-root", "root", "--embedders", "backbone-lite0", "--detectors", "gmm", "--size", "64",
                        "--out", str(out)])
    again = read_csv_rows(out.with_suffix(".csv"))
    assert [(row["embedder"], row["detector"]) for row in again] == [
        ("mae-128", "knn"), ("mae-128", "cosine"), ("backbone-lite0", "gmm")]


def test_leave_one_out_bench_needs_two_categories(small_synthetic, tmp_path, capsys):
    from bench import leave_one_out

    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "only").symlink_to(small_synthetic)
    with pytest.raises(SystemExit) as exit_info:
        leave_one_out.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "loco")])
    assert exit_info.value.code == 2 and "at least two categories" in capsys.readouterr().err
    assert not (tmp_path / "loco.csv").exists()


def test_each_row_names_its_processor_and_vector_extension(tmp_path):
    from processing import runs

    cpuinfo = tmp_path / "cpuinfo"
    block = "processor\t: {}\nmodel name\t: AMD EPYC 9R14\nflags\t\t: fpu sse2 avx2 {}\n\n"
    cpuinfo.write_text(block.format(0, "avx512f avx512_bf16") + block.format(1, "avx512f avx512_bf16"))
    assert runs.cpu_model(cpuinfo) == "AMD EPYC 9R14, AVX-512"
    cpuinfo.write_text(block.format(0, ""))
    assert runs.cpu_model(cpuinfo) == "AMD EPYC 9R14, AVX2"
    assert runs.cpu_model(tmp_path / "missing") == (platform.processor() or "unknown processor")


def test_seed_spread_says_where_a_published_figure_falls_in_our_seeds():
    from bench.seed_spread import where_published_falls

    seeds = [0.5, 0.75, 1.0]  # mean 0.75 (all exact in binary floating point)
    assert [where_published_falls(seeds, p) for p in (0.5, 0.75, 0.875, 1.0)] + [where_published_falls(seeds[:2], 0.8)] == [
        "met", "met", "in range", "in range", "above"]
    assert where_published_falls([0.999, 1.0, 1.0, 1.0, 1.0], 1.0) == "met"  # mean 0.9998 shows as 1.000


def test_seed_spread_summary_gives_mean_std_range_beside_anomalib():
    from bench.seed_spread import summary, summary_markdown

    bottle = "mvtec_ad/bottle"  # anomalib's patchcore: 1.000 / 0.983 / 0.936
    rows = [{"method": "patchcore-lite0", "category": bottle, "seed": 0, "image_auroc": 0.99, "pixel_auroc": 0.99,
             "aupro": 0.90},
            {"method": "patchcore-lite0", "category": bottle, "seed": 1, "image_auroc": 1.0, "pixel_auroc": 0.98,
             "aupro": 0.92}]
    (entry,) = summary(rows)
    assert entry["seeds"] == 2
    assert entry["image_auroc"]["mean"] == pytest.approx(0.995)
    assert entry["image_auroc"]["std"] == pytest.approx(0.01 / 2 ** 0.5)  # sample standard deviation
    assert [entry[m]["falls"] for m in ("image_auroc", "pixel_auroc", "aupro")] == ["in range", "met", "above"]
    table = summary_markdown([entry])
    assert "| patchcore-lite0 | mvtec_ad/bottle | 2 | 0.995 ± 0.007 [0.990, 1.000]; anomalib 1.000: in range |" in table
    assert "seed spread: patchcore-lite0 1 met, 1 in range, 1 above (of 3)." in table


def test_seed_spread_bench_runs_each_seed_and_fills_the_readme(small_synthetic, tmp_path, monkeypatch):
    from bench import seed_spread
    from bench.seed_spread import END, START

    (tmp_path / "root" / "shop").mkdir(parents=True)
    (tmp_path / "root" / "shop" / "synthetic").symlink_to(small_synthetic)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{START}\nold\n{END}\noutro\n")
    out = tmp_path / "spread"
    args = ["--data-root", str(tmp_path / "root"), "--variants", "padim-lite0", "--seeds", "0", "1",
            "--extra-args", "--size 64", "--out", str(out), "--readme", str(readme), "--workdir", str(tmp_path / "w")]
    seed_spread.main(args)
    rows = read_csv_rows(out.with_suffix(".csv"))
    assert [(row["method"], row["category"], row["seed"]) for row in rows] == [
        ("padim-lite0", "shop/synthetic", "0"), ("padim-lite0", "shop/synthetic", "1")]
    assert all(0.5 < float(row["image_auroc"]) <= 1 for row in rows)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{END}\noutro\n") and "\nold\n" not in text
    assert "| padim-lite0 | shop/synthetic | 2 |" in text and "anomalib" not in text  # none published for synthetic
    # A second call finds both runs measured and leaves the table as it was.
    before = out.with_suffix(".csv").read_text()
    seed_spread.main(args)
    assert out.with_suffix(".csv").read_text() == before


def test_every_bench_variant_names_a_method_and_flags_that_train_accepts():
    import shlex

    import train
    from bench.run import VARIANTS
    from registry import method_names

    for variant, (method, flags) in VARIANTS.items():
        assert method in method_names(), variant
        config = train.parse_args(["-a", method, *shlex.split(flags)])
        assert config.method == method, variant
