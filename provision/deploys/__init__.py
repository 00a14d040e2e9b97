"""Packaged deploys (@deploy), one per concern; provision/deploy.py calls them in order."""
