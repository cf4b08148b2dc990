"""Configuration: the settings registry, loaders and the policy-bank view."""
