"""The latent cache: a data set encoded once by a frozen autoencoder, read back as posterior moments."""

from diffaug.latents.cache import LatentCache, LatentCacheError, build_cache, cache_key
from diffaug.latents.datamodule import CachedLatentDataModule, CachedLatents

__all__ = ["CachedLatentDataModule", "CachedLatents", "LatentCache", "LatentCacheError", "build_cache",
           "cache_key"]
