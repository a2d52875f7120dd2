"""sitscli: satellite image time series, from Sentinel-2 folders to land-cover and change maps."""

__version__ = "0.1.0"
