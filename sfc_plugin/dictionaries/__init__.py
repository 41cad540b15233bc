"""Dictionaries: loading SAEs by release name, path, bundle or object (``loading``), identity
dictionaries for neuron circuits (``neurons``) and quality on held-out text (``quality``)."""

from sfc_plugin.dictionaries.loading import (
    COMPANION_RELEASES,
    ReleaseNotInstalledError,
    load_saes,
    register_release,
    registered_releases,
    unregister_release,
)
from sfc_plugin.dictionaries.neurons import NeuronDictionary, neuron_saes

__all__ = [
    "COMPANION_RELEASES",
    "NeuronDictionary",
    "ReleaseNotInstalledError",
    "load_saes",
    "neuron_saes",
    "register_release",
    "registered_releases",
    "unregister_release",
]
