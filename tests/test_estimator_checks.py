"""scikit-learn's own estimator checks (sklearn.utils.estimator_checks) on featx's estimators.
Every check that does not run is named here with the reason."""
import warnings

import pytest
import sklearn.utils.estimator_checks as ec
from sklearn.utils.estimator_checks import check_estimator

from featx.evaluate.classifiers import OneVsRestSVM
from featx.descriptors.transform import VGGDescriptor

# Skipped by scikit-learn itself unless the optional array-api-compat package is installed;
# featx's estimators take numpy arrays (the torch solver converts them itself).
SKIPPED_BY_SKLEARN = {"check_array_api_input"}


@pytest.mark.parametrize("solver", ["torch", "liblinear"])
def test_one_vs_rest_svm_passes_sklearns_estimator_checks(solver):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(OneVsRestSVM(solver=solver), on_fail=None)
    assert len(results) > 50
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    assert failed == []
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert skipped <= SKIPPED_BY_SKLEARN


# VGGDescriptor's X is a list of images (paths, encoded bytes, HxWx3 uint8 arrays), not a numeric
# (n_samples, n_features) array; it declares so (input_tags.two_d_array = False), and
# check_estimator then runs only the cloning check. The API checks below do not depend on the
# input and are run one by one; the others feed rows of random numbers as samples, which are
# not images and are rightly refused (ImageError), so they are not run:
NOT_RUN = {
    "check_estimators_pickle": "fits and transforms numeric rows; pickling with real images is "
                               "tested in tests/test_transform.py",
    "check_fit_idempotent": "transforms numeric rows (transform is deterministic: test_transform.py)",
    "check_transformer_general": "transforms numeric rows",
    "check_n_features_in": "images have no feature count; n_features_in_ is not defined",
    "check_estimator_sparse_tag": "fits on a sparse numeric matrix; fit takes images and checks none",
}
API_CHECKS = [
    "check_estimator_cloneable", "check_parameters_default_constructible", "check_get_params_invariance",
    "check_set_params", "check_no_attributes_set_in_init", "check_estimator_repr",
    "check_estimator_tags_renamed", "check_valid_tag_types", "check_mixin_order",
    "check_do_not_raise_errors_in_init_or_set_params", "check_estimators_overwrite_params",
    "check_dont_overwrite_parameters", "check_transformer_n_iter", "check_positive_only_tag_during_fit",
]


@pytest.mark.parametrize("check", API_CHECKS)
def test_vgg_descriptor_passes_sklearns_api_checks(check, tiny_net):
    est = VGGDescriptor(nets=("T",), scales=(224,), weights="random", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        getattr(ec, check)("VGGDescriptor", est)


def test_every_sklearn_check_is_run_or_named():
    """A new scikit-learn check for transformers shows up here, to be run or justified."""
    est = VGGDescriptor(nets=("T",), scales=(224,), weights="random", device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(est, on_fail=None)
    assert {r["check_name"] for r in results} <= set(API_CHECKS) | set(NOT_RUN)
    assert not set(API_CHECKS) & set(NOT_RUN)
