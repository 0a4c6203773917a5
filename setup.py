"""xtal2dos_jax: JAX/Flax Xtal2DoS — crystal structure to density of states."""
from setuptools import find_packages, setup

INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "jraph==0.0.6.dev0",
    "orbax-checkpoint==0.12.8",
    "ase==3.29.0",
    "numpy==2.4.6",
    "scipy==1.17.1",
    "absl-py==2.5.1",
    "chex==0.1.92",
    "ml-collections==1.1.0",
    "matplotlib==3.11.2",
    "spglib==2.8.0",
    "vesin==0.6.2",
    "tqdm==4.70.1",
    "e3nn-jax==0.21.0",   # the E3NN encoder (models/e3nn.py)
]
TENSORBOARD_REQUIRES = ["tensorboardX==2.6.4"]
# The pinned JAX version, for the CUDA extra.
JAX_VERSION = next(r.split("==")[1] for r in INSTALL_REQUIRES if r.startswith("jax=="))

setup(
    name="xtal2dos_jax",
    version="0.1.0",
    description="Xtal2DoS in JAX/Flax: UniMP graph encoder + causal transformer decoder for DoS",
    packages=find_packages(include=["xtal2dos_jax", "xtal2dos_jax.*", "experiments", "configs", "configs.*"]),
    package_data={"xtal2dos_jax": ["data/*.json", "data/phdos/*", "data/phdos_dfpt/*", "data/edos_mat2spec/*.md",
                                   "data/edos_mat2spec/label_edos/*",
                                   "data/edos_mat2spec/materials_with_edos/*",
                                   "pretrained/*.md", "pretrained/*/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # TensorBoard event files of every run (xtal2dos_jax/training/tensorboard.py).
        "tensorboard": TENSORBOARD_REQUIRES,
        # The CUDA 12 build of the pinned JAX (jaxlib plus jax-cuda12-plugin and NVIDIA's
        # CUDA libraries from PyPI), for NVIDIA GPU hosts.
        "cuda": [f"jax[cuda12]=={JAX_VERSION}"],
        "test": ["pytest==9.0.3", "pytest-xdist==3.8.0", *TENSORBOARD_REQUIRES],
    },
)
