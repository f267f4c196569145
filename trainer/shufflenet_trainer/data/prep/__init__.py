"""Preparing data folders: the ImageNet validation split (valprep), the digits demo set."""
