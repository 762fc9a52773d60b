from setuptools import find_packages, setup

setup(
    name="sam_mi",
    version="0.1.0",
    description="SAM-MI: a mask-injected framework for open-vocabulary semantic segmentation with SAM",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["sam_mi", "sam_mi.*"]),
    package_data={"sam_mi": ["**/*.json"]},
    include_package_data=True,
    # detectron2 is not on PyPI under its own name: scripts/setup_env.sh installs it (see README).
    install_requires=[
        "torch>=2.1",
        "torchvision",
        "numpy",
        "scipy",
        "open-clip-torch>=2.24",
        "segment-anything",
        "fvcore",
        "iopath",
        "tqdm",
        "tabulate",
        # class lists of the in-domain benchmarks and the MESS datasets/evaluator
        "mess-benchmark==0.2",
        "segment-anything-hq==0.3",
    ],
    extras_require={
        "dev": ["pytest"],
    },
)
