"""The camera-trap appliance: main loop, capture store, thumbnails, cleanup and status page."""

__version__ = "0.1.0"
