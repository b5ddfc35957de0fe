"""sagrflow: Vision-Language-Action policies with temporal world-model supervision."""

__version__ = "0.1.0"
