"""Test-wide JAX settings: CPU only, 4 virtual CPU devices for sharding tests,
and strict rank promotion (an accidental broadcast between arrays of different
ranks is an error, as in equinox's and big_vision's test configs)."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_platforms", "cpu")
jax.config.update("jax_num_cpu_devices", 4)
jax.config.update("jax_numpy_rank_promotion", "raise")


# ---------------------------------------------------------------- markers
# The fast inner loop is `python -m pytest -q -n auto -m "not slow"` (under 2 minutes on
# 2 cores). `slow` = over ~2.5 s on a loaded 2-core machine (pytest
# --durations), or a module whose tests share an expensive fixture (a whole
# transfer / fine-tuning run). Regenerate after big changes:
#   python -m pytest -q --durations=0 | awk '$1+0 >= 2.5'
SLOW_MODULES = {
    "test_transfer.py", "test_finetune.py", "test_pretrained.py", "test_pretrain.py",
    "test_reorder.py", "test_multitask.py", "test_cli.py", "test_gpu_suite.py",
    "test_multihost.py", "test_compile_cache.py", "test_algorithm1.py",
    "test_width_downstream.py",
}
SLOW_TESTS = {
    "test_adaptation.py::test_train_step_changes_only_active_weights",
    "test_adaptation.py::test_one_and_four_devices_give_the_same_parameters",
    "test_adaptation.py::test_resume_is_bit_identical",
    "test_adaptation.py::test_resume_past_a_damaged_checkpoint_is_bit_identical",
    "test_adaptation.py::test_nan_loss_raises_and_keeps_last_good_checkpoint",
    "test_evolution.py::test_search_improves_true_hypervolume_over_the_archive",
    "test_adaptation.py::test_inactive_weights_get_exactly_zero_gradient",
    "test_adaptation.py::test_masked_sgd_matches_torch_sgd_on_active_entries",
    "test_adaptation.py::test_sampler_matches_archive_frequencies",
    "test_cli.py::test_bad_search_flags_print_one_line",
    "test_evaluation.py::test_adaptation_raises_validation_accuracy_well_above_chance",
    "test_evaluation.py::test_counts_are_exact_and_vmapped_subnets_agree",
    "test_evaluation.py::test_static_path_matches_ofa_rule_and_masked_path_outside_the_space",
    "test_evolution.py::test_search_returns_distinct_new_canonical_candidates",
    "test_export.py::test_onnx_error_names_the_missing_module",
    "test_export.py::test_onnx_roundtrip",
    "test_export.py::test_stablehlo_roundtrip_symbolic_batch",
    "test_export.py::test_subnet_dir_roundtrip",
    "test_latency.py::test_latency_objective_is_the_jitted_lookup",
    "test_latency.py::test_real_build_and_check_run_end_to_end",
    "test_latency.py::test_table_predicts_sum_of_layer_costs_exactly",
    "test_nsga3.py::test_dtlz_igd_not_worse_than_pymoo",
    "test_nsga3.py::test_nan_rows_rank_last_and_never_survive_finite",
    "test_nsga3.py::test_survival_matches_pymoo_fronts_and_niche_coverage",
    "test_nsga3.py::test_survive_twelve_objectives_keeps_first_front_when_it_fits",
    "test_objectives.py::test_custom_objectives_are_passed_not_registered",
    "test_objectives.py::test_jittable_complexity_fn_matches_exact_counts",
    "test_objectives.py::test_vectorised_equals_layer_by_layer_on_random_population",
    "test_operators.py::test_mutation_and_repair_keep_genes_in_bounds_and_canonical",
    "test_operators.py::test_sbx_stays_in_bounds",
    "test_predictor.py::test_baselines_learn",
    "test_predictor.py::test_ensemble_matches_scipy_rbfs_and_ignores_padding",
    "test_predictor.py::test_ensemble_recovers_rank_order",
    "test_predictor.py::test_public_fit_and_predict_match_scipy_rbfs",
    "test_predictor.py::test_robust_to_duplicates_tiny_sets_and_constant_targets",
    "test_predictor.py::test_single_rbf_interpolates",
    "test_reporting.py::test_plot_and_report_are_written",
    "test_search_space.py::test_sample_is_valid_canonical_and_keyed",
    "test_subnet.py::test_extracted_equals_masked_ofa_space",
    "test_subnet.py::test_extracted_tiny_roundtrip_and_train_mode",
    "test_subnet.py::test_public_stem_blocks_head_compose_to_the_subnet",
    "test_supernet.py::test_depthwise_impls_agree_with_gradients",
    "test_supernet.py::test_one_compile_serves_many_subnets",
    "test_supernet.py::test_recalibrate_and_predict_outside_the_space_resolutions_match_ofa",
    "test_supernet.py::test_recalibrate_matches_ofa_set_running_statistics",
    "test_supernet.py::test_supernet_impls_agree_and_masked_grads",
    "test_supernet.py::test_switch_equals_masked",
    "test_supernet.py::test_switch_recalibrate_and_predict_match_masked",
    "test_supernet.py::test_train_step_matches_ofa_and_keeps_inactive_stats",
}


def pytest_collection_modifyitems(config, items):


    for item in items:
        module = item.nodeid.split("::")[0].rsplit("/", 1)[-1]
        name = item.nodeid.split("[")[0].rsplit("/", 1)[-1]
        if module in SLOW_MODULES or name in SLOW_TESTS:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def fast_compiles():
    """Tiny-model tests are compile bound: XLA's cheap optimisation level for
    a module (`pytestmark = pytest.mark.usefixtures("fast_compiles")`)."""
    old = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", old)


@pytest.fixture(scope="module", autouse=True)
def release_compiled_programs():
    """Drop JAX's compiled programs after each test module. XLA:CPU maps each
    compiled program's code into memory; a whole-suite process that keeps
    every program of 400+ tests alive crashed (SIGSEGV inside compile or
    serialize, about 320 tests in) near the kernel's 65,530 memory-map limit
    (vm.max_map_count); each file alone always passed."""
    yield
    import gc

    jax.clear_caches()
    gc.collect()
