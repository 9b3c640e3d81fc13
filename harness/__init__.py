"""cpa-harness: build, boot and check x86 kernels with the CPA self-test."""

__version__ = "0.1.0"
