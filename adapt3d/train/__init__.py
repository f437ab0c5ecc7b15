"""Training: Lightning module, data, losses, retention tracking, context head, pseudo-labels."""
