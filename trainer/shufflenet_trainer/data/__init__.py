"""Input pipeline: ImageFolder scanning, JPEG decoding, augmentation, batch loaders.

Importing this package is cheap; the loaders (and torch) come with `data.build`.
"""
