import pytest

from experiment_config import ConfigError, ExperimentConfig, with_overrides
from orchestrator.sweep.resources import plan_resources

TWO_CPUS = {"CPU": 2.0}
TWO_CPUS_WITH_SLOTS = {"CPU": 2.0, "activeda_trial": 1000.0}


def plan(overrides=None, total=TWO_CPUS, nodes=None):
    cfg = with_overrides(ExperimentConfig(), overrides or {})
    return plan_resources(cfg, total, nodes if nodes is not None else [total])


def test_two_cpus_run_two_trials_at_once():
    result = plan(total=TWO_CPUS_WITH_SLOTS)
    assert result.max_concurrent == 2 and result.phase_cpus == 1.0
    assert result.trial_resources == {"activeda_trial": 1}
    # Both trials' 1-CPU Train workers fit side by side: nothing else is reserved.
    assert plan({"train.num_workers": 2}, total=TWO_CPUS_WITH_SLOTS).max_concurrent == 1


def test_without_trial_slots_trials_reserve_a_sliver_of_cpu():
    result = plan()
    assert result.trial_resources == {"cpu": 0.01}
    assert result.max_concurrent == 2  # phases of the two trials take turns, never deadlock


def test_training_that_cannot_fit_is_refused_and_big_workers_lower_concurrency():
    with pytest.raises(ConfigError, match="config key 'train.num_workers': 2 workers x 1 CPU need CPU=2"):
        plan({"train.num_workers": 2})
    assert plan({"train.cpus_per_worker": 1.5}).max_concurrent == 1


def test_gpu_requested_without_gpus_fails_at_once():
    with pytest.raises(ConfigError, match="config key 'train.use_gpu': is true but the Ray cluster has CPU=2, GPU=0"):
        plan({"train.use_gpu": True})
    with pytest.raises(ConfigError, match="ranking.gpus_per_actor"):
        plan({"ranking.gpus_per_actor": 1.0})


def test_worker_larger_than_any_node_is_refused():
    with pytest.raises(ConfigError, match="config key 'train.cpus_per_worker': .* which no node has"):
        plan({"train.cpus_per_worker": 4.0}, total={"CPU": 8.0}, nodes=[{"CPU": 2.0}] * 4)


def test_gpu_cluster_concurrency_follows_gpus():
    total = {"CPU": 32.0, "GPU": 4.0}
    nodes = [{"CPU": 8.0, "GPU": 1.0}] * 4
    result = plan({"train.use_gpu": True, "train.num_workers": 2, "ranking.gpus_per_actor": 1.0}, total, nodes)
    assert result.max_concurrent == 2


def test_explicit_max_concurrent_wins():
    assert plan({"sweep.max_concurrent": 1}).max_concurrent == 1


def test_autoscaling_node_types_count_as_available():
    from conftest import ROOT
    from orchestrator.cluster.cluster_file import node_shapes, validate_cluster_file
    from orchestrator.sweep.resources import with_node_types

    shapes = node_shapes(validate_cluster_file(ROOT / "cluster.yaml"))
    head_only = {"CPU": 8.0, "activeda_trial": 1000.0}
    overrides = {"train.use_gpu": True, "train.num_workers": 4, "ranking.gpus_per_actor": 1.0}
    with pytest.raises(ConfigError, match="train.use_gpu"):
        plan(overrides, total=head_only, nodes=[head_only])
    total, nodes = with_node_types(head_only, [head_only], shapes)
    assert total["GPU"] == 8 * 1 + 2 * 4
    assert plan(overrides, total=total, nodes=nodes).max_concurrent == 4  # 16 GPUs / 4 per trial
    with pytest.raises(ConfigError, match="train.cpus_per_worker"):  # no node type has 64 CPUs
        plan({**overrides, "train.cpus_per_worker": 64.0}, total=total, nodes=nodes)
