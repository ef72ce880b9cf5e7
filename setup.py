"""dllm_jax: pretraining AR and masked-diffusion language models in JAX."""
from setuptools import find_packages, setup

setup(
    name="dllm_jax",
    version="0.1.0",
    description="JAX/Flax, TPU-first pretraining of diffusion LMs and their autoregressive baselines",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.12",
    packages=find_packages(include=["dllm_jax", "dllm_jax.*"]),
    # the transformers modeling file a diffusion export ships (dllm_jax.hf.export copies it verbatim)
    package_data={"dllm_jax.hf": ["remote/*.py"]},
    install_requires=[
        "jax>=0.12",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "grain>=0.2.18",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "safetensors>=0.4",  # Hugging Face import / export (dllm_jax.hf)
        "ml-collections>=1.1",
        "tqdm>=4.66",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
        "numpy>=1.26",
        "etils[epath]>=1.7",  # the path layer (dllm_jax/paths.py)
        "fsspec>=2024.2",  # URLs (gs://, s3://, memory://) in the path layer
        "zstandard>=0.22",  # .zst corpus files
        "pyarrow>=15",  # data.source='parquet'
    ],
    extras_require={
        "tfds": ["tensorflow-datasets>=4.9.10"],
        "array_record": ["array_record>=0.8"],
        "eval": ["lm-eval>=0.4"],
        "beam": ["apache-beam>=2.60"],  # `dllm-jax prepare`: corpus -> token store as a Beam pipeline
        "tpu": ["libtpu"],
        "gcs": ["gcsfs>=2024.2", "google-cloud-storage>=2.10"],  # gs:// paths (fsspec); TensorBoard on gs:// (tensorboardX)
        "test": ["pytest>=8", "pytest-xdist>=3"],
        "docs": ["mkdocs>=1.6"],  # `make docs`: the guides under docs/ as a site (tests/test_docs.py runs its strict build)
        "tensorboard": ["tensorboard>=2.15"],  # the viewer (`tensorboard --logdir RUN`); training writes event files with tensorboardX
        "wandb": ["wandb>=0.17"],  # train.wandb_project: log to Weights & Biases
        "hf": ["transformers>=4.50"],  # config classes for the interop tests; running exported checkpoints also needs torch
        # also check logits against transformers' PyTorch models, and a diffusion export's modeling file (~3 GB of wheels)
        "hf-test": ["transformers>=4.50", "torch>=2.4"],
    },
    entry_points={"console_scripts": ["dllm-jax=dllm_jax.cli:main"]},
    classifiers=["License :: OSI Approved :: Apache Software License", "Programming Language :: Python :: 3.12"],
)
