"""The embedding study (processing/embedding_analysis.py, analyze.py): each step on tiny arrays, the
leave-one-class-out protocol on hand-made and on clearly separable image classes, and the CLI's files.
"""
import json

import numpy as np
import pytest

import analyze
import finetune
import test as test_cli
import train
from processing import data
from processing.embedding_analysis import (EmbeddedImages, ModelEmbedder, confusion_at_threshold,
                                           discover_categories, elbow, gmm_outliers, kmeans_elbow, leave_one_out)
from processing.errors import UserError
from tests.tables import read_csv_rows

SIZE = 64


def blobs(centres, per_blob, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    return np.concatenate([centre + spread * rng.standard_normal((per_blob, len(centre))) for centre in centres])


def test_kmeans_inertia_falls_and_the_elbow_is_the_number_of_blobs():
    vectors = blobs(np.eye(3, 5) * 10, per_blob=30)
    ks, inertias, labels = kmeans_elbow(vectors, max_clusters=8)
    np.testing.assert_array_equal(ks, np.arange(1, 9))
    assert (np.diff(inertias) <= 1e-6).all() and inertias[0] > 10 * inertias[2]
    assert elbow(ks, inertias) == 3
    assert len(set(labels[2].tolist())) == 3


def test_gmm_outlier_removal_flags_the_planted_outliers():
    normal = blobs(np.zeros((2, 6)) + [[0] * 6, [5] * 6], per_blob=100)
    rng = np.random.default_rng(1)
    planted = rng.uniform(12, 20, size=(5, 6)) * rng.choice([-1, 1], size=(5, 6))  # scattered far from both
    vectors = np.concatenate([normal, planted])
    flagged = gmm_outliers(vectors, n_components=2, fraction=5 / len(vectors))
    np.testing.assert_array_equal(np.flatnonzero(flagged), np.arange(200, 205))
    assert not gmm_outliers(vectors, n_components=2, fraction=0).any()


def test_confusion_matrix_at_threshold_and_min_area_matches_a_hand_count():
    maps = np.zeros((5, 8, 8), np.float32)
    maps[1, 0, 0] = 1.0  # good, one hot pixel: smaller than min-area, still good -> tn
    maps[2, 2:4, 2:4] = 0.9  # defective, a 4 px region -> tp
    maps[3, 5, 5] = 0.4  # defective, below the threshold -> fn
    maps[4, 0:2, 0:2] = 0.8  # good, a 4 px region -> fp
    labels = np.array([0, 0, 1, 1, 0])  # map 0: good and empty -> tn
    np.testing.assert_array_equal(confusion_at_threshold(maps, labels, threshold=0.5, min_area=3), [[2, 1], [1, 1]])


def embedded(classes):
    """EmbeddedImages from {class: (train vectors, test vectors, test defects)}."""
    parts = []
    for name, (train_vectors, test_vectors, defects) in classes.items():
        for split, vectors, kinds in (("train", train_vectors, ["good"] * len(train_vectors)),
                                      ("test", test_vectors, defects)):
            parts.append((vectors, [name] * len(vectors), [split] * len(vectors), kinds))
    return EmbeddedImages(np.concatenate([p[0] for p in parts]).astype(np.float32),
                          *(np.concatenate([p[i] for p in parts]) for i in (1, 2, 3)),
                          np.array([f"{i}.png" for i in range(sum(len(p[0]) for p in parts))]))


def test_leave_one_out_follows_the_protocol_on_hand_made_classes():
    rng = np.random.default_rng(0)
    centres = {"a": [10, 0, 0], "b": [0, 10, 0], "c": [0, 0, 10]}
    classes = {name: (centre + rng.standard_normal((8, 3)), centre + rng.standard_normal((5, 3)),
                      ["good", "good", "good", "crack", "dent"]) for name, centre in centres.items()}
    rows = leave_one_out(embedded(classes), "knn")
    assert [row["held_out"] for row in rows] == ["a", "b", "c"]
    for row in rows:
        # train/good of the two others; every test image of the held-out class; test/good of the others.
        assert (row["n_train"], row["n_anomalous"], row["n_normal"]) == (16, 5, 6)
        assert row["auroc"] == 1.0
    with pytest.raises(UserError, match="at least two categories"):
        leave_one_out(embedded({"a": classes["a"]}), "knn")


def test_a_model_without_embeddings_is_a_user_error():
    from memorybank.patchcore import PatchCore

    with pytest.raises(UserError, match="patchcore models have no image embeddings"):
        ModelEmbedder(PatchCore(input_size=SIZE, channels=3))


def test_leave_one_out_cli_separates_clearly_different_classes(two_product_root, small_synthetic, tmp_path):
    analyze.main(["--data-root", str(two_product_root), "--leave-one-out", "--size", str(SIZE), "--out", str(tmp_path)])
    rows = read_csv_rows(tmp_path / "leave_one_class_out.csv")
    assert [row["held_out"] for row in rows] == ["flanges", "gradients"]
    assert all(float(row["auroc"]) > 0.95 for row in rows)
    synthetic = data.scan_dataset(small_synthetic)
    # Flanges held out: every flange test image, defective or not, against the 8 gradient test images.
    assert (rows[0]["n_train"], rows[0]["n_anomalous"], rows[0]["n_normal"]) == ("20", str(len(synthetic.test)), "8")
    assert (tmp_path / "leave_one_class_out.png").stat().st_size > 0


def test_study_cli_writes_its_pictures_and_tables(two_product_root, small_synthetic, tmp_path):
    analyze.main(["--data-root", str(two_product_root), "-d", "flanges", "gradients", "--size", str(SIZE),
                  "--clusters", "4", "--out", str(tmp_path)])
    for name in ("pca_variance", "tsne_categories", "tsne_defects", "kmeans_elbow", "scores_flanges",
                 "scores_gradients"):
        assert (tmp_path / f"{name}.png").stat().st_size > 0
    images = read_csv_rows(tmp_path / "images.csv")
    synthetic = data.scan_dataset(small_synthetic)
    n_train = len(synthetic.train) + 20
    assert len(images) == n_train + len(synthetic.test) + 8
    assert sum(int(row["gmm_outlier"]) for row in images) == round(0.05 * n_train)
    assert all(row["detector_score"] == "" for row in images if row["split"] == "train")
    assert len(read_csv_rows(tmp_path / "kmeans_elbow.csv")) == 4
    categories = {row["category"]: row for row in read_csv_rows(tmp_path / "categories.csv")}
    assert categories["gradients"]["image_auroc"] == ""  # no defective test images to rank
    assert 0 <= float(categories["flanges"]["image_auroc"]) <= 1


def test_model_study_confusion_matrix_matches_test_py(small_synthetic, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    train.main(["-d", str(small_synthetic), "-a", "mae", "--size", str(SIZE), "-e", "1", "--mae-patch", "8",
                "--mae-dim", "32", "--mae-depth", "1", "--mask-ratio", "0.5", "--mae-maskings", "2"])
    finetune.main([])
    metrics = json.loads((test_cli.main([]) / "metrics.json").read_text())
    analyze.main(["-p", "saved_models/latest", "--clusters", "3", "--out", "analysis"])
    matrix = [[int(row["predicted_good"]), int(row["predicted_defective"])]
              for row in read_csv_rows(tmp_path / "analysis" / "confusion_matrix.csv")]
    assert matrix == metrics["evaluation_set"]["confusion_matrix"]
    assert (tmp_path / "analysis" / "confusion_matrix.png").stat().st_size > 0
    synthetic = data.scan_dataset(small_synthetic)
    assert len(read_csv_rows(tmp_path / "analysis" / "images.csv")) == len(synthetic.train) + len(synthetic.test)
    with pytest.raises(SystemExit):
        analyze.main(["-p", "saved_models/latest", "--size", "128"])
    assert "--size 128 differs from the model's input size 64" in capsys.readouterr().err


def test_bad_outlier_fraction_is_a_user_error():
    with pytest.raises(UserError, match="--outlier-fraction must be in"):
        analyze.parse_args(["--outlier-fraction", "1.5"])


def test_data_root_without_categories_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no category"):
        discover_categories(tmp_path)
