"""clipwatch: flags novel and adversarial video clips by the likelihood of a classifier's deep features."""

__version__ = "0.1.0"
