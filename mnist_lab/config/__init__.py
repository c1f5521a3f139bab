"""Checking a composed config before anything is built or read, and saying where each value came from."""

from mnist_lab.config.objects import Built, build, build_run, check_objects
from mnist_lab.config.origins import Origins
from mnist_lab.config.validate import validate

__all__ = ["Built", "Origins", "build", "build_run", "check_objects", "validate"]
