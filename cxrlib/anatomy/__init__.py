"""Anatomy: masks, the cardiothoracic ratio and (later) segmentation and priors."""
