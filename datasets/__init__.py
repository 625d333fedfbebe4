"""Demonstration data: the episode store (LeRobotDataset v3 layout), collection, and the packed token cache.

>>> from omnipolicy.datasets import EpisodeStore, TokenCache, WindowLoader
"""

from .cache import TokenCache
from .episode import Episode, PreparedEpisode, prepare_episode
from .layout import DatasetError, find_stores
from .loader import WindowLoader, holdout_split
from .store import EpisodeStore

__all__ = ["DatasetError", "Episode", "EpisodeStore", "PreparedEpisode", "TokenCache", "WindowLoader", "find_stores", "holdout_split", "prepare_episode"]
