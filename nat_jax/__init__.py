"""nat-jax: Neural Architecture Transfer (Lu et al., TPAMI 2021) in JAX/Flax.

The module map. One folder per layer, bottom to top; a module imports only
its own folder and the folders below it (`.importlinter`, checked in CI);
folders joined by "|" never import each other.

    space/    the search space and its encodings (`search_space`), the
              complexity objectives (`objectives`: #MAdds, #params, user
              functions)
    runtime/  checkpoints (`checkpoint`), the run directory and its one
    | data/   config.json reader (`workdir`), device meshes (`sharding`),
              the persistent compile cache (`compile_cache`), progress and
              ETA lines (`progress`), TensorBoard scalars (`tb_events`)
              | datasets and their registry (`datasets`), the host input
              pipeline (`pipeline`), augmentation (`augment`, `randaugment`),
              offline preparation (`prepare`)
    model/    the masked OFA MobileNetV3 supernet (`layers`, `elastic_block`,
    | search/ `supernet`), extracted subnets (`subnet`), supernet sets of
              several widths (`supernet_set`), OFA weights (`pretrained`),
              channel re-ordering (`reorder`), the XLA:CPU kernels
              (`cpu_kernels`, csrc/)
              | the many-objective search: the RBF-ensemble predictor
              (`predictor`, Alg. 2), NSGA-III (`nsga3`, Alg. 4), crossover
              and mutation (`operators`, Eq. 2), the evolutionary search
              (`evolution`, Alg. 3), high trade-off picks and indicators
              (`tradeoff`, App. C), the archive (`archive`), rank statistics
    train/    the training toolkit (`training`), supernet adaptation
              (`adaptation`, Alg. 5 and Eq. 3), evaluation of subnets
              (`evaluation`), OFA's BN re-calibration (`calibration`), OFA's
              progressive shrinking (`progressive_shrinking`)
    deploy/   fine-tuning (`finetune`, Sec. 4.3), export (`export`), latency
              tables (`latency`), one subnet's report (`model_report`)
    nat/      Algorithm 1 (`transfer`), many tasks (`multitask`, App. F),
              re-targeting an archive (`retarget`), the pre-training run
              (`pretrain`), config -> plan (`run_config`), task supernets
              (`task_supernet`), plots and report.md (`report`)

`experiments/` holds the absl entry points (`python -m experiments.transfer`)
and `experiments/configs/`, the one source of defaults.
"""
