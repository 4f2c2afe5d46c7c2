"""The pip requirements of the embedflow image for one accelerator, from setup.py's pins.

    python cloud/image_requirements.py cpu|gpu [--beam-version V] [--setup setup.py]

Prints one requirement a line. The Dockerfile installs what this prints, so every image
holds exactly the versions setup.py pins:

- `cpu`: the pins as they are (the Dataflow workers, training on a CPU). No CUDA
  libraries, so the image Dataflow workers pull stays small.
- `gpu`: the same, with TensorFlow's CUDA libraries (`tensorflow[and-cuda]`, the same
  version). Vertex AI supplies the driver.
- `tpu` is refused: TensorFlow's TPU build (`tensorflow-tpu`) has no release of the
  TensorFlow version setup.py pins, which tf.Transform requires (README, "Google Cloud").

`--beam-version` (the Dockerfile passes the version of the Beam SDK image it copies the
workers' boot program from) must be setup.py's apache-beam pin, so a worker harness of
another Beam version never ships. Standard library only: it runs before anything is
installed.
"""

import argparse
import ast
import re
import sys

ACCELERATORS = ("cpu", "gpu")
# name[extras]==version, the only form setup.py uses for REQUIRED
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;]+)")


def _normalize(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _name(requirement):
    """The normalized distribution name of a name==version pin, or None."""
    match = PIN.fullmatch(requirement.strip())
    return _normalize(match.group(1)) if match else None


def pinned(setup_path):
    """setup.py's REQUIRED list, read without running setup.py.

    Raises:
      ValueError: setup.py has no REQUIRED list of string literals.
    """
    with open(setup_path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), setup_path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "REQUIRED" for t in node.targets):
            return [ast.literal_eval(element) for element in node.value.elts]
    raise ValueError(f"{setup_path}: no REQUIRED list of pinned requirements")


def pinned_version(requirements, name):
    """The version `name` (extras ignored) is pinned to with ==.

    Raises:
      ValueError: `name` is not pinned with == in `requirements`.
    """
    for requirement in requirements:
        if _name(requirement) == _normalize(name):
            return PIN.fullmatch(requirement.strip()).group(3)
    raise ValueError(f"setup.py pins no {name}==VERSION in REQUIRED")


def image_requirements(setup_path, accelerator, beam_version=None):
    """The requirements to install in the image for `accelerator`.

    Raises:
      ValueError: an unknown accelerator, `tpu` (no matching TensorFlow build), or a Beam
        version other than setup.py's pin.
    """
    requirements = pinned(setup_path)
    tensorflow = pinned_version(requirements, "tensorflow")
    if beam_version is not None and beam_version != pinned_version(requirements, "apache-beam"):
        raise ValueError(f"the Beam SDK image is {beam_version} but setup.py pins "
                         f"apache-beam {pinned_version(requirements, 'apache-beam')}: set the "
                         "Dockerfile's BEAM_VERSION to setup.py's pin")
    if accelerator == "tpu":
        raise ValueError(f"no TPU image: tensorflow-tpu has no release {tensorflow} (the TensorFlow "
                         "setup.py pins and tf.Transform needs); TPU training waits for one "
                         "(README, \"Google Cloud\")")
    if accelerator not in ACCELERATORS:
        raise ValueError(f"ACCELERATOR must be one of {', '.join(ACCELERATORS)}, got {accelerator!r}")
    if accelerator == "gpu":
        requirements = [f"tensorflow[and-cuda]=={tensorflow}" if _name(r) == "tensorflow" else r
                        for r in requirements]
    return requirements


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("accelerator", help="cpu or gpu")
    parser.add_argument("--beam-version", default=None, help="version of the Beam SDK image the boot program is from")
    parser.add_argument("--setup", default="setup.py", help="path of setup.py (default: ./setup.py)")
    args = parser.parse_args(argv)
    try:
        requirements = image_requirements(args.setup, args.accelerator, args.beam_version)
    except (OSError, ValueError) as e:
        print(f"image_requirements: {e}", file=sys.stderr)
        return 2
    print("\n".join(requirements))
    return 0


if __name__ == "__main__":
    sys.exit(main())
