"""Media: video, image and audio I/O, frame sources and sinks, and the random-access frame store.

Knows nothing of datasets: the dataset readers build on it (:mod:`~s2svr_lightning.data.datasets`), and
``restore`` reads and writes video through :mod:`~s2svr_lightning.data.media.frames`.
"""
