"""DRIMbox: gateway between a French imaging site and the DRIM-M network."""
