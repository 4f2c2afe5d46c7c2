"""embedflow: word embeddings at scale (Beam + tf.Transform + TensorFlow).

Also Dataflow's `--setup_file`: the sdist carries every package the workers import.
Versions are pinned to the combination verified together on Python 3.11.
"""

import glob
import os

import setuptools


def sample_data_files():
    """The bundled sample, installed under <prefix>/share/embedflow/sample/ so that
    `embedflow run` finds it from any directory (embedflow/config.py: sample_dir)."""
    by_dir = {}
    for path in sorted(glob.glob("sample/**/*", recursive=True)):
        if os.path.isfile(path):
            by_dir.setdefault(os.path.join("share", "embedflow", os.path.dirname(path)), []).append(path)
    return sorted(by_dir.items())


REQUIRED = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow==2.21.0",
    "tensorboard==2.21.0",  # tf.summary needs it; TF 2.21 no longer installs it
    "tensorflow-transform==1.21.0",
    "tfx-bsl==1.21.0",
    "pyarrow==25.0.1",
    "google-cloud-storage==3.17.1",
    "numpy==2.4.6",
    "matplotlib==3.11.2",
    "pyyaml==6.0.4",
    "pydantic==2.14.4",  # job parameters: flags, run config keys and checks from one declaration
]

TEST = [
    "pytest==9.2.0",
    "gensim==4.4.0",
    "gcp-storage-emulator==2026.7.19",
    "playwright==1.65.2",  # drives the system's Chromium to render report.html (no browser download)
]

setuptools.setup(
    name="embedflow",
    version="0.1.0",  # also core.__version__
    description="Word embeddings at scale: Beam + tf.Transform preprocessing, TensorFlow training",
    python_requires=">=3.11,<3.12",
    packages=setuptools.find_packages(include=["embedflow", "embedflow.*", "jobs", "jobs.*",
                                               "pipelines", "pipelines.*", "trainer", "trainer.*",
                                               "core", "core.*", "schemas", "schemas.*"]),
    # The trainer's fused CPU kernel is C++ source, compiled on first use (trainer/kernels).
    package_data={"trainer.kernels": ["*.cc"]},
    data_files=sample_data_files(),
    install_requires=REQUIRED,
    extras_require={"test": TEST},
    entry_points={"console_scripts": ["embedflow=embedflow.cli:main"]},
)
