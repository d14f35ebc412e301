"""Densities: exactness against scipy/scikit-learn, regularisation, validation, determinism."""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture

from pipeline.density import (
    ClassConditionalGMM,
    PCAReducer,
    SeparateGaussian,
    TiedGaussian,
    pool_features,
)
from pipeline.density.covariance import SHRINKAGE_GRID, class_folds


def blobs(n_classes=3, per_class=200, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k in range(n_classes):
        mixing = rng.normal(size=(dim, dim)) + 2 * np.eye(dim)
        xs.append(rng.normal(size=(per_class, dim)) @ mixing + rng.normal(scale=4, size=dim))
        ys.append(np.full(per_class, k))
    return np.concatenate(xs), np.concatenate(ys)


def ml_cov(x):
    return np.cov(x.T, bias=True)


def assert_rel(actual, expected, rtol):
    rel = np.max(np.abs(actual - expected) / np.abs(expected))
    assert rel < rtol, rel


def test_separate_matches_scipy_logpdf_float64():
    X, y = blobs()
    model = SeparateGaussian(scoring_dtype="float64").fit(X, y)
    assert model.fit(X, y) is model
    assert model.shrinkage_ == 0.0  # cross-validation keeps the ML fit when samples are plentiful
    expected = np.stack([multivariate_normal(X[y == k].mean(0), ml_cov(X[y == k])).logpdf(X) for k in range(3)], 1)
    assert_rel(model.class_log_likelihood(X), expected, 1e-8)
    np.testing.assert_allclose(model.covariances_[1], ml_cov(X[y == 1]), rtol=1e-10)


def test_tied_uses_pooled_ml_covariance_float64():
    X, y = blobs()
    model = TiedGaussian(scoring_dtype="float64").fit(X, y)
    residuals = np.concatenate([X[y == k] - X[y == k].mean(0) for k in range(3)])
    pooled = residuals.T @ residuals / X.shape[0]
    np.testing.assert_allclose(model.covariance_, pooled, rtol=1e-10)
    expected = np.stack([multivariate_normal(X[y == k].mean(0), pooled).logpdf(X) for k in range(3)], 1)
    assert_rel(model.class_log_likelihood(X), expected, 1e-8)


@pytest.mark.parametrize("cls", [TiedGaussian, SeparateGaussian, ClassConditionalGMM])
def test_float32_path_close_to_float64(cls):
    X, y = blobs(seed=3)
    model = cls(scoring_dtype="float64").fit(X, y)
    exact = model.class_log_likelihood(X)
    fast = model.set_params(scoring_dtype="float32").class_log_likelihood(X)
    assert fast.dtype == np.float32 and exact.dtype == np.float64
    assert_rel(fast.max(axis=1), exact.max(axis=1), 1e-5)
    assert_rel(fast, exact, 5e-4)
    np.testing.assert_array_equal(model.predict(X), np.argmax(exact, 1))


def test_gmm_equals_weighted_logsumexp_of_its_components():
    X, y = blobs(per_class=300)
    model = ClassConditionalGMM(n_components=2, scoring_dtype="float64").fit(X, y)
    for k in range(3):
        rows = np.flatnonzero(model.component_class_ == k)
        parts = [
            np.log(model.weights_[j]) + multivariate_normal(model.means_[j], model.covariances_[j]).logpdf(X)
            for j in rows
        ]
        assert_rel(model.class_log_likelihood(X)[:, k], logsumexp(np.stack(parts, 1), axis=1), 1e-8)
        np.testing.assert_allclose(model.weights_[rows].sum(), 1.0)


def test_gmm_training_likelihood_within_one_percent_of_sklearn():
    rng = np.random.default_rng(1)
    parts = [rng.normal(loc=c, scale=s, size=(250, 4)) for c, s in ((0, 1.0), (6, 0.5), (-5, 2.0))]
    X = np.concatenate(parts)
    model = ClassConditionalGMM(n_components=3, scoring_dtype="float64").fit(X)
    ours = model.class_log_likelihood(X)[:, 0].mean()
    theirs = GaussianMixture(3, covariance_type="full", random_state=0).fit(X).score(X)
    assert abs(ours - theirs) / abs(theirs) < 0.01


def test_bic_picks_the_true_component_count_and_is_deterministic():
    rng = np.random.default_rng(2)
    two = np.concatenate([rng.normal(-6, 1, size=(300, 3)), rng.normal(6, 1, size=(300, 3))])
    one = rng.normal(0, 1, size=(600, 3))
    X, y = np.concatenate([two, one]), np.repeat(["two", "one"], 600)
    model = ClassConditionalGMM(max_components=4, random_state=7).fit(X, y)
    assert dict(zip(model.classes_, model.n_components_, strict=True)) == {"one": 1, "two": 2}
    assert np.all(np.isfinite(model.bic_))
    again = ClassConditionalGMM(max_components=4, random_state=7).fit(X, y)
    np.testing.assert_array_equal(model.means_, again.means_)


def test_class_with_fewer_samples_than_dimensions_is_regularised_and_reported():
    X, y = blobs(n_classes=3, per_class=60, dim=20)
    small = np.random.default_rng(5).normal(size=(8, 20)) + 40
    X, y = np.concatenate([X, small]), np.concatenate([y, np.full(8, 9)])
    for cls in (SeparateGaussian, ClassConditionalGMM):
        model = cls(shrinkage=0.0, scoring_dtype="float64").fit(X, y)
        assert model.regularised_classes_ == ["class 9"]
        record = next(r for r in model.fit_report_ if r.label == "class 9")
        assert record.n_samples == 8 and 0 < record.shrinkage <= 1
        assert record.shrinkage_target == "pooled_covariance"
        k = list(model.classes_).index(9)
        cov = model.covariances_[k] if cls is SeparateGaussian else model.covariances_[model.component_class_ == k][0]
        assert np.linalg.eigvalsh(cov).min() > 0
        ll = model.class_log_likelihood(X)
        assert np.isfinite(ll).all()
        assert np.mean(model.predict(X[-8:]) == 9) == 1.0


def scarce_classes(seed=0, per_class=60, dim=40, held=200):
    """Classes sharing one strongly correlated covariance, with few samples per class for their dimension."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) * np.linspace(3, 0.1, dim)
    means = rng.normal(scale=3, size=(3, dim))

    def draw(n):
        y = np.repeat(np.arange(3), n)
        return means[y] + rng.normal(size=(3 * n, dim)) @ mixing.T, y

    return draw(per_class), draw(held)


def test_cross_validated_shrinkage_beats_the_ml_fit_on_held_out_clips():
    (X, y), (X_held, y_held) = scarce_classes()
    plain = SeparateGaussian(shrinkage=0.0, scoring_dtype="float64").fit(X, y)
    shrunk = SeparateGaussian(scoring_dtype="float64").fit(X, y)
    assert 0.0 < shrunk.shrinkage_ <= 1.0
    assert len(shrunk.shrinkage_scores_) == len(SHRINKAGE_GRID)
    assert max(shrunk.shrinkage_scores_) == shrunk.shrinkage_scores_[SHRINKAGE_GRID.index(shrunk.shrinkage_)]
    assert all(r.shrinkage == shrunk.shrinkage_ and r.shrinkage_target == "pooled_covariance"
               for r in shrunk.fit_report_)
    own = np.arange(len(y_held)), y_held
    held_plain = plain.class_log_likelihood(X_held)[own].mean()
    held_shrunk = shrunk.class_log_likelihood(X_held)[own].mean()
    assert held_shrunk > held_plain + 5, (held_shrunk, held_plain)
    gmm = ClassConditionalGMM(scoring_dtype="float64").fit(X, y)
    assert gmm.shrinkage_ == shrunk.shrinkage_
    assert gmm.class_log_likelihood(X_held)[own].mean() > held_plain + 5


def test_a_tiny_class_keeps_at_least_its_ledoit_wolf_shrinkage_under_cross_validation():
    (X, y), _ = scarce_classes(per_class=150, dim=20)
    rng = np.random.default_rng(9)
    for size in (1, 3, 8):
        tiny = rng.normal(size=(size, 20)) + 30
        Xs, ys = np.concatenate([X, tiny]), np.concatenate([y, np.full(size, 7)])
        plain = SeparateGaussian(shrinkage=0.0).fit(Xs, ys)
        crossed = SeparateGaussian().fit(Xs, ys)
        floor = next(r.shrinkage for r in plain.fit_report_ if r.label == "class 7")
        record = next(r for r in crossed.fit_report_ if r.label == "class 7")
        assert record.shrinkage == pytest.approx(max(floor, crossed.shrinkage_)), size
        assert record.shrinkage >= floor > 0


def test_class_folds_keep_neighbours_together_and_every_class_in_every_fold():
    y = np.repeat([0, 1, 2], [10, 23, 7])
    folds = class_folds(y, 3, 5)
    for k in range(3):
        members = folds[y == k]
        assert np.all(np.diff(members) >= 0) and set(members) == set(range(5))


def test_shrinkage_setting_is_validated():
    X, y = blobs()
    for bad in ("auto", 1.5, -0.1, True):
        with pytest.raises(ValueError, match="shrinkage"):
            SeparateGaussian(shrinkage=bad).fit(X, y)
    assert SeparateGaussian(shrinkage=np.int64(1)).fit(X, y).shrinkage_ == 1.0
    with pytest.raises(ValueError, match="at least 2 folds"):
        SeparateGaussian(cv_folds=1).fit(X, y)
    one_class = SeparateGaussian().fit(X)
    assert one_class.shrinkage_ == 0.0 and one_class.shrinkage_scores_ == []


def test_singular_covariance_goes_through_the_jitter_ladder():
    rng = np.random.default_rng(4)
    base = rng.normal(size=(500, 3))
    X = np.hstack([base, base[:, :1]])
    model = SeparateGaussian().fit(X)
    [record] = model.fit_report_
    assert record.jitter > 0 and record.shrinkage == 0
    assert np.isfinite(model.score_samples(X)).all()


def test_single_class_is_one_class_modelling():
    X, _ = blobs(n_classes=1)
    for cls in (TiedGaussian, SeparateGaussian, ClassConditionalGMM):
        model = cls().fit(X)
        assert list(model.classes_) == [0]
        assert model.class_log_likelihood(X).shape == (X.shape[0], 1)
        far = model.score_samples(X + 50)
        assert np.all(far < model.score_samples(X).min())


def test_score_samples_is_max_and_predict_is_argmax_with_string_labels():
    X, y = blobs()
    labels = np.array(["walk", "run", "jump"])[y]
    model = SeparateGaussian().fit(X, labels)
    ll = model.class_log_likelihood(X)
    np.testing.assert_allclose(model.score_samples(X), ll.max(1))
    np.testing.assert_array_equal(model.predict(X), model.classes_[ll.argmax(1)])
    assert np.mean(model.predict(X) == labels) > 0.95


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.array([[1.0, np.nan, 0, 0, 0]]), "NaN or inf"),
        (np.ones((4, 3)), "3 features, but the model was fitted with 5"),
        (np.ones(5), "must be 2-D"),
        (np.array([["a"] * 5]), "must be numeric"),
    ],
)
def test_bad_inputs_raise_clear_errors(bad, message):
    X, y = blobs()
    model = TiedGaussian().fit(X, y)
    with pytest.raises(ValueError, match=message):
        model.score_samples(bad)


def test_fit_validation_errors():
    X, y = blobs()
    with pytest.raises(ValueError, match="y has 10 labels but X has 600 samples"):
        SeparateGaussian().fit(X, y[:10])
    X_bad = X.copy()
    X_bad[5, 2] = np.inf
    with pytest.raises(ValueError, match="row 5"):
        ClassConditionalGMM().fit(X_bad, y)
    with pytest.raises(ValueError, match="not fitted"):
        SeparateGaussian().score_samples(X)
    with pytest.raises(ValueError, match="n_components"):
        ClassConditionalGMM(n_components="aic").fit(X, y)
    with pytest.raises(ValueError, match="scoring_dtype"):
        SeparateGaussian(scoring_dtype="float16").fit(X, y).score_samples(X)


def test_fit_does_not_modify_the_callers_array():
    X, y = blobs()
    before = X.copy()
    for estimator in (TiedGaussian(), SeparateGaussian(), ClassConditionalGMM(), PCAReducer(pool_factor=1)):
        estimator.fit(X, y)
        np.testing.assert_array_equal(X, before)


def test_pca_keeps_requested_variance_and_matches_sklearn():
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 30)) @ np.diag(np.linspace(5, 0.01, 30)) + 3
    reducer = PCAReducer(variance=0.995, pool_factor=1).fit(X)
    ref = PCA(n_components=0.995, svd_solver="full").fit(X)
    assert reducer.n_components_ == ref.n_components_
    assert reducer.explained_variance_ratio_.sum() >= 0.995
    np.testing.assert_allclose(np.abs(reducer.transform(X)), np.abs(ref.transform(X)), atol=1e-8)


def test_pca_pools_conv_maps_by_four():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(50, 4, 4, 8, 8)).astype(np.float32)
    reducer = PCAReducer(variance=1.0).fit(maps)
    assert reducer.n_features_in_ == 4 * 1 * 2 * 2
    pooled = pool_features(maps, 4)
    np.testing.assert_allclose(pooled[:, 0], maps[:, 0, :4, :4, :4].mean(axis=(1, 2, 3)), atol=1e-6)
    np.testing.assert_allclose(reducer.transform(maps), reducer.transform(pooled), atol=1e-10)


def test_likelihood_detects_shifted_samples():
    X, y = blobs(per_class=300, dim=8)
    model = SeparateGaussian().fit(X, y)
    assert np.median(model.score_samples(X + 6)) < np.percentile(model.score_samples(X), 5)


def test_sep_and_gmm_on_the_same_features_share_one_cross_validation(monkeypatch):
    from pipeline.density import ShrinkageCache, covariance

    calls = []
    real = covariance._cross_validate
    monkeypatch.setattr(covariance, "_cross_validate", lambda *args: calls.append(1) or real(*args))
    (X, y), _ = scarce_classes(seed=11)
    cache = ShrinkageCache()
    sep = SeparateGaussian().fit(X, y, shrinkage_cache=cache)
    gmm = ClassConditionalGMM().fit(X, y, shrinkage_cache=cache)
    assert len(calls) == 1 and gmm.shrinkage_ == sep.shrinkage_ and gmm.shrinkage_scores_ == sep.shrinkage_scores_
    SeparateGaussian().fit(X[:-3], y[:-3], shrinkage_cache=cache)
    assert len(calls) == 2 and len(cache) == 2
    alone = SeparateGaussian().fit(X, y)  # no hidden state: without a cache every fit cross-validates
    assert len(calls) == 3 and alone.shrinkage_scores_ == sep.shrinkage_scores_
