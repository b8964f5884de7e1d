"""DRIMbox: gateway between a French imaging site and the DRIM-M network."""

__version__ = "0.1.0"
