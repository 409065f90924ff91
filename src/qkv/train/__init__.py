"""Training: optimizer and schedule, the trainer loop, exact resume."""
