"""The ``gnaq`` command: the layer above the training job and the service, and the only one using both."""
